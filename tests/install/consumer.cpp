// Trains one step of a small model through an installed trine (one process).
#include "trine/runtime/trainer.h"

#include <cmath>
#include <cstdio>

struct RegressorImpl : torch::nn::Module {
  RegressorImpl() : hidden(register_module("hidden", torch::nn::Linear(8, 16))), out(register_module("out", torch::nn::Linear(16, 1))) {}
  torch::Tensor forward(torch::Tensor x) { return out(torch::tanh(hidden(x))); }
  torch::nn::Linear hidden, out;
};
TORCH_MODULE(Regressor);

int main() {
  torch::manual_seed(0);
  Regressor model;
  trine::LossFn mse = [](const std::vector<torch::Tensor>& out, const std::vector<torch::Tensor>& targets) {
    return torch::mse_loss(out[0], targets[0]);
  };
  const auto x = torch::randn({16, 8});
  const trine::SampleBatch batch{{x}, {x.sum(1, true).sin()}};
  trine::TrainConfig config;
  config.global_batch = 16;
  config.microbatches = 2;
  config.log_every = 0;
  trine::Trainer trainer(torch::nn::AnyModule(model), mse, batch, config);
  const auto before = trainer.parameter("hidden.weight").clone();
  const double loss = trainer.step(batch);
  const bool moved = !torch::equal(before, trainer.parameter("hidden.weight"));
  std::printf("installed trine trained one step: loss %.6f, parameters %s\n", loss, moved ? "updated" : "unchanged");
  return std::isfinite(loss) && moved ? 0 : 1;
}
