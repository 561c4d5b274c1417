// An MLP whose skip connections jump over several layers: the output of layer i
// is added (in place) to the pre-activation of layer i + span. Written with
// in-place ops (add_, relu_) on purpose, since users' models have them. Its
// hidden layers may share weights (distinct_layers). Plain torch::nn only.
#pragma once
#include <torch/torch.h>

namespace trine::examples {

struct SkipConfig {
  int64_t in_features = 16;
  int64_t hidden = 32;
  int64_t classes = 8;
  int64_t layers = 6;      // hidden layers
  int64_t span = 3;        // a skip joins `span` layers later
  // > 0: hidden layer i runs with the weights of layer i mod this (weights
  // shared across the depth, as ALBERT shares its blocks); 0: all distinct.
  int64_t distinct_layers = 0;
  double dropout = 0.0;
};

class SkipModelImpl : public torch::nn::Module {
 public:
  explicit SkipModelImpl(const SkipConfig& cfg);
  // x: [batch, in_features] -> logits [batch, classes]
  torch::Tensor forward(const torch::Tensor& x);

 private:
  SkipConfig cfg_;
  torch::nn::Linear input_{nullptr}, head_{nullptr};
  torch::nn::ModuleList layers_{nullptr};
  torch::nn::Dropout drop_{nullptr};
};
TORCH_MODULE(SkipModel);

}  // namespace trine::examples
