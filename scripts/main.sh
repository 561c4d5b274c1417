#!/usr/bin/env bash
# Installs and builds what is missing (scripts/setup.sh), then runs the main job:
# the GPT's layers, a pipeline plan from a per-layer profile on this machine,
# and training with that plan (all stages in one process until the runtime lands).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build=${TRINE_BUILD_DIR:-$root/build}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
model=(--model gpt --layers 4)
"$build/bin/trine" inspect "${model[@]}"
"$build/bin/trine" plan "${model[@]}" --stages 4 --method metis --profile --out "$build/plan-gpt.json"
"$build/bin/trine" train-staged "${model[@]}" --plan "$build/plan-gpt.json" --steps 40 "$@"
