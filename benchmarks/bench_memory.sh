#!/usr/bin/env bash
# Memory-manager benchmark of issue 14 (point 5), one process per model (the
# example GPT with dropout, and the ResNet-18 TorchScript fixture), 1 thread,
# m microbatches in flight on one stage (bench_memory.cpp says what each
# phase measures). Ratios are taken within one run: every configuration's
# steps interleave with the unmanaged run's.
# Writes build/bench/memory.json, build/bench/memory.svg (step time and peak
# against the budget, per policy) and prints the tables.
#   benchmarks/bench_memory.sh [STEPS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_setup.sh"
steps=${1:-5}
fixtures=${TRINE_BUILD_DIR:-$root/build}/tests/fixtures
if [[ ! -f $fixtures/resnet18_train.pt ]]; then
  (cd "${TRINE_BUILD_DIR:-$root/build}" && ctest -R fixtures.export --output-on-failure >&2)
fi
for model in gpt resnet18; do
  echo "$model: step time and peak against the budget" >&2
  "$bin/bench_memory" --model "$model" --fixtures "$fixtures" --phase overhead --microbatches 4 --steps "$steps" | json
  echo "$model: largest batch at a fixed budget" >&2
  "$bin/bench_memory" --model "$model" --fixtures "$fixtures" --phase largest --microbatches 2 \
    --max-microbatches 32 | json
done

python3 - "$lines" "$out/memory.json" "$out/memory.svg" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
json.dump(rows, open(sys.argv[2], "w"), indent=1)
over = [r for r in rows if r["phase"] == "overhead"]
mib = 2.0 ** 20
for model in sorted({r["model"] for r in over}):
    rs = [r for r in over if r["model"] == model]
    base = next(r for r in rs if r["policy"] == "none")
    print("%s, %d microbatches of %d rows in flight: unmanaged %.2f MiB of saved activations, step %.1f ms"
          % (model, base["microbatches"], base["rows"], base["unmanaged_peak_bytes"] / mib, 1e3 * base["step_s"]))
    print("budget   policy     prefetch  peak MiB  kept  step ms  overhead  swapped MiB  dropped MiB  reruns  "
          "allocator MiB")
    for r in rs:
        if r["policy"] == "none":
            continue
        kept = "yes" if r["needed_bytes"] == 0 and r["peak_bytes"] <= r["budget_bytes"] else "no"
        print("%5.2f    %-10s %8d %9.2f  %4s %8.1f %9.3f %12.2f %12.2f %7d %14.2f"
              % (r["fraction"], r["policy"], r["prefetch"], r["peak_bytes"] / mib, kept, 1e3 * r["step_s"],
                 r["overhead"], r.get("swapped_out_bytes", 0) / mib, r.get("dropped_bytes", 0) / mib,
                 r.get("replays", 0), r["allocator_peak_bytes"] / mib))
    print()
print("largest batch whose saved activations keep a fixed budget (the unmanaged peak at m0 microbatches)")
print("model      budget MiB  rows  unmanaged  swap  recompute  combined  (microbatches; search stops at max)")
for r in (r for r in rows if r["phase"] == "largest"):
    print("%-10s %10.2f %5d %10d %5d %10d %9d  (max %d)" % (r["model"], r["budget_bytes"] / mib, r["rows"],
          r["unmanaged"], r["swap"], r["recompute"], r["combined"], r["max_microbatches"]))
print("written to", sys.argv[2])

# The plot: per model, step-time overhead and peak / budget against the budget fraction, one line per policy.
colors = {"swap": "#1f77b4", "recompute": "#d62728", "combined": "#2ca02c"}
models = sorted({r["model"] for r in over})
W, H, pad = 420, 300, 50
svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">'
       % (W * len(models), H)]
for i, model in enumerate(models):
    rs = [r for r in over if r["model"] == model and r["policy"] != "none" and r["prefetch"] != 0
          or r["model"] == model and r["policy"] == "recompute"]
    x0 = i * W
    ymax = max(r["overhead"] for r in rs) * 1.1
    fx = lambda f: x0 + pad + (f / 1.0) * (W - 2 * pad)
    fy = lambda v: H - pad - (v / ymax) * (H - 2 * pad)
    svg.append('<text x="%d" y="20">%s: step time / unmanaged vs budget / unmanaged peak</text>' % (x0 + pad, model))
    svg.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (fx(0), fy(0), fx(1), fy(0)))
    svg.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (fx(0), fy(0), fx(0), fy(ymax)))
    for t in (0.25, 0.5, 0.75, 1.0):
        svg.append('<text x="%d" y="%d">%.2f</text>' % (fx(t) - 10, fy(0) + 15, t))
    for t in range(0, int(ymax) + 1):
        svg.append('<text x="%d" y="%d">%d</text>' % (fx(0) - 20, fy(t) + 4, t))
    svg.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="gray" stroke-dasharray="3"/>' % (fx(0), fy(1), fx(1), fy(1)))
    for k, (policy, color) in enumerate(colors.items()):
        pts = sorted((r["fraction"], r["overhead"]) for r in rs if r["policy"] == policy)
        if pts:
            svg.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>'
                       % (color, " ".join("%.1f,%.1f" % (fx(f), fy(v)) for f, v in pts)))
        svg.append('<text x="%d" y="%d" fill="%s">%s</text>' % (x0 + W - pad - 60, 40 + 14 * k, color, policy))
svg.append("</svg>")
open(sys.argv[3], "w").write("\n".join(svg))
print("plot:", sys.argv[3])
PY
rm -f "$lines"
