#include "trine/examples/skip_model.h"

namespace trine::examples {

SkipModelImpl::SkipModelImpl(const SkipConfig& cfg) : cfg_(cfg) {
  TORCH_CHECK(cfg.layers >= 1 && cfg.span >= 2, "SkipModel: need layers >= 1 and span >= 2");
  TORCH_CHECK(cfg.distinct_layers >= 0 && cfg.distinct_layers <= cfg.layers,
              "SkipModel: distinct_layers must be in [0, layers]");
  input_ = register_module("input", torch::nn::Linear(cfg.in_features, cfg.hidden));
  layers_ = register_module("layers", torch::nn::ModuleList());
  const int64_t distinct = cfg.distinct_layers > 0 ? cfg.distinct_layers : cfg.layers;
  for (int64_t i = 0; i < distinct; ++i) layers_->push_back(torch::nn::Linear(cfg.hidden, cfg.hidden));
  drop_ = register_module("drop", torch::nn::Dropout(cfg.dropout));
  head_ = register_module("head", torch::nn::Linear(cfg.hidden, cfg.classes));
}

torch::Tensor SkipModelImpl::forward(const torch::Tensor& x) {
  std::vector<torch::Tensor> outs{input_(x)};
  for (int64_t i = 0; i < cfg_.layers; ++i) {
    auto y = layers_[i % static_cast<int64_t>(layers_->size())]->as<torch::nn::Linear>()->forward(outs.back());
    const int64_t from = static_cast<int64_t>(outs.size()) - cfg_.span;
    if (from >= 0) y.add_(outs[from]);
    y.relu_();
    outs.push_back(drop_(y));
  }
  return head_(outs.back());
}

}  // namespace trine::examples
