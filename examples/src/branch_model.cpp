#include "trine/examples/branch_model.h"

namespace trine::examples {

BranchLayerImpl::BranchLayerImpl(int64_t in, int64_t out, double dropout) {
  fc_ = register_module("fc", torch::nn::Linear(in, out));
  drop_ = register_module("drop", torch::nn::Dropout(dropout));
}

torch::Tensor BranchLayerImpl::forward(const torch::Tensor& x) { return drop_(torch::tanh(fc_(x))); }

namespace {
torch::nn::Sequential make_branch(int64_t in, const BranchConfig& cfg) {
  torch::nn::Sequential seq;
  for (int64_t i = 0; i < cfg.depth; ++i) seq->push_back(BranchLayer(i == 0 ? in : cfg.hidden, cfg.hidden, cfg.dropout));
  return seq;
}
}  // namespace

BranchModelImpl::BranchModelImpl(const BranchConfig& cfg) {
  TORCH_CHECK(cfg.depth >= 1, "BranchModel: depth must be >= 1");
  branch_a_ = register_module("branch_a", make_branch(cfg.a_features, cfg));
  branch_b_ = register_module("branch_b", make_branch(cfg.b_features, cfg));
  head_ = register_module("head", torch::nn::Linear(2 * cfg.hidden, cfg.classes));
  aux_head_ = register_module("aux_head", torch::nn::Linear(cfg.hidden, cfg.aux_outputs));
}

std::tuple<torch::Tensor, torch::Tensor> BranchModelImpl::forward(const torch::Tensor& a,
                                                                  const torch::Tensor& b) {
  auto ha = branch_a_->forward(a);
  auto hb = branch_b_->forward(b);
  return {head_(torch::cat({ha, hb}, 1)), aux_head_(hb)};
}

torch::Tensor branch_loss(const torch::Tensor& logits, const torch::Tensor& aux,
                          const torch::Tensor& labels, const torch::Tensor& aux_targets) {
  return torch::nn::functional::cross_entropy(logits, labels) +
         0.1 * torch::mse_loss(aux, aux_targets);
}

}  // namespace trine::examples
