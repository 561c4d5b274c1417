#include "trine/examples/residual_mlp.h"

namespace trine::examples {

ResidualBlockImpl::ResidualBlockImpl(int64_t width)
    : fc1(register_module("fc1", torch::nn::Linear(width, 2 * width))),
      fc2(register_module("fc2", torch::nn::Linear(2 * width, width))),
      norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})))) {}

torch::Tensor ResidualBlockImpl::forward(torch::Tensor x) { return x + fc2(torch::gelu(fc1(norm(x)))); }

ResidualMlpImpl::ResidualMlpImpl(int64_t in, int64_t width, int64_t depth, int64_t classes) {
  embed = register_module("embed", torch::nn::Linear(in, width));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < depth; ++i) blocks->push_back(ResidualBlock(width));
  head = register_module("head", torch::nn::Linear(width, classes));
}

torch::Tensor ResidualMlpImpl::forward(torch::Tensor x) {
  x = embed(x);
  for (auto& b : *blocks) x = b->as<ResidualBlock>()->forward(x);
  return head(x);
}

}  // namespace trine::examples
