// The attention cores of a traced model (selective recomputation, docs/design.md
// §4a): in a layer, the ops from a matrix product of two activations (the
// scores q·kᵀ) through the next such product (probabilities·v), the span that
// holds the s²-sized scores, mask and probabilities; or a fused
// scaled_dot_product_attention op on its own. A product with a parameter
// operand (a projection) never starts or ends a core.
#pragma once
#include "trine/frontend/proxy_graph.h"

#include <vector>

namespace trine {

struct AttentionCore {
  int layer = -1;
  std::vector<int> ops;  // op ids, in order, all of `layer`
};

std::vector<AttentionCore> attention_cores(const ProxyGraph& proxy);

}  // namespace trine
