#!/usr/bin/env bash
# Installs and builds what is missing (scripts/setup.sh), then runs the main
# job: the GPT (4 blocks, tied embedding) trained with data parallelism 2 x
# pipeline parallelism 2 on this CPU, 4 processes under mpirun, on a real text
# every Debian machine has (the GPL-3 text of base-files), tokenized byte by
# byte with `trine tokenize` (examples/configs/gpt_text_dp2_pp2.json; rank 0
# prints the plan and the loss). Extra arguments go to `trine train` (e.g.
# --steps 20).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
build=${TRINE_BUILD_DIR:-$root/build}
text=${TRINE_TEXT:-/usr/share/common-licenses/GPL-3}
tokens=$build/data/$(basename "$text").u16
[[ -f $tokens && $tokens -nt $text ]] || "$build/bin/trine" tokenize --text "$text" --out "$tokens"
# One intra-op thread per rank: 4 ranks share this machine's cores.
export OMP_NUM_THREADS=1
mpirun=(mpirun --oversubscribe --bind-to none)
[[ $(id -u) -eq 0 ]] && mpirun+=(--allow-run-as-root)
exec "${mpirun[@]}" -np 4 "$build/bin/trine" train --config "$root/examples/configs/gpt_text_dp2_pp2.json" \
  --data-path "$tokens" "$@"
