#include "contiguous_split.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace trine::detail {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Memory of the run order[a..b) on stage j, grown one layer at a time to the
// left (a decreasing) for a fixed end b: distinct parameters are counted once.
class RunMemory {
 public:
  RunMemory(const PartitionGraph& g, const std::vector<int>& order, const PipelineShape& shape, int k)
      : g_(g), order_(order), stamp_(g.params.size(), -1) {
    // Asked once per stage here, not once per (stage, end) in the search.
    for (int s = 0; s < k; ++s) in_flight_of_stage_.push_back(shape.in_flight(s, k));
  }
  void start(int stage) {
    ++epoch_;
    state_ = act_ = 0;
    in_flight_ = in_flight_of_stage_.at(stage);
  }
  int64_t add(int position) {
    const auto& layer = g_.layers[order_[position]];
    act_ += layer.activation_bytes;
    for (int p : layer.params)
      if (stamp_[p] != epoch_) {
        stamp_[p] = epoch_;
        state_ += g_.params[p].state_bytes;
      }
    return state_ + act_ * in_flight_;
  }

 private:
  const PartitionGraph& g_;
  const std::vector<int>& order_;
  std::vector<int> in_flight_of_stage_;
  std::vector<int64_t> stamp_;
  int64_t epoch_ = 0, state_ = 0, act_ = 0;
  int in_flight_ = 1;
};

}  // namespace

std::vector<int> ContiguousSplit::solve() const {
  const PartitionGraph& g = *graph;
  const int n = static_cast<int>(order.size());
  const int k = stages;
  TORCH_INTERNAL_ASSERT(n == g.num_layers() && k >= 1 && k <= n);
  std::vector<double> prefix(n + 1, 0);
  for (int i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + weight[order[i]];
  // Bytes crossing the boundary before position t (values sent across it).
  std::vector<int> pos(n);
  for (int i = 0; i < n; ++i) pos[order[i]] = i;
  std::vector<double> cut(n + 1, 0);
  for (const auto& v : g.values) {
    int last = pos[v.producer];
    for (int c : v.consumers) last = std::max(last, pos[c]);
    TORCH_INTERNAL_ASSERT(last == pos[v.producer] || pos[v.producer] < pos[v.consumers[0]], "order is not topological");
    if (last > pos[v.producer]) {
      cut[pos[v.producer] + 1] += static_cast<double>(v.bytes);
      cut[last + 1] -= static_cast<double>(v.bytes);
    }
  }
  for (int t = 1; t <= n; ++t) cut[t] += cut[t - 1];

  // The last run must hold every layer that computes a model output.
  int last_start = n - 1;
  for (int l : g.output_layers) last_start = std::min(last_start, pos[l]);
  const bool limited = memory_limit_bytes > 0;
  RunMemory memory(g, order, pipeline, k);
  // best[j][b]: first b positions in j runs. Pass 1 minimises the largest run;
  // pass 2, with runs capped at that optimum, minimises the bytes cut.
  auto run_dp = [&](bool minimise_cut, double cap, std::vector<std::vector<int>>* from) {
    std::vector<std::vector<double>> best(k + 1, std::vector<double>(n + 1, kInf));
    from->assign(k + 1, std::vector<int>(n + 1, -1));
    best[0][0] = 0;
    for (int j = 1; j <= k; ++j) {
      for (int b = j; b <= n - (k - j); ++b) {
        memory.start(j - 1);
        double& out = best[j][b];
        for (int a = b - 1; a >= j - 1; --a) {
          if (j == k && a > last_start) {
            if (limited) memory.add(a);
            continue;
          }
          const double w = prefix[b] - prefix[a];
          if (w > cap) break;  // runs only grow as a falls
          if (!minimise_cut && w >= out) break;
          if (limited && memory.add(a) > memory_limit_bytes) break;
          if (best[j - 1][a] == kInf) continue;
          const double value = minimise_cut ? best[j - 1][a] + (a > 0 ? cut[a] : 0) : std::max(best[j - 1][a], w);
          if (value < out) {
            out = value;
            (*from)[j][b] = a;
          }
        }
      }
    }
    return best[k][n];
  };
  std::vector<std::vector<int>> from;
  const double optimum = run_dp(false, kInf, &from);
  if (optimum == kInf && !limited)
    TORCH_CHECK(false, "layer '", g.layers[order[last_start]].name, "' computes a model output, so it belongs on the ",
                "last stage, but it is at position ", last_start, " of the layer order: at most ", last_start + 1,
                " stages are possible, not ", k);
  if (optimum == kInf) {
    // Say how close a split can get: the least possible peak stage memory.
    double least = kInf;
    {
      std::vector<std::vector<double>> m(k + 1, std::vector<double>(n + 1, kInf));
      m[0][0] = 0;
      for (int j = 1; j <= k; ++j)
        for (int b = j; b <= n - (k - j); ++b) {
          memory.start(j - 1);
          for (int a = b - 1; a >= j - 1; --a) {
            const double mem = static_cast<double>(memory.add(a));
            if (m[j - 1][a] < kInf) m[j][b] = std::min(m[j][b], std::max(m[j - 1][a], mem));
          }
        }
      least = m[k][n];
    }
    TORCH_CHECK(false, "no split of the ", n, " layers into ", k, " stages keeps every stage within the memory limit of ",
                format_bytes(static_cast<double>(memory_limit_bytes)), " (the least possible peak is ", format_bytes(least),
                "): raise the limit, use more stages, or hold fewer microbatches in flight");
  }
  const double cap = optimum * (1 + 1e-12) + 1e-300;
  run_dp(true, cap, &from);
  std::vector<int> stage_of(n, -1);
  int b = n;
  for (int j = k; j >= 1; --j) {
    const int a = from[j][b];
    TORCH_INTERNAL_ASSERT(a >= 0, "contiguous split lost its path");
    for (int i = a; i < b; ++i) stage_of[order[i]] = j - 1;
    b = a;
  }
  return stage_of;
}

std::vector<int> equal_count_split(int num_layers, int k) {
  TORCH_CHECK(k >= 1 && k <= num_layers, "cannot cut ", num_layers, " layers into ", k,
              " stages: need 1 <= stages <= layers");
  std::vector<int> out(num_layers);
  for (int l = 0; l < num_layers; ++l) out[l] = static_cast<int>(static_cast<int64_t>(l) * k / num_layers);
  return out;
}

}  // namespace trine::detail
