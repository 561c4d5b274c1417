#!/usr/bin/env bash
# Installs and builds what is missing (scripts/setup.sh), then runs the main
# job: the GPT trained with data parallelism 2 x pipeline parallelism 2 on
# this CPU, 4 processes under mpirun (examples/configs/gpt_dp2_pp2.json:
# synthetic data that needs no download; rank 0 prints the plan and the loss).
# Extra arguments go to `trine train` (e.g. --steps 20).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build=${TRINE_BUILD_DIR:-$root/build}
# One intra-op thread per rank: 4 ranks share this machine's cores.
export OMP_NUM_THREADS=1
mpirun=(mpirun --oversubscribe --bind-to none)
[[ $(id -u) -eq 0 ]] && mpirun+=(--allow-run-as-root)
exec "${mpirun[@]}" -np 4 "$build/bin/trine" train --config "$root/examples/configs/gpt_dp2_pp2.json" "$@"
