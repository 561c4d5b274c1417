#include "trine/runtime/process_grid.h"

#include <c10/util/Exception.h>

#include <sstream>

namespace trine {

const char* to_string(Dim d) {
  switch (d) {
    case Dim::DP: return "dp";
    case Dim::PP: return "pp";
    case Dim::TP: return "tp";
  }
  return "?";
}

ProcessGrid::ProcessGrid(int dp, int pp, int tp, const std::string& order, int world_size)
    : sizes_{dp, pp, tp}, order_(order) {
  for (Dim d : {Dim::DP, Dim::PP, Dim::TP})
    TORCH_CHECK(size(d) >= 1, to_string(d), " must be at least 1, got ", size(d));
  std::vector<Dim> dims;
  std::stringstream ss(order);
  for (std::string part; std::getline(ss, part, '-');) {
    Dim d = part == "dp" ? Dim::DP : part == "pp" ? Dim::PP : part == "tp" ? Dim::TP : Dim(-1);
    TORCH_CHECK(static_cast<int>(d) >= 0, "process grid order '", order, "' has '", part,
                "'; write the three dimensions dp, pp, tp, innermost first, joined by '-' (e.g. tp-dp-pp)");
    for (Dim seen : dims)
      TORCH_CHECK(seen != d, "process grid order '", order, "' names ", part, " twice");
    dims.push_back(d);
  }
  TORCH_CHECK(dims.size() == 3, "process grid order '", order,
              "' must name dp, pp and tp once each, innermost first (e.g. tp-dp-pp)");
  int stride = 1;
  for (Dim d : dims) {
    strides_[static_cast<int>(d)] = stride;
    stride *= size(d);
  }
  world_ = stride;
  TORCH_CHECK(world_size == world_, "the job has ", world_size, " processes, but dp*pp*tp = ", dp, "*", pp, "*", tp,
              " = ", world_, ": launch ", world_, " processes (mpirun -np ", world_, ", torchrun --nproc-per-node ",
              world_, ") or change dp/pp/tp in the config so that their product is ", world_size);
}

int ProcessGrid::coord(int rank, Dim d) const {
  TORCH_CHECK(rank >= 0 && rank < world_, "rank ", rank, " is outside the grid of ", world_);
  return rank / strides_[static_cast<int>(d)] % size(d);
}

int ProcessGrid::rank_of(int dp, int pp, int tp) const {
  TORCH_CHECK(dp >= 0 && dp < size(Dim::DP) && pp >= 0 && pp < size(Dim::PP) && tp >= 0 && tp < size(Dim::TP),
              "grid coordinate (dp ", dp, ", pp ", pp, ", tp ", tp, ") is outside the grid");
  return dp * strides_[0] + pp * strides_[1] + tp * strides_[2];
}

std::vector<int> ProcessGrid::group(int rank, Dim d) const {
  const int base = rank - coord(rank, d) * strides_[static_cast<int>(d)];
  std::vector<int> out;
  for (int c = 0; c < size(d); ++c) out.push_back(base + c * strides_[static_cast<int>(d)]);
  return out;
}

std::vector<std::vector<int>> ProcessGrid::all_groups(Dim d) const {
  std::vector<std::vector<int>> out;
  for (int r = 0; r < world_; ++r)
    if (coord(r, d) == 0) out.push_back(group(r, d));
  return out;
}

}  // namespace trine
