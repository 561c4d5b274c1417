#include "trine/examples/gpt.h"

#include <cmath>

namespace trine::examples {

namespace nn = torch::nn;

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const GptConfig& cfg) : heads_(cfg.heads) {
  TORCH_CHECK(cfg.hidden % cfg.heads == 0, "GPT: hidden size ", cfg.hidden,
              " is not divisible by the number of heads ", cfg.heads);
  qkv_ = register_module("qkv", nn::Linear(cfg.hidden, 3 * cfg.hidden));
  proj_ = register_module("proj", nn::Linear(cfg.hidden, cfg.hidden));
  attn_drop_ = register_module("attn_drop", nn::Dropout(cfg.dropout));
  resid_drop_ = register_module("resid_drop", nn::Dropout(cfg.dropout));
  mask_ = register_buffer(
      "mask", torch::tril(torch::ones({cfg.seq_len, cfg.seq_len}, torch::kBool)).view(
                  {1, 1, cfg.seq_len, cfg.seq_len}));
}

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), s = x.size(1), h = x.size(2), d = h / heads_;
  auto qkv = qkv_(x).chunk(3, -1);
  auto split_heads = [&](const torch::Tensor& t) { return t.view({b, s, heads_, d}).transpose(1, 2); };
  auto q = split_heads(qkv[0]), k = split_heads(qkv[1]), v = split_heads(qkv[2]);
  auto scores = q.matmul(k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(d)));
  auto causal = mask_.slice(2, 0, s).slice(3, 0, s);
  // In place on purpose: traced models must cope with in-place ops.
  scores.masked_fill_(causal.logical_not(), -std::numeric_limits<float>::infinity());
  auto att = attn_drop_(torch::softmax(scores, -1));
  auto y = att.matmul(v).transpose(1, 2).contiguous().view({b, s, h});
  return resid_drop_(proj_(y));
}

GptBlockImpl::GptBlockImpl(const GptConfig& cfg) {
  ln1_ = register_module("ln1", nn::LayerNorm(nn::LayerNormOptions({cfg.hidden})));
  attn_ = register_module("attn", CausalSelfAttention(cfg));
  ln2_ = register_module("ln2", nn::LayerNorm(nn::LayerNormOptions({cfg.hidden})));
  fc_ = register_module("fc", nn::Linear(cfg.hidden, cfg.mlp_ratio * cfg.hidden));
  fc_out_ = register_module("fc_out", nn::Linear(cfg.mlp_ratio * cfg.hidden, cfg.hidden));
  drop_ = register_module("drop", nn::Dropout(cfg.dropout));
}

torch::Tensor GptBlockImpl::forward(torch::Tensor x) {
  x = x + attn_(ln1_(x));
  return x + drop_(fc_out_(torch::gelu(fc_(ln2_(x)))));
}

GptImpl::GptImpl(const GptConfig& cfg) : cfg_(cfg) {
  TORCH_CHECK(cfg.layers >= 1 && cfg.hidden >= 1 && cfg.vocab >= 2 && cfg.seq_len >= 1,
              "GPT: layers, hidden, vocab and seq_len must be positive");
  auto built = [&](torch::nn::Module& part) {
    if (cfg.on_part_built) cfg.on_part_built(part);
  };
  tok_emb_ = register_module("tok_emb", nn::Embedding(cfg.vocab, cfg.hidden));
  built(*tok_emb_);
  pos_emb_ = register_module("pos_emb", nn::Embedding(cfg.seq_len, cfg.hidden));
  built(*pos_emb_);
  drop_ = register_module("drop", nn::Dropout(cfg.dropout));
  blocks_ = register_module("blocks", nn::ModuleList());
  for (int64_t i = 0; i < cfg.layers; ++i) {
    blocks_->push_back(GptBlock(cfg));
    built(*blocks_[static_cast<size_t>(i)]);
  }
  ln_f_ = register_module("ln_f", nn::LayerNorm(nn::LayerNormOptions({cfg.hidden})));
  built(*ln_f_);
  // With tied weights the head reuses the token embedding's matrix (no module of its own).
  if (!cfg.tie_weights) {
    head_ = register_module("head", nn::Linear(nn::LinearOptions(cfg.hidden, cfg.vocab).bias(false)));
    built(*head_);
  }
  if (cfg.on_part_built) return;
  // GPT-2 style initialisation keeps the loss of an untrained model near log(vocab).
  torch::NoGradGuard no_grad;
  for (auto& p : parameters()) {
    if (p.dim() == 2) p.normal_(0.0, 0.02);
  }
}

torch::Tensor GptImpl::forward(const torch::Tensor& tokens) {
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) <= cfg_.seq_len,
              "GPT: expected tokens [batch, seq <= ", cfg_.seq_len, "], got ", tokens.sizes());
  auto pos = torch::arange(tokens.size(1), tokens.options().dtype(torch::kLong));
  auto x = drop_(tok_emb_(tokens) + pos_emb_(pos));
  for (const auto& block : *blocks_) x = block->as<GptBlock>()->forward(x);
  x = ln_f_(x);
  return cfg_.tie_weights ? torch::nn::functional::linear(x, tok_emb_->weight) : head_(x);
}

torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                              targets.reshape({-1}));
}

double gpt_forward_flops(const GptConfig& c, int64_t batch) {
  const double b = batch, s = c.seq_len, h = c.hidden, v = c.vocab;
  const double per_layer = 2.0 * b * s * h * h * (3 + 1 + 2 * c.mlp_ratio) + 4.0 * b * s * s * h;
  return c.layers * per_layer + 2.0 * b * s * h * v;
}

}  // namespace trine::examples
