#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: builds trine against that machine's LibTorch
# with CUDA (so NCCL is compiled in) and runs the multi-process equivalence
# checks with the stage programs on the GPU ("device": "cuda"): every layout's
# losses must equal single-process CPU training within 1e-5 relative, also
# with saved activations swapped or recomputed under a memory budget. Several
# ranks share the one GPU where NCCL allows it.
#
#   scripts/gpu-check.sh            # PYTHON=... picks the interpreter whose torch to use
#
# Needs, besides torch with CUDA, nvcc, CMake and Ninja: the Debian packages of
# scripts/setup.sh (Open MPI, METIS, Gloo headers, nlohmann/json, CLI11,
# GoogleTest). Ranks are started with mpirun when present, else with torchrun.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${TRINE_GPU_BUILD_DIR:-$root/build-gpu}
python=${PYTHON:-python3}
log() { printf '[gpu-check] %s\n' "$*" >&2; }

torch_dir=$("$python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
"$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
  { log "torch at $torch_dir sees no CUDA device: nothing to check here"; exit 1; }
"$python" -c 'import torch; print("[gpu-check] torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name(0), "x", torch.cuda.device_count())' >&2

if [[ ! -f $build/build.ninja ]]; then
  log "configuring $build against $torch_dir (CUDA on)"
  cmake -G Ninja -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTRINE_WITH_CUDA=ON \
    -DTRINE_TORCH_DIR="$torch_dir" -DPython3_EXECUTABLE="$(command -v "$python")"
fi
cmake --build "$build" --target trine_equivalence trine

export OMP_NUM_THREADS=1
# Several ranks on one GPU: NCCL refuses duplicate GPUs in a communicator
# unless told otherwise (honoured by NCCL versions that support it).
export NCCL_MULTI_RANK_GPU_ENABLE=${NCCL_MULTI_RANK_GPU_ENABLE:-1}
launch() {
  local n=$1; shift
  if command -v mpirun >/dev/null; then
    local extra=(); [[ $(id -u) -eq 0 ]] && extra+=(--allow-run-as-root)
    mpirun --oversubscribe --bind-to none "${extra[@]}" -np "$n" "$@"
  else
    "$python" -m torch.distributed.run --standalone --nproc-per-node "$n" --no-python "$@"
  fi
}
eq=$build/bin/trine_equivalence
failed=0
run() {
  local n=$1; shift
  log "ranks=$n: $*"
  if launch "$n" "$eq" --device cuda "$@"; then log "ok"; else log "FAILED"; failed=$((failed + 1)); fi
}
run 1 --dp 1 --pp 1
run 2 --pp 2 --schedule 1f1b
run 2 --pp 2 --schedule gpipe
run 2 --dp 2 --pp 1
run 4 --dp 2 --pp 2 --model gpt_tied
run 4 --pp 4 --model skip
run 4 --dp 2 --pp 2 --model skip --schedule gpipe
# Saved activations under a budget (recompute/memory_manager.h): side-stream
# copies into pinned host memory (swap, combined) and reruns (recompute).
for policy in swap recompute combined; do
  run 2 --pp 2 --model gpt_tied --dropout 0.1 --microbatches 4 --memory-budget 60000 --memory-policy "$policy"
done
if ((failed)); then log "$failed configuration(s) failed"; exit 1; fi
log "every configuration equals single-process training"
