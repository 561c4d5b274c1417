// The two communication ops of a tensor-parallel region, as autograd
// functions (docs/design.md §5a; Megatron's f and g):
//   enter_parallel_region: identity forward, all-reduce of the gradient
//     backward. Put on the whole input of a column-parallel linear: every rank
//     computes a part of the output from it, so its gradient is the sum of
//     the ranks' parts.
//   leave_parallel_region: all-reduce forward (a partial sum made whole),
//     identity backward. Put on the output of a row-parallel linear.
// The all-reduce is given as a function that sums a tensor in place over
// the tensor-parallel group (the runtime passes its tp communicator's; tests
// pass an in-process one), so this part needs no process group of its own;
// it must outlive the backward pass (the autograd node keeps a pointer to it).
#pragma once
#include <torch/torch.h>

#include <functional>

namespace trine {

using AllReduceSum = std::function<void(torch::Tensor&)>;

torch::Tensor enter_parallel_region(const torch::Tensor& x, const AllReduceSum& all_reduce);
torch::Tensor leave_parallel_region(const torch::Tensor& x, const AllReduceSum& all_reduce);

}  // namespace trine
