// A small GPT written against plain torch::nn (no trine types): token and
// position embeddings, pre-LayerNorm blocks with causal multi-head attention
// and a GELU MLP, a final LayerNorm and an LM head. It is the reference model
// of trine's tests and benchmarks.
#pragma once
#include <torch/torch.h>

#include <functional>

namespace trine::examples {

struct GptConfig {
  int64_t vocab = 256;
  int64_t seq_len = 32;
  int64_t hidden = 64;
  int64_t heads = 4;
  int64_t layers = 2;
  int64_t mlp_ratio = 4;
  double dropout = 0.0;        // attention, residual and embedding dropout
  bool tie_weights = false;    // LM head shares the token embedding's weight
  // When set, called on each part (the embeddings, every block, the final
  // norm, the head) as soon as it is built, e.g. to replace its parameters
  // with stand-ins that hold no memory, so that the whole model never exists
  // at once; the model's own initialisation (normal(0, 0.02) for every matrix)
  // is then left to whoever gives the parameters their values.
  std::function<void(torch::nn::Module&)> on_part_built;
};

// Causal self-attention with a fused qkv projection. The causal mask is a
// registered buffer, so traced graphs read it as a named input.
class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit CausalSelfAttentionImpl(const GptConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t heads_;
  torch::nn::Linear qkv_{nullptr}, proj_{nullptr};
  torch::nn::Dropout attn_drop_{nullptr}, resid_drop_{nullptr};
  torch::Tensor mask_;
};
TORCH_MODULE(CausalSelfAttention);

class GptBlockImpl : public torch::nn::Module {
 public:
  explicit GptBlockImpl(const GptConfig& cfg);
  torch::Tensor forward(torch::Tensor x);

 private:
  torch::nn::LayerNorm ln1_{nullptr}, ln2_{nullptr};
  CausalSelfAttention attn_{nullptr};
  torch::nn::Linear fc_{nullptr}, fc_out_{nullptr};
  torch::nn::Dropout drop_{nullptr};
};
TORCH_MODULE(GptBlock);

class GptImpl : public torch::nn::Module {
 public:
  explicit GptImpl(const GptConfig& cfg);
  // tokens: [batch, seq_len] int64 -> logits [batch, seq_len, vocab]
  torch::Tensor forward(const torch::Tensor& tokens);
  const GptConfig& config() const { return cfg_; }

 private:
  GptConfig cfg_;
  torch::nn::Embedding tok_emb_{nullptr}, pos_emb_{nullptr};
  torch::nn::Dropout drop_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm ln_f_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(Gpt);

// Next-token cross-entropy over all positions: logits [b, s, v], targets [b, s].
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets);

// Forward FLOPs of one microbatch by the usual analytic count (matrix products
// only): layers * (24 b s h^2 + 4 b s^2 h) + 2 b s h v.
double gpt_forward_flops(const GptConfig& cfg, int64_t batch);

}  // namespace trine::examples
