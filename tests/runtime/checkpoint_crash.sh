#!/usr/bin/env bash
# A rank killed while writing a checkpoint leaves the previous one intact and
# resumable, and the resumed run's losses are the uninterrupted run's
# (docs/design.md §7a). Through `trine train` under mpirun:
#   1. rank 1 exits while writing step 4's checkpoint (TRINE_TEST_DIE_IN_CHECKPOINT): the job fails;
#      step 2's checkpoint is complete, step 4's is not;
#   2. the same command again resumes after step 2 and trains to step 6;
#   3. an uninterrupted run in a fresh directory: its steps 2-5 print the same losses;
#   4. `trine export` writes the newest checkpoint as .safetensors and .pt, which Python reads alike.
#   checkpoint_crash.sh MPIRUN... -- TRINE CONFIG
set -u
mpirun=()
while [[ $1 != -- ]]; do mpirun+=("$1"); shift; done
shift
trine=$1 config=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
run() {  # DIR LOG: trine train with the config's checkpoint.dir set to DIR
  sed "s|CHECKPOINT_DIR|$1|" "$config" >"$work/config.json"
  "${mpirun[@]}" -np 2 "$trine" train --config "$work/config.json" >"$2" 2>&1
}
losses() { grep -E '^step +[2-5] +loss' "$1" | awk '{print $2, $4}'; }

TRINE_TEST_DIE_IN_CHECKPOINT=4:1 run "$work/ckpt" "$work/crash.log" && { cat "$work/crash.log"; fail "the job with a dying rank succeeded"; }
grep -q "rank 1 exits while writing step 4" "$work/crash.log" || { cat "$work/crash.log"; fail "rank 1 did not die in the checkpoint"; }
ls "$work/ckpt"
[[ -f $work/ckpt/step-000000002/COMPLETE ]] || fail "step 2's checkpoint is not complete"
[[ ! -e $work/ckpt/step-000000004 ]] || fail "step 4's checkpoint exists although a rank died writing it"

run "$work/ckpt" "$work/resumed.log" || { cat "$work/resumed.log"; fail "resuming failed"; }
cat "$work/resumed.log"
grep -q "resumed from '$work/ckpt/step-000000002' after step 2" "$work/resumed.log" || fail "did not resume after step 2"
grep -q "trained 4 steps" "$work/resumed.log" || fail "the resumed run did not train steps 2-5"
[[ $(ls "$work/ckpt") == $'step-000000004\nstep-000000006' ]] || fail "checkpoint.keep 2 should leave steps 4 and 6: $(ls "$work/ckpt")"

run "$work/fresh" "$work/fresh.log" || { cat "$work/fresh.log"; fail "the uninterrupted run failed"; }
grep -q "no complete checkpoint in '$work/fresh': starting afresh" "$work/fresh.log" || fail "a fresh directory should start afresh"
diff <(losses "$work/fresh.log") <(losses "$work/resumed.log") || fail "resumed losses differ from the uninterrupted run's"
[[ $(losses "$work/resumed.log" | wc -l) -eq 4 ]] || fail "expected the losses of steps 2-5"

# 4. `trine export` of the newest checkpoint, read from Python (torch.load, and safetensors by its layout).
"$trine" export --checkpoint "$work/ckpt" --out "$work/model.safetensors" || fail "export to safetensors failed"
"$trine" export --checkpoint "$work/ckpt/step-000000006" --out "$work/model.pt" || fail "export to .pt failed"
"${PYTHON:-python3}" "$(dirname "$0")/check_export.py" "$work/model.pt" "$work/model.safetensors" \
  "$work/ckpt/step-000000006/meta.json" || fail "the exported files do not agree"
"$trine" export --checkpoint "$work/fresh" --out "$work/model.bin" && fail "export to .bin should be refused"
echo "PASS: resumed after the crash with the uninterrupted run's losses"
