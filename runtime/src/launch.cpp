#include "trine/runtime/launch.h"

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <mpi.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <optional>

namespace trine {

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

int env_int(const char* name, int fallback) {
  auto v = env(name);
  if (!v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v->c_str(), &end, 10);
  TORCH_CHECK(end && *end == '\0', "environment variable ", name, "='", *v, "' is not an integer");
  return static_cast<int>(x);
}

// Rank 0 opens the store on a free port; everyone learns host and port
// through one MPI broadcast. MPI is finalised right after: trine talks
// through c10d from then on, and a rank that fails later must not hang in a
// collective MPI_Finalize.
void broadcast_address_with_mpi(LaunchInfo& info, c10::intrusive_ptr<c10d::Store>& server,
                                std::chrono::milliseconds timeout) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(nullptr, nullptr);
  std::array<char, 256> host{};
  int port = 0;
  if (info.rank == 0) {
    c10d::TCPStoreOptions o;
    o.port = 0;
    o.isServer = true;
    o.numWorkers = info.world_size;
    o.waitWorkers = false;
    o.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>("0.0.0.0", o);
    port = store->getPort();
    server = store;
    if (info.single_node()) {
      std::strcpy(host.data(), "127.0.0.1");
    } else {
      gethostname(host.data(), host.size() - 1);
    }
  }
  MPI_Bcast(host.data(), static_cast<int>(host.size()), MPI_CHAR, 0, MPI_COMM_WORLD);
  MPI_Bcast(&port, 1, MPI_INT, 0, MPI_COMM_WORLD);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
  info.master_addr = host.data();
  info.master_port = port;
}

}  // namespace

LaunchInfo detect_launch() {
  LaunchInfo info;
  if (env("RANK") && env("WORLD_SIZE")) {
    info.launcher = "torchrun";
    info.rank = env_int("RANK", 0);
    info.world_size = env_int("WORLD_SIZE", 1);
    info.local_rank = env_int("LOCAL_RANK", 0);
    info.local_world_size = env_int("LOCAL_WORLD_SIZE", info.world_size);
  } else if (env("OMPI_COMM_WORLD_RANK")) {
    info.launcher = "mpirun";
    info.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    info.world_size = env_int("OMPI_COMM_WORLD_SIZE", 1);
    info.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    info.local_world_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", info.world_size);
  } else if (env("SLURM_PROCID") && env("SLURM_NTASKS")) {
    info.launcher = "slurm";
    info.rank = env_int("SLURM_PROCID", 0);
    info.world_size = env_int("SLURM_NTASKS", 1);
    info.local_rank = env_int("SLURM_LOCALID", 0);
    // SLURM_NTASKS_PER_NODE may read "2(x3)"; all that matters is one node or more.
    info.local_world_size = env_int("SLURM_JOB_NUM_NODES", 0) == 1 ? info.world_size : 1;
  }
  TORCH_CHECK(info.world_size >= 1 && info.rank >= 0 && info.rank < info.world_size, info.launcher, " says rank ",
              info.rank, " of ", info.world_size, " processes, which is impossible");
  if (auto a = env("MASTER_ADDR")) info.master_addr = *a;
  info.master_port = env_int("MASTER_PORT", info.master_port);
  return info;
}

c10::intrusive_ptr<c10d::Store> rendezvous(LaunchInfo& info, std::chrono::milliseconds timeout) {
  if (info.world_size == 1) return c10::make_intrusive<c10d::HashStore>();
  c10::intrusive_ptr<c10d::Store> server;
  if (info.master_addr.empty()) {
    TORCH_CHECK(info.launcher == "mpirun", "launched by ", info.launcher, " with ", info.world_size,
                " processes but MASTER_ADDR is not set: export MASTER_ADDR (rank 0's host) and MASTER_PORT");
    broadcast_address_with_mpi(info, server, timeout);
    if (server) return server;
  }
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(info.master_port);
  o.isServer = info.rank == 0;
  o.numWorkers = info.world_size;
  o.waitWorkers = false;
  o.timeout = timeout;
  try {
    return c10::make_intrusive<c10d::TCPStore>(info.master_addr, o);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "rank ", info.rank, " could not ", info.rank == 0 ? "open" : "reach", " the rendezvous store at ",
                info.master_addr, ":", info.master_port, " within ", timeout.count() / 1000.0, " s: ", e.what());
  }
}

}  // namespace trine
