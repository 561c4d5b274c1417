// Internal to tensor_parallel/: the LibTorch operators a tensor-parallel
// stage graph calls (registered under the namespace trine_tp), and the
// symbols stage_sharding.cpp creates nodes with.
//   trine_tp::enter(Tensor x, int group)   identity forward, all-reduce backward
//   trine_tp::leave(Tensor x, int group)   all-reduce forward, identity backward
//   trine_tp::piece(Tensor x, int dim, int blocks, int rank, int tp)
//       this rank's piece of a whole value (parameter_shards.h's shard_of),
//       for a whole operand of an op whose other operands are split
//   trine_tp::dropout(Tensor x, float p, bool train, int[] whole, int dim,
//                     int blocks, int rank, int tp, int batch_dim, int part,
//                     int parts)
//       dropout of this rank's piece of a split value with the single-process
//       mask: the mask of the whole value is drawn (the same numbers a whole
//       aten::dropout draws) and this rank's piece of it applied; with
//       parts > 1, x is sub-microbatch `part` of `parts` (sub_microbatches.h)
//       and takes that block of the piece along batch_dim. Tagged
//       nondeterministic_seeded, so the graph runner seeds it like dropout.
//   trine_tp::shard_dropout(Tensor x, float p, bool train, int rank)
//       dropout of this rank's piece drawn by the rank itself: the generator,
//       seeded for the op as for any dropout, is reseeded with the rank mixed
//       in, so ranks draw different masks (not one process's); tagged like
//       trine_tp::dropout
//   trine_tp::vocab_embedding(Tensor weight, Tensor ids, int padding_idx,
//                             int first_row, int group)
//       lookup in this rank's rows of the table (ids it does not hold give
//       zeros), summed over the group: the whole table's lookup
//   trine_tp::vocab_cross_entropy(Tensor logits, Tensor target, int reduction,
//                                 int ignore_index, int first_class, int group)
//       cross-entropy of [rows, classes] logits whose classes are split across
//       the group (this rank's start at first_class), from one all-reduce of
//       t + 1 numbers per row (each rank's log-sum-exp, the target's logit):
//       never the whole logits
#pragma once
#include <ATen/core/symbol.h>

namespace trine::tp_ops {

c10::Symbol enter();
c10::Symbol leave();
c10::Symbol dropout();
c10::Symbol shard_dropout();
c10::Symbol piece();
c10::Symbol vocab_embedding();
c10::Symbol vocab_cross_entropy();

}  // namespace trine::tp_ops
