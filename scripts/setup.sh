#!/usr/bin/env bash
# Installs what trine needs (Debian packages, the pinned torch wheel in a cached
# virtual environment, a compiler cache) and builds it into build/. Every step
# is skipped when already done, so running it twice costs only a no-op build.
#
# Environment:
#   TRINE_CACHE       per-user cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/trine)
#   TRINE_BUILD_DIR   build directory (default build)
#   TRINE_JOBS        parallel compile jobs (default: number of cores)
set -euo pipefail

TORCH_VERSION=2.11.0
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${TRINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trine}
build=${TRINE_BUILD_DIR:-$root/build}
jobs=${TRINE_JOBS:-$(nproc)}
venv=$cache/venv-torch-$TORCH_VERSION

log() { printf '[setup] %s\n' "$*" >&2; }

# 1. Debian packages. Only missing ones are installed.
debs=(build-essential cmake ninja-build ccache git python3 python3-venv
      libopenmpi-dev openmpi-bin libgloo-dev libmetis-dev nlohmann-json3-dev libgtest-dev libcli11-dev)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. LibTorch from the pinned torch wheel, in a venv outside the checkout keyed by
#    the version. Made in place (a venv's scripts carry its absolute path in their
#    #! lines, so it cannot be moved after); the marker file is written last, and
#    a venv without it is a half-made one, removed and made again.
if [[ ! -f $venv/.trine-complete ]]; then
  log "installing torch==$TORCH_VERSION into $venv (once per machine)"
  mkdir -p "$cache"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
  touch "$venv/.trine-complete"
fi

# 3. The libraries that make the test fixtures (real torchvision and transformers
#    models exported to TorchScript), pinned to versions that work with this torch.
#    transformers 4.47 and later build attention masks with vmap, which
#    torch.jit.trace cannot record; 4.46.3 traces.
fixture_pins=(torchvision==0.26.0 transformers==4.46.3)
if [[ ! -f $venv/.trine-fixtures-complete ]]; then
  log "installing ${fixture_pins[*]} into $venv (test fixtures, once per machine)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${fixture_pins[@]}"
  touch "$venv/.trine-fixtures-complete"
fi
torch_dir=$("$venv/bin/python" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torch").origin))')

# 4. Compiler cache shared by every clone on this machine.
export CCACHE_DIR=${CCACHE_DIR:-$cache/ccache}
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
# Paths relative to the checkout, so that every clone hits the same cache entries.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$root}
# The precompiled header changes its mtime on each clean build; let ccache ignore that.
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime

# 5. Configure (once) and build.
if [[ ! -f $build/build.ninja ]]; then
  log "configuring $build"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DTRINE_TORCH_DIR="$torch_dir" \
    -DPython3_EXECUTABLE="$venv/bin/python" >/dev/null
fi
log "building ($jobs jobs)"
cmake --build "$build" -j "$jobs"
