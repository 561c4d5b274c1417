// Analytic forward cost of one traced op (docs/design.md §3): FLOPs of matrix
// products and convolutions counted exactly (2 per multiply-add), attention as
// its two products, everything else one FLOP per output element; ops whose
// outputs are views of their inputs cost nothing.
#pragma once
#include <torch/csrc/jit/ir/ir.h>

namespace trine {

double forward_flops(const torch::jit::Node* node);

// True when output `i` of the node is a view of (aliases) one of its inputs.
bool output_is_view(const torch::jit::Node* node, size_t i);

}  // namespace trine
