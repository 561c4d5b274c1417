#!/usr/bin/env bash
# Installs trine from BUILD into a fresh prefix, builds tests/install (a
# project outside the tree that calls find_package(trine) and links
# trine::runtime) against it, and runs it: one training step.
#   check_install.sh BUILD SOURCE_DIR
set -euo pipefail
build=$1; here=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$here" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$work/prefix" \
  "${launcher[@]}" >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
OMP_NUM_THREADS=1 "$work/build/consumer"
