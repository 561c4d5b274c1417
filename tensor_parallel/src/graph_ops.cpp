#include "graph_ops.h"

#include "trine/frontend/graph_runner.h"
#include "trine/tensor_parallel/parameter_shards.h"
#include "trine/tensor_parallel/tensor_parallel_group.h"

#include <ATen/Context.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <mutex>
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

at::Tensor vocab_embedding_op(const at::Tensor& weight, const at::Tensor& ids, int64_t padding_idx, int64_t first_row,
                              int64_t group) {
  const int64_t rows = weight.size(0);
  const at::Tensor outside = (ids < first_row).logical_or(ids >= first_row + rows);
  const at::Tensor local = (ids - first_row).masked_fill(outside, 0);
  const int64_t pad = padding_idx >= first_row && padding_idx < first_row + rows ? padding_idx - first_row : -1;
  const at::Tensor mine = at::embedding(weight, local, pad).masked_fill(outside.unsqueeze(-1), 0);
  return leave_parallel_region(mine, registered_group(group).sum);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Per row: log(sum of exp over all classes) - the target's logit. Each rank
// puts its classes' log-sum-exp in its own row of a [t + 1, rows] tensor and
// the target's logit (where it holds the target) in the last; one all-reduce
// sums them, and every rank combines the t log-sum-exps itself.
struct VocabCrossEntropy : torch::autograd::Function<VocabCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target, int64_t reduction,
                            int64_t ignore_index, int64_t first_class, int64_t group_id) {
    const TensorParallelGroup& group = registered_group(group_id);
    const int64_t classes = logits.size(1), rows = logits.size(0);
    const at::Tensor valid = target != ignore_index;
    const at::Tensor mine = (target >= first_class).logical_and(target < first_class + classes).logical_and(valid);
    const at::Tensor local = (target - first_class).masked_fill(mine.logical_not(), 0);
    at::Tensor packed = at::zeros({group.size + 1, rows}, logits.options());
    packed[group.rank].copy_(at::logsumexp(logits, 1));
    packed[group.size].copy_(logits.gather(1, local.unsqueeze(1)).squeeze(1).masked_fill(mine.logical_not(), 0));
    group.sum(packed);
    const at::Tensor lse = at::logsumexp(packed.narrow(0, 0, group.size), 0);
    const at::Tensor losses = (lse - packed[group.size]).masked_fill(valid.logical_not(), 0);
    const at::Tensor count = valid.sum().to(logits.scalar_type());
    ctx->save_for_backward({(logits - lse.unsqueeze(1)).exp(), local, mine, valid, count});
    ctx->saved_data["reduction"] = reduction;
    if (reduction == at::Reduction::Mean) return losses.sum() / count;
    if (reduction == at::Reduction::Sum) return losses.sum();
    return losses;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &softmax = saved[0], &local = saved[1], &mine = saved[2], &valid = saved[3], &count = saved[4];
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    at::Tensor grad = softmax.clone();
    grad.scatter_add_(1, local.unsqueeze(1), -mine.to(grad.scalar_type()).unsqueeze(1));
    grad.mul_(valid.to(grad.scalar_type()).unsqueeze(1));
    at::Tensor g = grads[0];
    if (reduction == at::Reduction::Mean) g = g / count;
    grad.mul_(reduction == at::Reduction::None ? g.unsqueeze(1) : g);
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor vocab_cross_entropy_op(const at::Tensor& logits, const at::Tensor& target, int64_t reduction,
                                  int64_t ignore_index, int64_t first_class, int64_t group) {
  TORCH_CHECK(logits.dim() == 2 && target.dim() == 1, "a vocabulary-parallel cross-entropy takes [rows, classes] "
              "logits and [rows] targets, got ", logits.sizes(), " and ", target.sizes());
  return VocabCrossEntropy::apply(logits, target, reduction, ignore_index, first_class, group);
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
                      int64_t rank, int64_t tp, int64_t batch_dim, int64_t part, int64_t parts) {
  if (!train || p == 0) return at::dropout(x, p, train);
  const at::Tensor noise = at::dropout(ones_laid_out_like(x, whole), p, true);
  at::Tensor mine = shard_of(noise, {static_cast<int>(dim), static_cast<int>(blocks)}, static_cast<int>(rank),
                             static_cast<int>(tp));
  if (parts > 1) {
    const int64_t rows = mine.size(batch_dim) / parts;
    mine = mine.narrow(batch_dim, part * rows, rows);
  }
  return x * mine;
}

at::Tensor shard_dropout_op(const at::Tensor& x, double p, bool train, int64_t rank) {
  if (!train || p == 0) return at::dropout(x, p, train);
  auto gen = at::globalContext().defaultGenerator(x.device());
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    // Distinct, well-spread seeds per rank (and sub-microbatch part).
    gen.set_current_seed(mix_seed(gen.current_seed() ^ mix_seed(static_cast<uint64_t>(rank))));
  }
  return at::dropout(x, p, true);
}

}  // namespace

namespace tp_ops {

c10::Symbol enter() { return c10::Symbol::fromQualString("trine_tp::enter"); }
c10::Symbol leave() { return c10::Symbol::fromQualString("trine_tp::leave"); }
c10::Symbol dropout() { return c10::Symbol::fromQualString("trine_tp::dropout"); }
c10::Symbol shard_dropout() { return c10::Symbol::fromQualString("trine_tp::shard_dropout"); }
c10::Symbol piece() { return c10::Symbol::fromQualString("trine_tp::piece"); }
c10::Symbol vocab_embedding() { return c10::Symbol::fromQualString("trine_tp::vocab_embedding"); }
c10::Symbol vocab_cross_entropy() { return c10::Symbol::fromQualString("trine_tp::vocab_cross_entropy"); }

}  // namespace tp_ops

}  // namespace trine

TORCH_LIBRARY(trine_tp, m) {
  m.def("enter(Tensor x, int group) -> Tensor", &trine::enter_op);
  m.def("leave(Tensor x, int group) -> Tensor", &trine::leave_op);
  m.def("piece(Tensor x, int dim, int blocks, int rank, int tp) -> Tensor", &trine::piece_op);
  m.def("vocab_embedding(Tensor weight, Tensor ids, int padding_idx, int first_row, int group) -> Tensor",
        &trine::vocab_embedding_op);
  m.def("vocab_cross_entropy(Tensor logits, Tensor target, int reduction, int ignore_index, int first_class, "
        "int group) -> Tensor", &trine::vocab_cross_entropy_op);
  m.def("dropout(Tensor x, float p, bool train, int[] whole, int dim, int blocks, int rank, int tp, int batch_dim, "
        "int part, int parts) -> Tensor",
        &trine::dropout_op, {at::Tag::nondeterministic_seeded});
  m.def("shard_dropout(Tensor x, float p, bool train, int rank) -> Tensor", &trine::shard_dropout_op,
        {at::Tag::nondeterministic_seeded});
}
