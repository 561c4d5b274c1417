#!/usr/bin/env bash
# Starts N copies of a command as the ranks of one job, the way torchrun
# would describe them (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
# MASTER_ADDR, MASTER_PORT), but with no launcher that kills the others when
# one fails: what each rank does about a dead peer is its own doing.
# Prints every rank's output and exit code; exits 0 only if every rank exited
# non-zero and printed an error, all within LIMIT seconds (default 60). The
# rank in DEAD_RANK (if set) is the one the test kills: it must only be dead.
#   run_ranks.sh N COMMAND [ARGS...]
set -u
n=$1; shift
limit=${LIMIT:-60}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
start=$(date +%s)
pids=()
for ((r = 0; r < n; r++)); do
  RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    timeout -s KILL $((limit + 30)) "$@" >"$dir/out.$r" 2>&1 &
  pids+=($!)
done
ok=1
for ((r = 0; r < n; r++)); do
  wait "${pids[$r]}"; rc=$?
  echo "--- rank $r: exit code $rc, after $(( $(date +%s) - start )) s"
  cat "$dir/out.$r"
  if [[ ${DEAD_RANK:-} == "$r" ]]; then
    [[ $rc -eq 137 ]] || { echo "rank $r should have been killed"; ok=0; }
    continue
  fi
  [[ $rc -ne 0 ]] || { echo "rank $r exited 0"; ok=0; }
  grep -q "error" "$dir/out.$r" || { echo "rank $r printed no error"; ok=0; }
done
took=$(( $(date +%s) - start ))
echo "all ranks done after $took s (limit $limit s)"
rm -rf "$dir"
[[ $took -le $limit && $ok -eq 1 ]]
