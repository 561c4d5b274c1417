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
