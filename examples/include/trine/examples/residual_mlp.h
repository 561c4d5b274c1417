// A small residual MLP classifier in plain torch::nn, the "user's own model"
// of examples/one_line_trainer.cpp: a linear stem, blocks of
// x + fc2(gelu(fc1(norm(x)))), a linear head.
#pragma once
#include <torch/torch.h>

namespace trine::examples {

struct ResidualBlockImpl : torch::nn::Module {
  explicit ResidualBlockImpl(int64_t width);
  torch::Tensor forward(torch::Tensor x);
  torch::nn::Linear fc1, fc2;
  torch::nn::LayerNorm norm;
};
TORCH_MODULE(ResidualBlock);

struct ResidualMlpImpl : torch::nn::Module {
  ResidualMlpImpl(int64_t in, int64_t width, int64_t depth, int64_t classes);
  // x: [batch, in] -> logits [batch, classes]
  torch::Tensor forward(torch::Tensor x);
  torch::nn::Linear embed{nullptr}, head{nullptr};
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(ResidualMlp);

}  // namespace trine::examples
