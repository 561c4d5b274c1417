#!/usr/bin/env bash
# A GPT whose parameters and AdamW state would not fit this machine if every
# rank held them (issue 16, point 1), one command:
#   benchmarks/bench_large_model.sh [LAYERS HIDDEN]
# Builds it with deferred parameters (docs/design.md §3a) and trains 3 steps
# on 4 ranks under pp=4 and under tp=2 x pp=2; every rank reports its peak
# resident memory against its share (the parameters, gradients and AdamW
# moments it holds, 16 bytes per parameter), and what it holds between steps. Writes build/bench/large_model.json
# and large_model.md. Default GPT: 8 blocks, hidden 2048, vocabulary 32000,
# sequence 64 (534M parameters: 7.96 GiB with AdamW per rank holding all of
# it, 31.8 GiB for four ranks); needs about 13 GiB of memory in all.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_setup.sh"
layers=${1:-8}
hidden=${2:-2048}
for layout in "--pp 4" "--pp 2 --tp 2"; do
  echo "(measured) $layout" >&2
  # shellcheck disable=SC2086
  "${mpirun[@]}" -np 4 "$bin/bench_large_model" $layout --layers "$layers" --hidden "$hidden" --steps 3 | json
done
python3 - "$lines" "$out/large_model.json" "$out/large_model.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows.sort(key=lambda r: (r["pp"], r["rank"]))
json.dump(rows, open(sys.argv[2], "w"), indent=1)
G = 2 ** 30
r0 = rows[0]
lines = [f"GPT of {r0['model_parameters'] / 1e6:.0f}M parameters: {r0['whole_model_bytes'] / G:.2f} GiB with AdamW "
         f"(16 B per parameter) on each rank if every rank held it, {4 * r0['whole_model_bytes'] / G:.1f} GiB for four.",
         "", "| layout | rank | stage | tp rank | parameters held | share (GiB) | resident after the last step (GiB) | "
         "peak resident (GiB) | peak - share (GiB) | trainer built (s) | steps (s) | losses |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    layout = f"pp{r['pp']}" + (f" x tp{r['tp']}" if r["tp"] > 1 else "")
    lines.append(f"| {layout} | {r['rank']} | {r['stage']} | {r['tp_rank']} | {r['held_parameters'] / 1e6:.0f}M | "
                 f"{r['share_bytes'] / G:.2f} | {r['resident_after_step_bytes'][-1] / G:.2f} | "
                 f"{r['peak_resident_bytes'] / G:.2f} | "
                 f"{(r['peak_resident_bytes'] - r['share_bytes']) / G:.2f} | {r['trainer_built_s']:.1f} | "
                 f"{' / '.join(f'{s:.1f}' for s in r['step_s'])} | {' / '.join(f'{l:.3f}' for l in r['losses'])} |")
lines.append("")
lines.append(f"A process before building anything: {r0['peak_before_model_bytes'] / G:.2f} GiB resident (LibTorch, MPI).")
open(sys.argv[3], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
