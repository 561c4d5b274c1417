#include "graph_ops.h"

#include "trine/tensor_parallel/parameter_shards.h"
#include "trine/tensor_parallel/tensor_parallel_group.h"

#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <numeric>

namespace trine {

namespace {

at::Tensor enter_op(const at::Tensor& x, int64_t group) {
  return enter_parallel_region(x, registered_group(group).sum);
}

at::Tensor leave_op(const at::Tensor& x, int64_t group) {
  return leave_parallel_region(x, registered_group(group).sum);
}

at::Tensor piece_op(const at::Tensor& x, int64_t dim, int64_t blocks, int64_t rank, int64_t tp) {
  return shard_of(x, {static_cast<int>(dim), static_cast<int>(blocks)}, static_cast<int>(rank), static_cast<int>(tp));
}

// Ones of shape `whole` whose memory is laid out like `x` (dimensions in the
// order of x's strides), as empty_like lays out the noise of a whole dropout.
at::Tensor ones_laid_out_like(const at::Tensor& x, at::IntArrayRef whole) {
  if (x.is_contiguous()) return at::ones(whole, x.options());
  std::vector<int64_t> order(static_cast<size_t>(x.dim()));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x.stride(a) > x.stride(b); });
  std::vector<int64_t> sizes, inverse(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    sizes.push_back(whole[order[i]]);
    inverse[order[i]] = static_cast<int64_t>(i);
  }
  return at::ones(sizes, x.options()).permute(inverse);
}

at::Tensor dropout_op(const at::Tensor& x, double p, bool train, at::IntArrayRef whole, int64_t dim, int64_t blocks,
                      int64_t rank, int64_t tp) {
  if (!train || p == 0) return at::dropout(x, p, train);
  const at::Tensor noise = at::dropout(ones_laid_out_like(x, whole), p, true);
  return x * shard_of(noise, {static_cast<int>(dim), static_cast<int>(blocks)}, static_cast<int>(rank),
                      static_cast<int>(tp));
}

}  // namespace

namespace tp_ops {

c10::Symbol enter() { return c10::Symbol::fromQualString("trine_tp::enter"); }
c10::Symbol leave() { return c10::Symbol::fromQualString("trine_tp::leave"); }
c10::Symbol dropout() { return c10::Symbol::fromQualString("trine_tp::dropout"); }
c10::Symbol piece() { return c10::Symbol::fromQualString("trine_tp::piece"); }

}  // namespace tp_ops

}  // namespace trine

TORCH_LIBRARY(trine_tp, m) {
  m.def("enter(Tensor x, int group) -> Tensor", &trine::enter_op);
  m.def("leave(Tensor x, int group) -> Tensor", &trine::leave_op);
  m.def("piece(Tensor x, int dim, int blocks, int rank, int tp) -> Tensor", &trine::piece_op);
  m.def("dropout(Tensor x, float p, bool train, int[] whole, int dim, int blocks, int rank, int tp) -> Tensor",
        &trine::dropout_op, {at::Tag::nondeterministic_seeded});
}
