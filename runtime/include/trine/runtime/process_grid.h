// The 3D process grid: every rank's coordinate along data (dp), pipeline (pp)
// and tensor (tp) parallelism, and the ranks of each dimension's groups.
//
// The order string lists the dimensions from fastest-varying (innermost) to
// slowest: "tp-dp-pp" (the default) puts a rank's tp peers on neighbouring
// ranks (same node, fastest links), then its dp replicas, and pipeline stages
// outermost. rank = sum over dimensions of coordinate * stride.
#pragma once
#include <array>
#include <string>
#include <vector>

namespace trine {

enum class Dim { DP = 0, PP = 1, TP = 2 };
const char* to_string(Dim d);

class ProcessGrid {
 public:
  // Throws unless every size is >= 1 and `order` names dp, pp and tp once each,
  // joined by '-'. `world_size` must equal dp*pp*tp: otherwise the error says
  // how many ranks the sizes need and how to fix either side.
  ProcessGrid(int dp, int pp, int tp, const std::string& order, int world_size);

  int size(Dim d) const { return sizes_[static_cast<int>(d)]; }
  int world_size() const { return world_; }
  const std::string& order() const { return order_; }

  int coord(int rank, Dim d) const;
  int rank_of(int dp, int pp, int tp) const;
  // The ranks that differ from `rank` only along `d`, ordered by their coordinate on `d`.
  std::vector<int> group(int rank, Dim d) const;
  // Every group along `d` (each rank in exactly one), for creating them collectively.
  std::vector<std::vector<int>> all_groups(Dim d) const;

 private:
  std::array<int, 3> sizes_{}, strides_{};
  int world_ = 1;
  std::string order_;
};

}  // namespace trine
