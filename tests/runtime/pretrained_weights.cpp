// Multi-process check of config.weights (runtime/pretrained_weights.h): rank
// 0 writes a safetensors file of another GPT's parameters (another seed); a
// trainer under --layout starts from it, and every parameter each rank holds
// must equal its slice of the file's tensor (tp ranks read only their rows).
// Then one step runs. Exits 1 on any rank that disagrees. With --deferred the
// trainer's model is built with deferred parameters (frontend/deferred_init.h):
// the file's values replace the ones each rank made for its own shard.
#include "../support/reference.h"
#include "trine/common/files.h"
#include "trine/common/safetensors.h"
#include "trine/runtime/trainer.h"

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <thread>

using namespace trine;

int main(int argc, char** argv) {
  std::vector<int> layout{1, 2, 2};
  std::string file;
  CLI::App app{"trine pretrained weights check"};
  app.add_option("--layout", layout)->delimiter(',');
  app.add_option("--file", file)->required();
  bool deferred = false;
  app.add_flag("--deferred", deferred);
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(1);
  ModelSpec spec = testing::small_gpt_spec(true, 0.1);
  spec.batch = 8;
  int failures = 0;
  try {
    TORCH_CHECK(layout.size() == 3, "--layout is dp,pp,tp");
    spec.seed = 99;
    ExampleModel pretrained = make_example_model(spec);
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& p : pretrained.ptr->named_parameters()) tensors.emplace_back(p.key(), p.value().detach());
    for (const auto& b : pretrained.ptr->named_buffers()) tensors.emplace_back(b.key(), b.value());
    const int rank = std::atoi(std::getenv("OMPI_COMM_WORLD_RANK") ? std::getenv("OMPI_COMM_WORLD_RANK") : "0");
    if (rank == 0) write_safetensors(file, tensors);  // atomically: the others see all of it or nothing
    for (int i = 0; i < 600 && !path_exists(file); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    spec.seed = 7;
    spec.deferred = deferred;
    ExampleModel model = make_example_model(spec);
    TrainConfig c;
    c.parallel.dp = layout[0];
    c.parallel.pp = layout[1];
    c.parallel.tp = layout[2];
    c.global_batch = 8;
    c.microbatches = 2;
    c.log_every = 0;
    c.weights_file = file;
    Trainer trainer(model.module, model.loss, model.batch(0), c, model.init);
    int held = 0;
    for (const auto& [name, whole] : tensors) {
      const torch::Tensor mine = trainer.parameter(name);
      if (!mine.defined()) continue;
      ++held;
      if (!torch::equal(mine.detach(), trainer.tensor_parallel_slice(name, whole))) {
        std::fprintf(stderr, "rank %d: %s is not the file's\n", trainer.rank(), name.c_str());
        ++failures;
      }
    }
    const double loss = trainer.step(model.batch(0));
    std::printf("rank %d (stage %d, tp rank %d): %d tensors from the file, first loss %.6f\n", trainer.rank(),
                trainer.stage(), trainer.tensor_parallel_rank(), held, loss);
    if (held == 0 || !std::isfinite(loss)) ++failures;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  }
  return failures ? 1 : 0;
}
