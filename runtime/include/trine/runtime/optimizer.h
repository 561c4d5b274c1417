// The optimizers a config can name, made in one place: the trainer, the
// planner's memory estimate and the tests' plain-LibTorch references all
// take them from here, so "adamw" means the same thing everywhere.
#pragma once
#include "trine/runtime/train_config.h"

#include <torch/torch.h>

#include <memory>
#include <vector>

namespace trine {

// AdamW (betas, eps, decoupled weight decay) or SGD (momentum, L2 weight
// decay), per `config.name`; throws naming the known ones otherwise.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerConfig& config,
                                                        const std::vector<torch::Tensor>& params);
// Sets every parameter group's learning rate.
void set_learning_rate(torch::optim::Optimizer& optimizer, const OptimizerConfig& config, double lr);
// Bytes of optimizer state per byte of trainable parameter: AdamW 2 (two
// moments), SGD with momentum 1, plain SGD 0.
double optimizer_state_factor(const OptimizerConfig& config);

}  // namespace trine
