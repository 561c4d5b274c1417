#!/usr/bin/env bash
# Tensor parallelism against one process, in one run (ratios are only
# meaningful within one run on this shared machine): the GPT (hidden 512,
# 4 blocks, seq 64, 8 heads' worth of width at 4 heads, global batch 8) on
# 1 rank x 1 thread and with tp=2 on 2 ranks x 1 thread, alternating within
# every repeat, at 1 and 4 microbatches. Per variant: median step time,
# samples/s, the throughput ratio tp=2 / 1 rank, and the share of the step
# spent inside the tp all-reduces (the mean over the two ranks). Writes
# build/bench/tensor_parallel.json and prints a table.
#   benchmarks/bench_tensor_parallel.sh [REPEATS]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${TRINE_BUILD_DIR:-$root/build}/bin
out=${TRINE_BUILD_DIR:-$root/build}/bench
repeats=${1:-3}
mkdir -p "$out"
export OMP_NUM_THREADS=1
mpirun=(mpirun --oversubscribe --bind-to none)
[[ $(id -u) -eq 0 ]] && mpirun+=(--allow-run-as-root)
model=(--layers 4 --hidden 512 --seq 64 --global-batch 8 --steps 5 --warmup 2 --per-rank)
lines=$(mktemp)

for ((r = 0; r < repeats; r++)); do
  for m in 1 4; do
    echo "repeat $r, m=$m, 1 rank" >&2
    "$bin/bench_trainer" --microbatches "$m" "${model[@]}" 2>/dev/null | grep '^json: ' | sed 's/^json: //' >>"$lines"
    echo "repeat $r, m=$m, tp=2" >&2
    "${mpirun[@]}" -np 2 "$bin/bench_trainer" --tp 2 --microbatches "$m" "${model[@]}" 2>/dev/null |
      grep '^json: ' | sed 's/^json: //' >>"$lines"
  done
done

python3 - "$lines" "$out/tensor_parallel.json" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["microbatches"], r["tp"]), []).append(r)
first = rows[0]
print("GPT %d layers, hidden %d, seq %d, global batch %d; 1 thread per rank"
      % (first["layers"], first["hidden"], first["seq_len"], first["global_batch"]))
print(" m  layout          step ms  samples/s  throughput vs 1 rank  tp all-reduce share")
result = []
for (m, tp) in sorted(groups):
    rs = groups[(m, tp)]
    step = statistics.median(r["step_s"] for r in rs)
    base = statistics.median(r["step_s"] for r in groups[(m, 1)])
    share = statistics.median(r["tensor_parallel_s"] / r["step_s"] for r in rs)
    name = "1 rank" if tp == 1 else "tp=%d (%d ranks)" % (tp, tp)
    print("%2d  %-15s %8.1f %10.2f %21.3f %20.3f" % (m, name, 1e3 * step, first["global_batch"] / step, base / step, share))
    result.append({"microbatches": m, "tp": tp, "step_s": step, "throughput_vs_one_rank": base / step,
                   "tp_allreduce_share": share, "runs": rs})
json.dump(result, open(sys.argv[2], "w"), indent=1)
print("written to", sys.argv[2])
PY
