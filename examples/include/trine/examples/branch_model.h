// A model with two inputs and two branches that join late, returning two
// outputs: branch A reads `a`, branch B reads `b`, their last activations are
// concatenated for the main head, and branch B also feeds an auxiliary head.
// Plain torch::nn only.
#pragma once
#include <torch/torch.h>

#include <tuple>

namespace trine::examples {

struct BranchConfig {
  int64_t a_features = 12;
  int64_t b_features = 10;
  int64_t hidden = 24;
  int64_t depth = 3;       // layers per branch
  int64_t classes = 6;
  int64_t aux_outputs = 4;
  double dropout = 0.0;
};

// One layer of a branch: linear, tanh, dropout.
class BranchLayerImpl : public torch::nn::Module {
 public:
  BranchLayerImpl(int64_t in, int64_t out, double dropout);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Linear fc_{nullptr};
  torch::nn::Dropout drop_{nullptr};
};
TORCH_MODULE(BranchLayer);

class BranchModelImpl : public torch::nn::Module {
 public:
  explicit BranchModelImpl(const BranchConfig& cfg);
  // -> (main logits [batch, classes], auxiliary output [batch, aux_outputs])
  std::tuple<torch::Tensor, torch::Tensor> forward(const torch::Tensor& a, const torch::Tensor& b);

 private:
  torch::nn::Sequential branch_a_{nullptr}, branch_b_{nullptr};
  torch::nn::Linear head_{nullptr}, aux_head_{nullptr};
};
TORCH_MODULE(BranchModel);

// Cross-entropy on the main output plus 0.1 x MSE on the auxiliary one.
torch::Tensor branch_loss(const torch::Tensor& logits, const torch::Tensor& aux,
                          const torch::Tensor& labels, const torch::Tensor& aux_targets);

}  // namespace trine::examples
