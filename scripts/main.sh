#!/usr/bin/env bash
# Installs and builds what is missing (scripts/setup.sh), then runs the main job.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build=${TRINE_BUILD_DIR:-$root/build}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
"$build/bin/trine" inspect --model gpt --layers 4
"$build/bin/trine" train-staged --model gpt --layers 4 --stages 4 --steps 40 "$@"
