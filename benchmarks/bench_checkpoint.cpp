// Checkpoint write and read throughput (docs/design.md §7a): a GPT trained
// one step under the given layout, then `save_checkpoint` timed (collective:
// every rank writes its stage and tp slice, rank 0 the metadata, renames and
// syncs) and, on rank 0, reading every tensor back whole
// (`checkpoint_parameters`, what `trine export` and a resume under another
// layout read). MB/s counts parameters, buffers and optimizer state.
//
//   mpirun -np 2 build/bin/bench_checkpoint --pp 2 --layers 8 --hidden 512 --dir /tmp/ckpt
#include "bench_timing.h"

#include "trine/common/files.h"
#include "trine/examples/example_tasks.h"
#include "trine/runtime/checkpoint.h"
#include "trine/runtime/trainer.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <sys/stat.h>

using namespace trine;

namespace {

int64_t bytes_under(const std::string& dir) {
  int64_t total = 0;
  for (const std::string& name : list_directory(dir)) {
    struct stat st {};
    if (::stat((dir + "/" + name).c_str(), &st) == 0) total += st.st_size;
  }
  return total;
}

}  // namespace

int main(int argc, char** argv) try {
  int dp = 1, pp = 2, tp = 1, layers = 8, hidden = 512, repeats = 3;
  std::string dir = "/tmp/trine-bench-checkpoint";
  CLI::App app{"trine checkpoint throughput"};
  app.add_option("--dp", dp);
  app.add_option("--pp", pp);
  app.add_option("--tp", tp);
  app.add_option("--layers", layers);
  app.add_option("--hidden", hidden);
  app.add_option("--repeats", repeats);
  app.add_option("--dir", dir);
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(1);
  ModelSpec s;
  s.layers = layers;
  s.hidden = hidden;
  s.heads = 8;
  s.seq_len = 16;
  s.vocab = 256;
  s.batch = 4 * dp;
  ExampleModel model = make_example_model(s);
  TrainConfig c;
  c.parallel.dp = dp;
  c.parallel.pp = pp;
  c.parallel.tp = tp;
  c.global_batch = s.batch;
  c.microbatches = pp;
  c.log_every = 0;
  c.checkpoint_keep = 1;
  Trainer trainer(model.module, model.loss, model.batch(0), c);
  trainer.step(model.batch(0));  // optimizer state exists
  std::vector<double> writes, reads;
  int64_t bytes = 0;
  for (int r = 0; r < repeats; ++r) {
    if (trainer.rank() == 0) remove_tree(dir);
    writes.push_back(bench::seconds([&] { trainer.save_checkpoint(dir); }));
    const std::string step_dir = newest_checkpoint(dir);
    bytes = bytes_under(step_dir);
    if (trainer.rank() == 0) reads.push_back(bench::seconds([&] { checkpoint_parameters(step_dir); }));
  }
  if (trainer.rank() == 0) {
    const double mb = static_cast<double>(bytes) / 1e6;
    const double write_s = bench::median(writes), read_s = bench::median(reads);
    // Reading back takes the parameters only (a third of the bytes under AdamW).
    int64_t param_bytes = 0;
    for (const auto& [name, t] : checkpoint_parameters(newest_checkpoint(dir))) param_bytes += t.nbytes();
    std::printf("checkpoint of %.1f MB (%d ranks, dp %d pp %d tp %d): write %.3f s = %.0f MB/s; reading the %.1f MB "
                "of parameters whole on one rank %.3f s = %.0f MB/s\n",
                mb, trainer.world_size(), dp, pp, tp, write_s, mb / write_s, param_bytes / 1e6, read_s,
                param_bytes / 1e6 / read_s);
    std::cout << "json: "
              << nlohmann::json{{"bytes", bytes}, {"param_bytes", param_bytes}, {"write_s", write_s},
                                {"read_s", read_s}, {"write_MBps", mb / write_s},
                                {"read_MBps", param_bytes / 1e6 / read_s}, {"dp", dp}, {"pp", pp}, {"tp", tp}}
                     .dump()
              << std::endl;
  }
  return 0;
} catch (const c10::Error& e) {
  std::cerr << "bench_checkpoint: error: " << e.what_without_backtrace() << "\n";
  return 1;
}
