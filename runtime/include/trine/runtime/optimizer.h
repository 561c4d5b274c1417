// The optimizers a config can name, made in one place: the trainer, the
// planner's memory estimate and the tests' plain-LibTorch references all
// take them from here, so "adamw" means the same thing everywhere.
#pragma once
#include "trine/runtime/train_config.h"

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace trine {

// AdamW (betas, eps, decoupled weight decay) or SGD (momentum, L2 weight
// decay), per `config.name`; throws naming the known ones otherwise. The
// AdamW is LibTorch's, element for element, but updates a large parameter a
// piece at a time (bounded temporaries; docs/design.md §3a).
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerConfig& config,
                                                        const std::vector<torch::Tensor>& params);
// Sets every parameter group's learning rate.
void set_learning_rate(torch::optim::Optimizer& optimizer, const OptimizerConfig& config, double lr);
// Bytes of optimizer state per byte of trainable parameter: AdamW 2 (two
// moments), SGD with momentum 1, plain SGD 0.
double optimizer_state_factor(const OptimizerConfig& config);

// The sum of the squares of `t`'s elements, as a float64 0-d tensor on its
// device, taken a bounded piece at a time: a large gradient is never copied
// whole to float64 (the global-norm clipping of a big embedding would double
// its memory for a moment).
torch::Tensor squared_sum(const torch::Tensor& t);

// One parameter's optimizer state as named tensors, for checkpoints: AdamW
// "exp_avg", "exp_avg_sq" (the parameter's shape) and "step" (0-d int64);
// SGD with momentum "momentum_buffer". Empty before the parameter's first step.
std::map<std::string, torch::Tensor> optimizer_state_of(const torch::optim::Optimizer& optimizer,
                                                        const OptimizerConfig& config, const torch::Tensor& param);
// Sets it (copies of `state`, on the parameter's device); errors name the
// missing entry or the wrong shape.
void set_optimizer_state(torch::optim::Optimizer& optimizer, const OptimizerConfig& config, const torch::Tensor& param,
                         const std::map<std::string, torch::Tensor>& state, const std::string& what);

}  // namespace trine
