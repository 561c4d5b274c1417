#include "buffer_sync.h"

#include <cmath>
#include <limits>

namespace trine {

namespace jit = torch::jit;

namespace {

constexpr double kUnknown = std::numeric_limits<double>::quiet_NaN();

std::optional<double> constant_double(const jit::Value* v) {
  auto iv = jit::toIValue(v);
  if (!iv) return std::nullopt;
  if (iv->isDouble()) return iv->toDouble();
  if (iv->isInt()) return static_cast<double>(iv->toInt());
  return std::nullopt;
}

bool is_true_constant(const jit::Value* v) {
  auto iv = jit::toIValue(v);
  return iv && iv->isBool() && iv->toBool();
}

// The per-microbatch factor A of each graph input the graph updates in place
// (see buffer_sync.h), NaN where the update is not of the form A r + x.
std::map<const jit::Value*, double> update_factors(const jit::Graph& graph) {
  std::map<const jit::Value*, double> factor;
  auto note = [&](const jit::Value* v, double a) {
    if (v->node()->kind() != jit::prim::Param) return;
    auto [it, fresh] = factor.emplace(v, a);
    if (!fresh) it->second = kUnknown;  // updated twice per forward: not one affine step
  };
  for (const jit::Node* node : graph.nodes()) {
    const auto kind = node->kind();
    if (kind == jit::aten::batch_norm || kind == jit::aten::instance_norm) {
      // (input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
      if (!is_true_constant(node->input(5))) continue;
      const auto momentum = constant_double(node->input(6));
      for (int i : {3, 4})
        if (node->input(i)->type()->kind() != c10::TypeKind::NoneType) note(node->input(i), momentum ? 1 - *momentum : kUnknown);
      continue;
    }
    const c10::FunctionSchema* schema = node->maybeSchema();
    if (schema == nullptr) continue;
    for (size_t i = 0; i < schema->arguments().size() && i < node->inputs().size(); ++i) {
      const auto* alias = schema->arguments()[i].alias_info();
      if (alias == nullptr || !alias->isWrite()) continue;
      // r += constant (a counter) keeps A = 1; anything else is unknown.
      const bool additive = (kind == jit::aten::add_ || kind == jit::aten::sub_) && i == 0 &&
                            node->inputs().size() >= 2 && jit::toIValue(node->input(1)).has_value();
      note(node->input(i), additive ? 1.0 : kUnknown);
    }
  }
  return factor;
}

}  // namespace

BufferSync::BufferSync(const StageProgram& stage, const ProxyGraph& proxy, const std::map<int, torch::Tensor>& held,
                       Communicator* dp, int microbatches)
    : dp_(dp), microbatches_(microbatches) {
  const auto factors = update_factors(*stage.graph);
  for (size_t i = 0; i < stage.inputs.size(); ++i) {
    const StageInput& in = stage.inputs[i];
    if (in.kind != StageInput::Kind::Parameter || !proxy.params[in.index].is_buffer) continue;
    auto it = factors.find(stage.graph->inputs()[i]);
    if (it == factors.end()) continue;
    updated_.push_back({proxy.params[in.index].name, held.at(in.index), {}, it->second});
  }
}

void BufferSync::begin_step() {
  torch::NoGradGuard no_grad;
  for (auto& u : updated_) u.start = u.live.clone();
}

void BufferSync::undo_step() {
  torch::NoGradGuard no_grad;
  for (auto& u : updated_) u.live.copy_(u.start);
}

void BufferSync::finish_step() {
  if (dp_ == nullptr || dp_->size() <= 1 || updated_.empty()) return;
  torch::NoGradGuard no_grad;
  const int dp = dp_->size(), d = dp_->rank(), m = microbatches_;
  // This replica's share of the combined value, by dtype (one all-reduce each).
  std::map<c10::ScalarType, std::vector<torch::Tensor>> shares;
  for (auto& u : updated_) {
    torch::Tensor share;
    if (std::isnan(u.factor) || (!u.live.is_floating_point() && u.factor != 1)) {
      share = d == 0 ? u.live.clone() : torch::zeros_like(u.live);
    } else if (!u.live.is_floating_point()) {
      // A counter: the sum of every replica's increments, in integers.
      share = d == 0 ? u.live - (dp - 1) * u.start : u.live.clone();
    } else {
      const double a = u.factor;
      double weight_sum = 0;
      for (int r = 0; r < dp; ++r) weight_sum += std::pow(a, m * (dp - 1 - r));
      const double own = std::pow(a, m * (dp - 1 - d));
      const double start = std::pow(a, dp * m) - std::pow(a, m) * weight_sum;
      share = u.live.to(torch::kDouble) * own;
      if (d == 0) share += u.start.to(torch::kDouble) * start;
      share = share.to(u.live.scalar_type());
    }
    shares[u.live.scalar_type()].push_back(share.reshape({-1}));
  }
  std::map<c10::ScalarType, torch::Tensor> sums;
  for (auto& [dtype, list] : shares) {
    sums[dtype] = torch::cat(list);
    dp_->allreduce_sum(sums[dtype]);
  }
  std::map<c10::ScalarType, int64_t> offset;
  for (auto& u : updated_) {
    const auto dtype = u.live.scalar_type();
    u.live.copy_(sums[dtype].narrow(0, offset[dtype], u.live.numel()).view(u.live.sizes()));
    offset[dtype] += u.live.numel();
  }
}

std::vector<std::string> BufferSync::broadcast_buffers() const {
  std::vector<std::string> out;
  for (const auto& u : updated_)
    if (std::isnan(u.factor) || (!u.live.is_floating_point() && u.factor != 1)) out.push_back(u.name);
  return out;
}

}  // namespace trine
