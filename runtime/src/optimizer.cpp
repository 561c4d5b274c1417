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

std::map<std::string, torch::Tensor> optimizer_state_of(const torch::optim::Optimizer& optimizer,
                                                        const OptimizerConfig& config, const torch::Tensor& param) {
  auto it = optimizer.state().find(param.unsafeGetTensorImpl());
  if (it == optimizer.state().end()) return {};
  if (config.name == "adamw") {
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    return {{"exp_avg", s.exp_avg()}, {"exp_avg_sq", s.exp_avg_sq()}, {"step", torch::tensor(s.step())}};
  }
  const auto& s = static_cast<const torch::optim::SGDParamState&>(*it->second);
  if (!s.momentum_buffer().defined()) return {};
  return {{"momentum_buffer", s.momentum_buffer()}};
}

void set_optimizer_state(torch::optim::Optimizer& optimizer, const OptimizerConfig& config, const torch::Tensor& param,
                         const std::map<std::string, torch::Tensor>& state, const std::string& what) {
  auto take = [&](const std::string& key, bool like_param) {
    auto it = state.find(key);
    TORCH_CHECK(it != state.end(), what, ": the optimizer state has no \"", key, "\" (was it written by another optimizer "
                "than config.optimizer.name \"", config.name, "\"?)");
    TORCH_CHECK(!like_param || it->second.sizes() == param.sizes(), what, ": optimizer state \"", key, "\" has shape ",
                it->second.sizes(), ", the parameter ", param.sizes());
    return it->second.to(param.device(), param.scalar_type()).clone();
  };
  void* key = param.unsafeGetTensorImpl();
  if (state.empty()) {
    optimizer.state().erase(key);
    return;
  }
  if (config.name == "adamw") {
    auto s = std::make_unique<torch::optim::AdamWParamState>();
    s->exp_avg(take("exp_avg", true));
    s->exp_avg_sq(take("exp_avg_sq", true));
    auto step = state.find("step");
    TORCH_CHECK(step != state.end(), what, ": the optimizer state has no \"step\"");
    s->step(step->second.item<int64_t>());
    optimizer.state()[key] = std::move(s);
    return;
  }
  auto s = std::make_unique<torch::optim::SGDParamState>();
  s->momentum_buffer(take("momentum_buffer", true));
  optimizer.state()[key] = std::move(s);
}

torch::Tensor squared_sum(const torch::Tensor& t) {
  constexpr int64_t kPiece = int64_t(1) << 22;  // elements converted at once: 32 MiB of float64
  auto sum = torch::zeros({}, torch::TensorOptions(torch::kFloat64).device(t.device()));
  const torch::Tensor flat = t.reshape({-1});
  for (int64_t first = 0; first < flat.numel(); first += kPiece)
    sum += flat.narrow(0, first, std::min(kPiece, flat.numel() - first)).to(torch::kFloat64).pow(2).sum();
  return sum;
}

}  // namespace trine
