#!/usr/bin/env bash
# The schedule benchmark suite (issue 15), one command:
#   benchmarks/bench_schedules.sh [quick]
# 1. calibrates this host (build/bench/host.json, and host_idle.json for
#    emulated runs, whose ranks sleep): how fast a process runs
#    while k of them compute at once (k = 1..4 one-process trainers side by
#    side), Gloo point-to-point and all-reduce costs (bench_p2p);
# 2. measures every schedule variant x recomputation policy here, on the same
#    GPT, at pp=2 and dp=2 x pp=2, and tp=2 (alone and x pp=2), each run also
#    predicted by the simulator from a profile of its stages taken here, and
#    traced (Chrome/Perfetto, build/bench/traces/);
# 3. emulates p = 4 and 8 ranks on the two cores (compute sleeps for its
#    profiled time, transfers are real) for every schedule, including the
#    shifted critical path, each simulated from the same times;
# 4. simulates Merak's setting: GPTs of 1.5B, 2.5B, 8.3B and 20B parameters
#    on 64 GPUs (8 per node), A100 and H100 descriptions, every variant
#    against 1F1B with full recomputation.
# Writes build/bench/schedules.json, schedules.md (the tables),
# schedules_throughput.png and schedules_timeline.png. "quick" runs fewer
# variants (for trying the script).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_setup.sh"
quick=${1:-}
traces=$out/traces
mkdir -p "$traces"
cd "$out"  # bench_trainer --emulate writes its stage times here

# ---- 1. This host ----------------------------------------------------------
echo "(1) calibrating this host" >&2
one=(--mode pipeline --pp 1 --microbatches 4 --layers 4 --hidden 128 --seq 64 --global-batch 16 --steps 8 --warmup 2)
paces=()
for k in 1 2 3 4; do
  files=()
  for ((i = 0; i < k; i++)); do
    f=$(mktemp); files+=("$f")
    "$bin/bench_trainer" "${one[@]}" 2>/dev/null | grep '^json: ' | sed 's/^json: //' >"$f" &
  done
  wait
  paces+=("$(python3 - "${files[@]}" <<'PY'
import json, statistics, sys
print(statistics.mean(json.load(open(f))["step_s"] for f in sys.argv[1:]))
PY
)")
  rm -f "${files[@]}"
done
"${mpirun[@]}" -np 2 "$bin/bench_p2p" --iters 100 | grep '^json: ' | sed 's/^json: //' >"$out/p2p.json"
python3 - "$out/p2p.json" "$out/host.json" "$(nproc --all)" "${paces[@]}" <<'PY'
import json, sys
p2p = json.load(open(sys.argv[1]))
cores, steps = int(sys.argv[3]), [float(x) for x in sys.argv[4:]]
known = [r for r in p2p["rows"] if r["shape_known"]]
big = max(known, key=lambda r: r["bytes"])
host = {
    "name": "this host (calibrated)",
    "cores": cores,
    "buffered_sends": True,
    "rendezvous_sends": True,
    # Emulated runs here: each F or backward took ~42 us beyond its work, a batch of sends ~72 us.
    "instruction_overhead_s": 50e-6,
    "shared_speed": [round(steps[0] / s, 4) for s in steps],
    "devices_per_node": 1 << 20,
    # A transfer's latency: an idle ping-pong's one-way time. Traces of
    # trine's pipelines here show the same (a receive that waits ends
    # 0.2-0.3 ms after its send; docs/design.md §6a).
    "intra_node": {"latency_s": min(r["one_way_us"] for r in known) * 1e-6,
                   "bytes_per_s": big["bandwidth_MBps"] * 1e6},
    "allreduce_bytes": [r["bytes"] for r in p2p["allreduce"]],
    # What communication costs the cores the ranks share (process CPU of
    # Gloo's threads and the kernel's copies): per message from the smallest
    # ping-pong, per byte from the largest, per all-reduce by size.
    "transfer_cpu_s": min(known, key=lambda r: r["bytes"])["cpu_ns_per_byte"] * min(r["bytes"] for r in known) * 1e-9,
    "transfer_cpu_s_per_byte": big["cpu_ns_per_byte"] * 1e-9,
    "allreduce_cpu_seconds": [r["cpu_ns_per_byte"] * r["bytes"] * 1e-9 for r in p2p["allreduce"]],
    # Between busy ranks (a compute segment before each), as tp stages and
    # the gradient sync meet them: 1.5-3x the idle ones here.
    "allreduce_seconds": [r["busy_us"] * 1e-6 for r in p2p["allreduce"]],
}
json.dump(host, open(sys.argv[2], "w"), indent=1)
# Emulated ranks sleep instead of computing: their all-reduces cost what
# idle ones do.
host["allreduce_seconds"] = [r["us"] * 1e-6 for r in p2p["allreduce"]]
json.dump(host, open(sys.argv[2].replace(".json", "_idle.json"), "w"), indent=1)
print("    pace of a process while k compute at once:", host["shared_speed"], file=sys.stderr)
print("    communication CPU: %.0f us per message, %.2f ns per byte" % (host["transfer_cpu_s"] * 1e6,
      host["transfer_cpu_s_per_byte"] * 1e9), file=sys.stderr)
PY

# ---- 2. Measured here, and predicted --------------------------------------
model=(--layers 8 --hidden 128 --seq 64 --global-batch 64 --steps 6 --warmup 2)
# schedule|recompute|extra options
variants=("1f1b|none|" "1f1b|full|" "gpipe|none|" "gpipe|full|" "interleaved_1f1b|none|--virtual-stages 2"
          "interleaved_1f1b|full|--virtual-stages 2" "pre_recompute_1f1b|full|" "last_no_recompute_1f1b|full|")
[[ $quick == quick ]] && variants=("1f1b|none|" "gpipe|none|" "pre_recompute_1f1b|full|")
measure() {  # NAME NP ARGS...: one measured run with its prediction and trace
  local name=$1 np=$2; shift 2
  echo "(2) measured: $name" >&2
  "${mpirun[@]}" -np "$np" "$bin/bench_trainer" "$@" "${model[@]}" --predict --machine "$out/host.json" \
    --trace "$traces/$name.json" 2>/dev/null | grep '^json: .*predicted_step_s' | head -1 | sed "s/^json: {/json: {\"kind\": \"measured\", \"name\": \"$name\", /" | json
}
for v in "${variants[@]}"; do
  IFS='|' read -r schedule recompute extra <<<"$v"
  # shellcheck disable=SC2086
  measure "pp2-$schedule-$recompute" 2 --pp 2 --microbatches 8 --schedule "$schedule" --recompute "$recompute" $extra
  # shellcheck disable=SC2086
  measure "dp2-pp2-$schedule-$recompute" 4 --dp 2 --pp 2 --microbatches 4 --schedule "$schedule" \
    --recompute "$recompute" $extra
done
measure "tp2-1f1b-none" 2 --tp 2 --pp 1 --microbatches 4 --schedule 1f1b
measure "tp2-pp2-1f1b-none" 4 --tp 2 --pp 2 --microbatches 8 --schedule 1f1b

# ---- 3. Emulated at p = 4 and 8, and simulated ------------------------------
emodel=(--layers 8 --hidden 256 --seq 128 --steps 6 --warmup 2)
evariants=("1f1b|none|" "1f1b|full|" "gpipe|none|" "interleaved_1f1b|none|--virtual-stages 2"
           "pre_recompute_1f1b|full|" "last_no_recompute_1f1b|full|" "shifted_critical_path|full|")
[[ $quick == quick ]] && evariants=("1f1b|full|" "shifted_critical_path|full|")
for p in 4 8; do
  for v in "${evariants[@]}"; do
    IFS='|' read -r schedule recompute extra <<<"$v"
    # 8 ranks x 2 chunks would need 16 stages of this 12-layer model.
    [[ $p == 8 && $schedule == interleaved_1f1b ]] && continue
    name="emulated-p$p-$schedule-$recompute"
    echo "(3) $name" >&2
    # shellcheck disable=SC2086
    "${mpirun[@]}" -np "$p" "$bin/bench_trainer" --mode pipeline --pp "$p" --microbatches $((2 * p)) \
      --global-batch $((4 * p)) --schedule "$schedule" --recompute "$recompute" $extra "${emodel[@]}" --emulate \
      --predict --machine "$out/host_idle.json" 2>/dev/null | grep '^json: .*predicted_step_s' | head -1 |
      sed "s/^json: {/json: {\"kind\": \"emulated\", \"name\": \"$name\", /" | json
  done
done

# ---- 4. Merak's setting, simulated ------------------------------------------
# model|dp|tp|pp: 64 GPUs each; 4 microbatches per stage of 2 sequences.
layouts=("gpt-1.5b|8|1|8" "gpt-2.5b|8|1|8" "gpt-8.3b|4|2|8" "gpt-20b|2|4|8")
svariants=("1f1b|full" "1f1b|stage_aware" "gpipe|full" "pre_recompute_1f1b|full" "last_no_recompute_1f1b|full"
           "shifted_critical_path|full" "shifted_critical_path|stage_aware" "1f1b|none")
for machine in a100 h100; do
  for l in "${layouts[@]}"; do
    IFS='|' read -r gpt dp tp pp <<<"$l"
    for v in "${svariants[@]}"; do
      IFS='|' read -r schedule recompute <<<"$v"
      "$bin/trine" simulate --gpt "$gpt" --machine "$machine" --dp "$dp" --tp "$tp" --stages "$pp" \
        --microbatches $((4 * pp)) --microbatch-rows 2 --schedule "$schedule" --recompute "$recompute" \
        --recompute-ratio 0.8 --json | grep '^json: ' | sed 's/^json: {/json: {"kind": "simulated", /' | json
    done
  done
done

plot_python "$root/benchmarks/bench_schedules_report.py" "$lines" "$out"
