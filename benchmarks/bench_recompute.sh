#!/usr/bin/env bash
# Recomputation benchmark of issue 12 (point 7), in one run (ratios are only
# meaningful within one run on this shared machine): the GPT at pp=1 (1 rank)
# and pp=2 (2 ranks x 1 thread), 1F1B, m=8, under each recompute policy. Per
# stage: step time, time spent recomputing (its share of the step), the most
# bytes allocated during a step (allocator hook: activations, gradients and
# transients) and the memory model's predicted activation peak.
# Writes build/bench/recompute.json and prints a table.
#   benchmarks/bench_recompute.sh [REPEATS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_setup.sh"
repeats=${1:-1}
model=(--layers 8 --hidden 128 --seq 128 --global-batch 32 --microbatches 8 --steps 4 --warmup 2)
policies=("none" "full" "stage_aware --recompute-ratio 0.5" "stage_aware --recompute-ratio 1")

for ((r = 0; r < repeats; r++)); do
  for policy in "${policies[@]}"; do
    echo "repeat $r, recompute $policy: 1 rank, then 2 ranks" >&2
    # shellcheck disable=SC2086
    "$bin/bench_trainer" --pp 1 --recompute $policy "${model[@]}" 2>/dev/null | json
    # shellcheck disable=SC2086
    "${mpirun[@]}" -np 2 "$bin/bench_trainer" --pp 2 --recompute $policy "${model[@]}" 2>/dev/null | json
  done
done

python3 - "$lines" "$out/recompute.json" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def key(r):
    return (r["recompute"] + ("" if r["recompute"] != "stage_aware" else " r0=%g" % r["recompute_ratio"]), r["pp"], r["stage"])
groups = {}
for r in rows:
    groups.setdefault(key(r), []).append(r)
print("GPT %d layers, hidden %d, seq %d, global batch %d, m=%d, 1F1B, 1 thread per rank"
      % (rows[0]["layers"], rows[0]["hidden"], rows[0]["seq_len"], rows[0]["global_batch"], rows[0]["microbatches"]))
print("policy               pp stage  step ms  recompute ms  share  peak MiB")
result = []
for (policy, pp, stage), rs in groups.items():
    step = statistics.median(r["step_s"] for r in rs)
    rec = statistics.median(r["recompute_s"] for r in rs)
    peak = max(r["peak_bytes"] for r in rs)
    print("%-20s %2d %5d %8.1f %13.1f %6.3f %9.2f" % (policy, pp, stage, 1e3 * step, 1e3 * rec, rec / step, peak / 2**20))
    result.append({"policy": policy, "pp": pp, "stage": stage, "step_s": step, "recompute_s": rec,
                   "recompute_share": rec / step, "peak_bytes": peak, "runs": rs})
json.dump(result, open(sys.argv[2], "w"), indent=1)
print("written to", sys.argv[2])
PY
