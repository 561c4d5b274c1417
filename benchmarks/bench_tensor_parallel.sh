#!/usr/bin/env bash
# Tensor parallelism against one process, in one run (ratios are only
# meaningful within one run on this shared machine): the GPT (hidden 512,
# 4 blocks, seq 64, 8 heads' worth of width at 4 heads, global batch 8) on
# 1 rank x 1 thread, with tp=2 on 2 ranks x 1 thread, and with tp=2 and
# sub-pipelining (tensor_parallel.sub_microbatches 2), alternating within
# every repeat, at 1 and 4 microbatches. Per variant: median step time,
# samples/s, the throughput ratio against 1 rank and (sub-pipelined)
# against tp=2 without it, and the share of the step a rank spent blocked on
# tp all-reduces (with sub-pipelining: the wait the other part's compute did
# not hide). Writes build/bench/tensor_parallel.json and prints a table.
#   benchmarks/bench_tensor_parallel.sh [REPEATS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_setup.sh"
repeats=${1:-3}
model=(--layers 4 --hidden 512 --seq 64 --global-batch 8 --steps 5 --warmup 2 --per-rank)

for ((r = 0; r < repeats; r++)); do
  for m in 1 4; do
    echo "repeat $r, m=$m, 1 rank" >&2
    "$bin/bench_trainer" --microbatches "$m" "${model[@]}" 2>/dev/null | json
    for sub in 1 2; do
      echo "repeat $r, m=$m, tp=2, sub-microbatches $sub" >&2
      "${mpirun[@]}" -np 2 "$bin/bench_trainer" --tp 2 --sub-microbatches "$sub" --microbatches "$m" "${model[@]}" \
        2>/dev/null | json
    done
  done
done

python3 - "$lines" "$out/tensor_parallel.json" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["microbatches"], r["tp"], r.get("sub_microbatches", 1)), []).append(r)
first = rows[0]
print("GPT %d layers, hidden %d, seq %d, global batch %d; 1 thread per rank"
      % (first["layers"], first["hidden"], first["seq_len"], first["global_batch"]))
print(" m  layout             step ms  samples/s  vs 1 rank  vs tp=2 unsplit  tp wait share")
median = lambda rs, key: statistics.median(key(r) for r in rs)
result = []
for (m, tp, sub) in sorted(groups):
    rs = groups[(m, tp, sub)]
    step = median(rs, lambda r: r["step_s"])
    base = median(groups[(m, 1, 1)], lambda r: r["step_s"])
    unsplit = median(groups[(m, tp, 1)], lambda r: r["step_s"])
    share = median(rs, lambda r: r["tensor_parallel_s"] / r["step_s"])
    name = "1 rank" if tp == 1 else "tp=%d" % tp + (" sub %d" % sub if sub > 1 else "")
    print("%2d  %-17s %8.1f %10.2f %10.3f %16s %14.3f" % (m, name, 1e3 * step, first["global_batch"] / step, base / step,
          "%.3f" % (unsplit / step) if sub > 1 else "", share))
    result.append({"microbatches": m, "tp": tp, "sub_microbatches": sub, "step_s": step,
                   "throughput_vs_one_rank": base / step, "throughput_vs_unsplit_tp": unsplit / step,
                   "tp_wait_share": share, "runs": rs})
json.dump(result, open(sys.argv[2], "w"), indent=1)
print("written to", sys.argv[2])
PY
