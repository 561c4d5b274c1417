// Internal to tensor_parallel/: which ops of a stage graph draw random
// numbers when they run, for the rewrites that must give each rank (or each
// sub-microbatch) the numbers one process would draw.
#pragma once
#include "trine/frontend/graph_runner.h"

#include <torch/csrc/jit/ir/ir.h>

namespace trine {

// draws_random_numbers (frontend/graph_runner.h), except a scaled-dot-product
// attention whose dropout probability is a constant 0: it draws nothing.
inline bool draws_random_numbers_when_run(const torch::jit::Node* n) {
  if (!draws_random_numbers(n)) return false;
  if (n->kind() != c10::aten::scaled_dot_product_attention || n->inputs().size() < 5) return true;
  const auto p = torch::jit::toIValue(n->input(4));
  return !(p && p->isDouble() && p->toDouble() == 0);
}

}  // namespace trine
