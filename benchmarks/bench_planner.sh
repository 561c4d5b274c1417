#!/usr/bin/env bash
# The layout planner against measurement (issue 15, point 6), one command:
#   benchmarks/bench_planner.sh [REPEATS]
# `trine plan --world 4` chooses a layout for the GPT below (8 blocks, hidden
# 128, seq 64, global batch 64) from layer profiles taken here; then every
# layout of the grid (and the chosen one) trains on 4 ranks, REPEATS times
# (default 1), and the chosen layout's measured step is compared with the
# fastest measured. Writes build/bench/planner.json and prints the table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_setup.sh"
repeats=${1:-1}
model=(--layers 8 --hidden 128 --global-batch 64 --steps 6 --warmup 2)

echo "(1) planning" >&2
"$bin/trine" plan --model gpt --layers 8 --hidden 128 --seq-len 64 --batch 16 --world 4 --global-batch 64 \
  --top 12 | tee "$out/planner_ranking.txt" >&2
chosen=$(sed -n 's/^chosen: //p' "$out/planner_ranking.txt")
# "dp 2 x pp 2 x tp 1 (v 2), m 2, 1f1b, recompute none" -> bench_trainer options
read -r -a chosen_args <<<"$(python3 - "$chosen" <<'PY'
import re, sys
c = sys.argv[1]
dp, pp, tp = (int(x) for x in re.match(r"dp (\d+) x pp (\d+) x tp (\d+)", c).groups())
v = re.search(r"\(v (\d+)\)", c)
m = int(re.search(r", m (\d+),", c).group(1))
schedule = re.search(r", m \d+, (\S+), recompute", c).group(1)
recompute = re.search(r"recompute (\S+)", c).group(1)
ratio = re.search(r"r0 ([0-9.]+)", c)
args = ["--dp", dp, "--pp", pp, "--tp", tp, "--microbatches", m, "--schedule", schedule, "--recompute", recompute]
if v: args += ["--virtual-stages", v.group(1)]
if ratio: args += ["--recompute-ratio", ratio.group(1)]
print(" ".join(str(a) for a in args))
PY
)"

# The grid: dp x pp x tp, microbatches, schedule (recompute none: memory is no constraint here).
grid=("--dp 4 --pp 1 --tp 1 --microbatches 1" "--dp 4 --pp 1 --tp 1 --microbatches 4"
      "--dp 2 --pp 2 --tp 1 --microbatches 2" "--dp 2 --pp 2 --tp 1 --microbatches 4"
      "--dp 2 --pp 2 --tp 1 --microbatches 8" "--dp 2 --pp 2 --tp 1 --microbatches 16"
      "--dp 1 --pp 4 --tp 1 --microbatches 4" "--dp 1 --pp 4 --tp 1 --microbatches 8"
      "--dp 1 --pp 4 --tp 1 --microbatches 16" "--dp 2 --pp 1 --tp 2 --microbatches 2"
      "--dp 1 --pp 2 --tp 2 --microbatches 4" "--dp 1 --pp 1 --tp 4 --microbatches 1")
for ((r = 0; r < repeats; r++)); do
  echo "(2) repeat $r: the chosen layout" >&2
  "${mpirun[@]}" -np 4 "$bin/bench_trainer" --mode pipeline "${chosen_args[@]}" "${model[@]}" 2>/dev/null |
    grep '^json: ' | head -1 | sed 's/^json: {/json: {"chosen": true, /' | json
  for g in "${grid[@]}"; do
    echo "(2) repeat $r: $g" >&2
    # shellcheck disable=SC2086
    "${mpirun[@]}" -np 4 "$bin/bench_trainer" --mode pipeline $g "${model[@]}" 2>/dev/null |
      grep '^json: ' | head -1 | sed 's/^json: {/json: {"chosen": false, /' | json
  done
done

python3 - "$lines" "$out/planner.json" "$chosen" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def key(r):
    return (r["dp"], r["pp"], r["tp"], r["microbatches"], r["schedule"], r.get("virtual_stages", 1))
runs = {}
for r in rows:
    runs.setdefault(key(r), []).append(r["step_s"])
chosen = [r for r in rows if r["chosen"]]
best_key = min(runs, key=lambda k: statistics.median(runs[k]))
best = statistics.median(runs[best_key])
mine = statistics.median(runs[key(chosen[0])])
print("layout (dp x pp x tp, m, schedule)      measured ms   vs fastest")
for k in sorted(runs, key=lambda k: statistics.median(runs[k])):
    t = statistics.median(runs[k])
    mark = "  <- chosen" if k == key(chosen[0]) else ""
    print("%d x %d x %d, m %-3d %-22s %9.1f   %+6.1f%%%s" % (k[0], k[1], k[2], k[3], k[4], 1e3 * t,
                                                          100 * (t / best - 1), mark))
print("chosen by the planner: %s; measured %.1f ms, %+.1f%% against the fastest measured (%d x %d x %d, m %d, %s)"
      % (sys.argv[3], 1e3 * mine, 100 * (mine / best - 1), *best_key[:5]))
json.dump({"chosen": sys.argv[3], "chosen_step_s": mine, "fastest": list(best_key), "fastest_step_s": best,
           "runs": [{"layout": list(k), "step_s": v} for k, v in runs.items()]}, open(sys.argv[2], "w"), indent=1)
PY
