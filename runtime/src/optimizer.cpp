#include "trine/runtime/optimizer.h"

#include <cmath>

namespace trine {

namespace {

constexpr int64_t kPiece = int64_t(1) << 22;  // elements updated at once

// The first `n` elements of `t` from `first` on, as a view (t contiguous).
torch::Tensor piece(const torch::Tensor& t, int64_t first, int64_t n) { return t.view({-1}).narrow(0, first, n); }

// LibTorch's AdamW, step for step (same state, same arithmetic per element),
// but updating each parameter a piece of kPiece elements at a time: its
// denominator is a temporary of one piece, not of the whole parameter (twice
// over), which for a large embedding is the difference between a peak near
// the rank's share and one a parameter or two above it.
class PiecewiseAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;

  torch::Tensor step(LossClosure closure = nullptr) override {
    torch::NoGradGuard no_grad;
    torch::Tensor loss;
    if (closure) {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    for (auto& group : param_groups_) {
      const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
      TORCH_INTERNAL_ASSERT(!o.amsgrad(), "amsgrad is not offered by the config");
      for (auto& p : group.params())
        if (p.grad().defined()) update(p, o);
    }
    return loss;
  }

 private:
  torch::optim::AdamWParamState& state_of(const torch::Tensor& p) {
    auto& slot = state_[p.unsafeGetTensorImpl()];
    if (!slot) {
      auto s = std::make_unique<torch::optim::AdamWParamState>();
      s->exp_avg(torch::zeros_like(p, at::MemoryFormat::Preserve));
      s->exp_avg_sq(torch::zeros_like(p, at::MemoryFormat::Preserve));
      slot = std::move(s);
    }
    return static_cast<torch::optim::AdamWParamState&>(*slot);
  }

  void update(torch::Tensor& p, const torch::optim::AdamWOptions& o) {
    const torch::Tensor& grad = p.grad();
    TORCH_CHECK(!grad.is_sparse(), "AdamW does not support sparse gradients");
    auto& s = state_of(p);
    s.step(s.step() + 1);
    const auto [beta1, beta2] = o.betas();
    const double bias_correction1 = 1 - std::pow(beta1, s.step());
    const double bias_correction2 = 1 - std::pow(beta2, s.step());
    const double step_size = o.lr() / bias_correction1;
    auto apply = [&](torch::Tensor w, const torch::Tensor& g, torch::Tensor m, torch::Tensor v) {
      if (o.weight_decay() != 0) w.mul_(1 - o.lr() * o.weight_decay());
      m.mul_(beta1).add_(g, 1 - beta1);
      v.mul_(beta2).addcmul_(g, g, 1 - beta2);
      const torch::Tensor denom = (v.sqrt() / std::sqrt(bias_correction2)).add_(o.eps());
      w.addcdiv_(m, denom, -step_size);
    };
    const bool flat = p.is_contiguous() && grad.is_contiguous() && s.exp_avg().is_contiguous() &&
                      s.exp_avg_sq().is_contiguous();
    if (!flat || p.numel() <= kPiece) return apply(p, grad, s.exp_avg(), s.exp_avg_sq());
    for (int64_t first = 0; first < p.numel(); first += kPiece) {
      const int64_t n = std::min(kPiece, p.numel() - first);
      apply(piece(p, first, n), piece(grad, first, n), piece(s.exp_avg(), first, n), piece(s.exp_avg_sq(), first, n));
    }
  }
};

}  // namespace

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerConfig& o,
                                                        const std::vector<torch::Tensor>& params) {
  if (o.name == "adamw")
    return std::make_unique<PiecewiseAdamW>(
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
