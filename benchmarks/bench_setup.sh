# Sourced by the benchmark scripts: the binaries ($bin), where results go
# ($out), one intra-op thread per process, the mpirun command line ($mpirun),
# a file collecting the runs ($lines), and `json`, which appends the JSON
# lines a benchmark binary prints ("json: {...}") to it.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${TRINE_BUILD_DIR:-$root/build}/bin
out=${TRINE_BUILD_DIR:-$root/build}/bench
mkdir -p "$out"
export OMP_NUM_THREADS=1
mpirun=(mpirun --oversubscribe --bind-to none)
[[ $(id -u) -eq 0 ]] && mpirun+=(--allow-run-as-root)
lines=$(mktemp)
json() { grep '^json: ' | sed 's/^json: //' >>"$lines"; }
# plot_python SCRIPT ARGS...: runs a report script with the build's Python
# (the venv scripts/setup.sh made), matplotlib installed into it (pinned)
# the first time: plots are for benchmarks only, so tests never need it.
plot_python() {
  local py
  py=$(sed -n 's/^Python3_EXECUTABLE:[A-Z]*=//p' "${TRINE_BUILD_DIR:-$root/build}/CMakeCache.txt")
  [[ -x $py ]] || py=python3
  "$py" -c 'import matplotlib' 2>/dev/null ||
    "$py" -m pip install -q --disable-pip-version-check "matplotlib==3.10.7" >&2
  "$py" "$@"
}
