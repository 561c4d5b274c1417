// Deterministic synthetic data that needs no download and that a model can
// learn, so that a falling loss means training works.
#pragma once
#include <torch/torch.h>

#include <utility>

namespace trine::examples {

// Token sequences that follow a fixed affine rule t[i+1] = (a*t[i] + c) mod vocab,
// with 10% of the tokens replaced by noise. Returns (inputs, next-token targets),
// both [batch, seq_len] int64. The same (seed, step) always gives the same batch.
std::pair<torch::Tensor, torch::Tensor> token_batch(int64_t vocab, int64_t seq_len, int64_t batch,
                                                    uint64_t seed, int64_t step);

}  // namespace trine::examples
