#include "split_through_view.h"

namespace trine {

namespace {

// Groups of dimensions with equal element counts: [a, b) of `in` <-> [c, e) of `out`.
struct Group {
  int a, b, c, e;
};

std::vector<Group> groups_of(const std::vector<int64_t>& in, const std::vector<int64_t>& out) {
  std::vector<Group> groups;
  int i = 0, j = 0;
  const int n = static_cast<int>(in.size()), m = static_cast<int>(out.size());
  while (i < n || j < m) {
    Group g{i, i, j, j};
    int64_t pi = 1, pj = 1;
    // Take at least one dimension from each side that has one left, then
    // grow the smaller product until they meet.
    if (i < n) pi *= in[i++];
    if (j < m) pj *= out[j++];
    while (pi != pj && (i < n || j < m)) {
      if ((pi < pj && i < n) || j >= m)
        pi *= in[i++];
      else
        pj *= out[j++];
    }
    g.b = i;
    g.e = j;
    groups.push_back(g);
  }
  return groups;
}

}  // namespace

ViewedSplit split_through_view(const std::vector<int64_t>& in, const std::vector<int64_t>& out, const Placement& split,
                               int tp) {
  ViewedSplit r;
  const int d = split.dim;
  for (const Group& g : groups_of(in, out)) {
    if (d < g.a || d >= g.b) continue;
    // Flattened, the group is `blocks` equal blocks (one per index of the
    // dimensions outside d, times d's own blocks), each cut in t. Out
    // dimension k can carry that split when the dimensions before it in the
    // group take whole blocks and its own blocks divide in t.
    int64_t blocks = split.blocks;
    for (int i = g.a; i < d; ++i) blocks *= in[i];
    int64_t before = 1;
    for (int k = g.c; k < g.e && blocks % before == 0; before *= out[k++]) {
      const int64_t own = blocks / before;
      if (out[k] % own == 0 && (out[k] / own) % tp == 0) {
        r.placement = Placement::split(k, static_cast<int>(own));
        return r;
      }
    }
    r.why = "no dimension of the view holds whole pieces of the split one";
    // A fused output viewed as (parts, features): cut per part, it would.
    if (split.blocks == 1 && g.b - g.a == 1 && g.e - g.c >= 2 && out[g.c] > 1 && out[g.c + 1] % tp == 0)
      r.wants_blocks = static_cast<int>(out[g.c]);
    return r;
  }
  r.why = "the split dimension is not found in the view";
  return r;
}

}  // namespace trine
