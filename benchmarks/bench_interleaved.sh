#!/usr/bin/env bash
# Interleaved 1F1B against 1F1B, in one run (ratios are only meaningful
# within one run on this shared machine): the GPT at pp=2 (2 ranks x 1
# thread), m = 2, 4, 8 microbatches, 1F1B and interleaved_1f1b with v = 2 and
# 4 model chunks per rank; the variants of one m alternate within every
# repeat. Per variant: median step time, its ratio to 1F1B at the same m, each
# rank's mean time waiting on its peers (bubble plus transfers) as a share of
# the step, and the bubble the schedule's shape predicts, (p-1)/(v m + p-1)
# of the step for equal stages. Writes build/bench/interleaved.json and
# prints a table.
#   benchmarks/bench_interleaved.sh [REPEATS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_setup.sh"
repeats=${1:-3}
model=(--pp 2 --layers 8 --hidden 128 --seq 64 --global-batch 32 --steps 6 --warmup 2 --per-rank)
variants=("--schedule 1f1b" "--schedule interleaved_1f1b --virtual-stages 2" "--schedule interleaved_1f1b --virtual-stages 4")

for ((r = 0; r < repeats; r++)); do
  for m in 2 4 8; do
    for variant in "${variants[@]}"; do
      echo "repeat $r, m=$m, $variant" >&2
      # shellcheck disable=SC2086
      "${mpirun[@]}" -np 2 "$bin/bench_trainer" $variant --microbatches "$m" "${model[@]}" 2>/dev/null |
        json
    done
  done
done

python3 - "$lines" "$out/interleaved.json" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["microbatches"], r["virtual_stages"]), []).append(r)
first = rows[0]
print("GPT %d layers, hidden %d, seq %d, global batch %d, pp=2 (2 ranks x 1 thread)"
      % (first["layers"], first["hidden"], first["seq_len"], first["global_batch"]))
print(" m  schedule              step ms  vs 1f1b  waiting share r0 / r1  predicted bubble")
result = []
for (m, v) in sorted(groups):
    rs = groups[(m, v)]
    step = statistics.median(r["step_s"] for r in rs)
    base = statistics.median(r["step_s"] for r in groups[(m, 1)])
    share = {rank: statistics.median(r["communicate_s"] / r["step_s"] for r in rs if r["rank"] == rank) for rank in (0, 1)}
    p = 2
    bubble = (p - 1) / (v * m + p - 1)
    name = "1f1b" if v == 1 else "interleaved v=%d" % v
    print("%2d  %-20s %8.1f %8.3f %11.3f / %.3f %17.3f" % (m, name, 1e3 * step, step / base, share[0], share[1], bubble))
    result.append({"microbatches": m, "virtual_stages": v, "step_s": step, "ratio_to_1f1b": step / base,
                   "waiting_share_rank0": share[0], "waiting_share_rank1": share[1], "predicted_bubble": bubble,
                   "runs": rs})
json.dump(result, open(sys.argv[2], "w"), indent=1)
print("written to", sys.argv[2])
PY
