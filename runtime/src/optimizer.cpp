#include "trine/runtime/optimizer.h"

namespace trine {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerConfig& o,
                                                        const std::vector<torch::Tensor>& params) {
  if (o.name == "adamw")
    return std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay));
  TORCH_CHECK(o.name == "sgd", "config.optimizer.name '", o.name, "' is unknown; use \"adamw\" or \"sgd\"");
  return std::make_unique<torch::optim::SGD>(
      params, torch::optim::SGDOptions(o.lr).momentum(o.momentum).weight_decay(o.weight_decay));
}

void set_learning_rate(torch::optim::Optimizer& optimizer, const OptimizerConfig& o, double lr) {
  for (auto& group : optimizer.param_groups()) {
    if (o.name == "adamw") static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    else static_cast<torch::optim::SGDOptions&>(group.options()).lr(lr);
  }
}

double optimizer_state_factor(const OptimizerConfig& o) {
  if (o.name == "adamw") return 2;
  return o.momentum != 0 ? 1 : 0;
}

}  // namespace trine
