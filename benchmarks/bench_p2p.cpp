// Point-to-point latency and bandwidth of trine's c10d (Gloo) transfers
// between two ranks, the way the executor uses them (header + data, with the
// shape known in advance or not). Ping-pong: rank 0 sends, rank 1 sends back.
// Then the time of an all-reduce (sum) between the two, per size. Each also
// reports what it cost this process in CPU (all threads: Gloo's transport
// threads and the kernel's copies), per byte sent or received (ping-pong) or
// per byte all-reduced: on a host whose cores the ranks share, that CPU is
// taken from compute (docs/design.md §6a).
//
//   mpirun -np 2 build/bin/bench_p2p [--iters N]
#include "bench_timing.h"

#include "trine/runtime/communicator.h"
#include "trine/runtime/distributed_session.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <iostream>

using namespace trine;

int main(int argc, char** argv) try {
  int iters = 200;
  CLI::App app{"trine point-to-point benchmark"};
  app.add_option("--iters", iters);
  CLI11_PARSE(app, argc, argv);
  auto& session = DistributedSession::get(std::chrono::seconds(60));
  TORCH_CHECK(session.launch.world_size == 2, "run with exactly 2 ranks (mpirun -np 2)");
  const int me = session.launch.rank, peer = 1 - me;
  Communicator comm(session.store, "p2p", {0, 1}, me, c10::kCPU, std::chrono::seconds(60));
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t bytes : {int64_t(4), int64_t(4) << 10, int64_t(128) << 10, int64_t(1) << 20, int64_t(16) << 20}) {
    for (bool known : {true, false}) {
      auto t = torch::ones({bytes / 4});
      RecvRequest req(peer, 1, "ping");
      if (known) req.shape = t.sizes().vec(), req.dtype = t.scalar_type();
      const int n = bytes >= (16 << 20) ? std::max(10, iters / 20) : iters;
      auto round = [&] {
        if (me == 0) {
          comm.post_send(t, peer, 1, "ping");
          comm.receive({req});
        } else {
          comm.receive({req});
          comm.post_send(t, peer, 1, "pong");
        }
        comm.wait_sends();
      };
      for (int i = 0; i < 5; ++i) round();
      comm.barrier();
      double secs = 0;
      const double cpu = bench::process_cpu_seconds([&] {
        secs = bench::seconds([&] {
          for (int i = 0; i < n; ++i) round();
        });
      });
      const double one_way = secs / n / 2;
      // Each round this rank sends and receives `bytes`.
      rows.push_back({{"bytes", bytes}, {"shape_known", known}, {"one_way_us", one_way * 1e6},
                      {"bandwidth_MBps", bytes / one_way / 1e6},
                      {"cpu_ns_per_byte", cpu / (2.0 * static_cast<double>(bytes) * n) * 1e9}});
    }
  }
  // All-reduce (sum) of the same sizes: what a tp or dp group pays, back to
  // back (idle) and between busy ranks: each computes `segment` seconds
  // before each all-reduce, as a tp stage does between its collectives. The
  // busy one's time is the round's excess over the compute.
  auto x = torch::randn({96, 96});
  auto burn = [&](double seconds) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < until) x = torch::tanh(x.mm(x) * 1e-2);
  };
  const double segment = 0.002;
  nlohmann::json allreduce = nlohmann::json::array();
  for (int64_t bytes : {int64_t(4), int64_t(4) << 10, int64_t(128) << 10, int64_t(1) << 20, int64_t(16) << 20}) {
    auto t = torch::ones({bytes / 4});
    const int n = bytes >= (16 << 20) ? std::max(10, iters / 20) : iters;
    for (int i = 0; i < 5; ++i) comm.allreduce_sum(t);
    comm.barrier();
    double secs = 0;
    const double cpu = bench::process_cpu_seconds([&] {
      secs = bench::seconds([&] {
        for (int i = 0; i < n; ++i) comm.allreduce_sum(t);
      });
    });
    const int busy_n = std::max(10, n / 4);
    const double busy = bench::seconds([&] {
      for (int i = 0; i < busy_n; ++i) {
        burn(segment);
        comm.allreduce_sum(t);
      }
    });
    allreduce.push_back({{"bytes", bytes}, {"us", secs / n * 1e6}, {"busy_us", (busy / busy_n - segment) * 1e6},
                         {"cpu_ns_per_byte", cpu / (static_cast<double>(bytes) * n) * 1e9}});
  }
  if (me == 0) {
    std::printf("%10s %12s %14s %16s %18s\n", "bytes", "shape known", "one-way us", "bandwidth MB/s",
                "CPU ns per byte");
    for (const auto& r : rows)
      std::printf("%10lld %12s %14.1f %16.1f %18.2f\n", static_cast<long long>(r["bytes"].get<int64_t>()),
                  r["shape_known"].get<bool>() ? "yes" : "no", r["one_way_us"].get<double>(),
                  r["bandwidth_MBps"].get<double>(), r["cpu_ns_per_byte"].get<double>());
    std::printf("%10s %14s %20s %18s\n", "bytes", "all-reduce us", "between busy ranks", "CPU ns per byte");
    for (const auto& r : allreduce)
      std::printf("%10lld %14.1f %20.1f %18.2f\n", static_cast<long long>(r["bytes"].get<int64_t>()),
                  r["us"].get<double>(), r["busy_us"].get<double>(), r["cpu_ns_per_byte"].get<double>());
    std::cout << "json: "
              << nlohmann::json{{"mode", "p2p"}, {"backend", "gloo"}, {"rows", rows}, {"allreduce", allreduce}}.dump()
              << std::endl;
  }
  return 0;
} catch (const c10::Error& e) {
  std::cerr << "bench_p2p: error: " << e.what_without_backtrace() << "\n";
  return 1;
}
