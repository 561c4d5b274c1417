#!/usr/bin/env bash
# Runtime benchmarks of issue 4, in one run (ratios are only meaningful
# within one run on this shared machine):
#   (a) a dp=pp=1 Trainer against a plain LibTorch loop, same GPT, 1 thread;
#   (b) pp=2 on 2 ranks x 1 thread against 1 rank x 1 thread, m=16, both
#       schedules, runs alternated and repeated;
#   (c) Gloo point-to-point latency and bandwidth between 2 ranks.
# Writes build/bench/runtime.json and prints a table.
#   benchmarks/bench_runtime.sh [REPEATS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_setup.sh"
repeats=${1:-2}
model=(--layers 8 --hidden 256 --seq 64 --global-batch 64 --steps 6 --warmup 2)

echo "(a) trainer vs plain loop" >&2
"$bin/bench_trainer" --mode plain-vs-trainer "${model[@]}" --steps 10 | json
for ((r = 0; r < repeats; r++)); do
  for schedule in 1f1b gpipe; do
    echo "(b) repeat $r, $schedule: 1 rank, then 2 ranks" >&2
    "$bin/bench_trainer" --pp 1 --microbatches 16 --schedule "$schedule" "${model[@]}" 2>/dev/null | json
    "${mpirun[@]}" -np 2 "$bin/bench_trainer" --pp 2 --microbatches 16 --schedule "$schedule" "${model[@]}" | json
  done
done
echo "(c) point-to-point" >&2
"${mpirun[@]}" -np 2 "$bin/bench_p2p" | json

python3 - "$lines" "$out/runtime.json" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
a = [r for r in rows if r["mode"] == "plain-vs-trainer"][0]
print("(a) dp=pp=1 trainer vs plain LibTorch loop (GPT %d layers, hidden %d, batch %d, 1 thread)"
      % (a["layers"], a["hidden"], a["global_batch"]))
print("    plain %.1f ms/step, trainer %.1f ms/step, ratio %.3f (target <= 1.05)"
      % (1e3 * a["plain_step_s"], 1e3 * a["trainer_step_s"], a["ratio"]))
result = {"trainer_vs_plain": a, "pipeline": [], "p2p": None}
print("(b) pp=2 on 2 ranks x 1 thread vs 1 rank x 1 thread, m=16 (target ratio >= 1.75, ideal 1.88)")
print("    schedule  repeat  1 rank samples/s  2 ranks samples/s  ratio")
pipe = [r for r in rows if r["mode"] == "pipeline"]
for sched in ("1f1b", "gpipe"):
    ones = [r for r in pipe if r["schedule"] == sched and r["pp"] == 1]
    twos = [r for r in pipe if r["schedule"] == sched and r["pp"] == 2]
    ratios = []
    for i, (o, t) in enumerate(zip(ones, twos)):
        ratio = t["samples_per_s"] / o["samples_per_s"]
        ratios.append(ratio)
        print("    %-8s  %6d  %16.2f  %17.2f  %5.3f" % (sched, i, o["samples_per_s"], t["samples_per_s"], ratio))
        result["pipeline"].append({"schedule": sched, "one_rank": o, "two_ranks": t, "ratio": ratio})
    if ratios:
        print("    %-8s  median ratio %.3f" % (sched, statistics.median(ratios)))
p = [r for r in rows if r["mode"] == "p2p"]
if p:
    result["p2p"] = p[0]
    print("(c) Gloo point-to-point, one way (ping-pong / 2)")
    print("    bytes      shape known  latency us  bandwidth MB/s")
    for r in p[0]["rows"]:
        print("    %-10d %-12s %10.1f %15.1f" % (r["bytes"], "yes" if r["shape_known"] else "no",
                                               r["one_way_us"], r["bandwidth_MBps"]))
json.dump(result, open(sys.argv[2], "w"), indent=1)
print("written to", sys.argv[2])
PY
rm -f "$lines"
