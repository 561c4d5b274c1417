// trine's one-line API on a model trine knows nothing about.
//
// A user's own torch::nn::Module (a small residual MLP classifier, plain
// torch::nn in examples/include/trine/examples/residual_mlp.h), a loss, a
// sample batch and a config become a 3D-parallel trainer in one call; the
// same program runs alone or as every rank of a job:
//
//   build/bin/one_line_trainer                                  # one process
//   mpirun -np 4 build/bin/one_line_trainer --dp 2 --pp 2       # 2 replicas x 2 stages
//   torchrun --standalone --nproc-per-node 2 --no-python build/bin/one_line_trainer --pp 2
//   mpirun -np 4 build/bin/one_line_trainer --pp 2 --tp 2       # 2 stages, each layer cut in 2
#include "trine/examples/residual_mlp.h"
#include "trine/runtime/trainer.h"

#include <cstdlib>
#include <cstring>
#include <iostream>

namespace {

// Data that needs no download: points around 8 centres, labelled by centre.
trine::SampleBatch blobs(int64_t step, int64_t rows) {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(1000 + step);
  auto centres = torch::randn({8, 16}, torch::make_generator<at::CPUGeneratorImpl>(7)) * 2;
  auto labels = torch::randint(0, 8, {rows}, g);
  auto x = centres.index_select(0, labels) + torch::randn({rows, 16}, g);
  return {{x}, {labels}};
}

int flag(int argc, char** argv, const char* name, int fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return std::atoi(argv[i + 1]);
  return fallback;
}

}  // namespace

int main(int argc, char** argv) try {
  torch::set_num_threads(1);
  torch::manual_seed(0);  // every rank builds the same initial model
  trine::examples::ResidualMlp model(16, 64, 6, 8);
  auto loss = [](const std::vector<torch::Tensor>& out, const std::vector<torch::Tensor>& targets) {
    return torch::nn::functional::cross_entropy(out[0], targets[0]);
  };
  trine::TrainConfig config = trine::TrainConfig::from_json(nlohmann::json::parse(R"({
    "global_batch": 64, "microbatches": 4, "schedule": "1f1b", "steps": 60,
    "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
    "lr_schedule": {"warmup_steps": 5}, "logging": {"every": 10}})"));
  config.parallel.dp = flag(argc, argv, "--dp", 1);
  config.parallel.pp = flag(argc, argv, "--pp", 1);
  config.parallel.tp = flag(argc, argv, "--tp", 1);

  // The one line.
  trine::Trainer trainer(torch::nn::AnyModule(model), loss, blobs(0, 64), config);

  const auto report = trainer.fit([](int64_t step) { return blobs(step, 64); });
  if (trainer.rank() == 0)
    std::cout << "rank 0 of " << trainer.world_size() << ": loss " << report.losses.front() << " -> "
              << report.losses.back() << "\n";
  return 0;
} catch (const c10::Error& e) {
  std::cerr << "one_line_trainer: error: " << e.what_without_backtrace() << "\n";
  return 1;
}
