// Internal to tensor_parallel/: where a split dimension goes when a tensor
// changes shape without moving data (view, reshape, flatten, unflatten).
#pragma once
#include "trine/tensor_parallel/placement.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace trine {

struct ViewedSplit {
  std::optional<Placement> placement;  // none: the split cannot pass this view
  std::string why;                     // when it cannot
  // When it cannot because the dimension is a fusion of this many parts
  // (unflatten(-1, (3, E)) of a fused q/k/v): with the producing weight cut
  // per part it could.
  int wants_blocks = 0;
};

// `in` split as `split` (dimension and blocks), viewed as `out`, over t ranks.
// Dimensions pair up in groups of equal element counts. Flattened, a group
// holding the split dimension is a number of equal blocks (one per index of
// its dimensions outside the split one, times the split's own blocks), each
// cut in t; the outermost out dimension whose predecessors in the group take
// whole blocks, and whose own share of blocks divides in t, carries the
// split (heads x head_dim: the heads; [b, E] as [b·heads, head_dim]: b·heads
// in b blocks).
ViewedSplit split_through_view(const std::vector<int64_t>& in, const std::vector<int64_t>& out, const Placement& split,
                               int tp);

}  // namespace trine
