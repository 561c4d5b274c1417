#!/usr/bin/env bash
# Installs and builds what is missing (scripts/setup.sh), then runs every test.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build=${TRINE_BUILD_DIR:-$root/build}
# One intra-op thread per process: tests run side by side on a small machine.
export OMP_NUM_THREADS=1
cd "$build"
ctest --output-on-failure -j "${TRINE_TEST_JOBS:-2}" "$@"
