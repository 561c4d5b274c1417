#include "trine/examples/synthetic_data.h"

namespace trine::examples {

std::pair<torch::Tensor, torch::Tensor> token_batch(int64_t vocab, int64_t seq_len, int64_t batch,
                                                    uint64_t seed, int64_t step) {
  // A private generator: data must not depend on (or disturb) the global RNG.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003ULL + static_cast<uint64_t>(step));
  auto opts = torch::TensorOptions().dtype(torch::kLong);
  auto seq = torch::empty({batch, seq_len + 1}, opts);
  seq.select(1, 0).copy_(torch::randint(vocab, {batch}, gen, opts));
  const int64_t a = 5, c = 3;
  for (int64_t i = 1; i <= seq_len; ++i) seq.select(1, i).copy_((seq.select(1, i - 1) * a + c) % vocab);
  auto noise = torch::rand({batch, seq_len + 1}, gen) < 0.1;
  seq = torch::where(noise, torch::randint(vocab, {batch, seq_len + 1}, gen, opts), seq);
  return {seq.slice(1, 0, seq_len).contiguous(), seq.slice(1, 1, seq_len + 1).contiguous()};
}

}  // namespace trine::examples
