// Where this process sits in the job, as its launcher told it, and the
// rendezvous that connects the processes (docs/design.md §7).
//
// Launchers recognised, first match wins:
//   torchrun  RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//   mpirun    OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE (Open MPI); MASTER_ADDR and
//             MASTER_PORT when set, otherwise rank 0 opens the store on a free port and
//             broadcasts its address with MPI
//   Slurm     SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR and MASTER_PORT required
//   single    none of these: one process, no network
#pragma once
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <string>

namespace trine {

struct LaunchInfo {
  std::string launcher = "single";  // torchrun | mpirun | slurm | single
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr;  // empty: not given (mpirun finds it)
  int master_port = 29500;
  bool single_node() const { return local_world_size == world_size; }
};

// Reads the environment; throws on inconsistent values (rank outside the world).
LaunchInfo detect_launch();

// Connects every process to one c10d TCPStore hosted by rank 0 (an in-memory
// store for a single process). Under mpirun without MASTER_ADDR, fills in the
// address rank 0 broadcast. Fails within `timeout` when peers do not arrive.
c10::intrusive_ptr<c10d::Store> rendezvous(LaunchInfo& info, std::chrono::milliseconds timeout);

}  // namespace trine
