// The `metis` method (docs/design.md §5):
//  1. METIS_PartGraphKway on the undirected layer graph: two vertex weights
//     (fwd+bwd time, and parameter state + activation memory), edge weights the
//     bytes a cut between two layers would send. Balanced parts, small cuts,
//     but not yet a pipeline: parts may feed each other both ways.
//  2. Repair: order the parts by the mean position of their layers, then push
//     every layer to at least the stage of its producers (and the layers that
//     compute the model's outputs to the last stage). Sorting the layers by
//     (stage, position) now gives a topological order that keeps METIS's
//     groups together, e.g. the layers of one branch.
//  3. Refine: the exact best boundaries along that order (a contiguous split,
//     which includes the repaired METIS stages themselves as a candidate), then
//     single boundary-layer moves between neighbouring stages while the slowest
//     stage gets faster.
// Steps 1-3 run for a few METIS seeds derived from the given one; the fastest
// slowest stage wins (ties: fewer bytes cut), so a seed gives one answer.
#include "metis_partition.h"

#include "contiguous_split.h"

#include <c10/util/Exception.h>
#include <metis.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

namespace trine::detail {

namespace {

constexpr int kSeeds = 4;

// Integer weights for METIS, scaled so each kind sums to about `total`, >= 1.
std::vector<idx_t> scaled(const std::vector<double>& w, double total) {
  const double sum = std::accumulate(w.begin(), w.end(), 0.0);
  std::vector<idx_t> out(w.size(), 1);
  if (sum <= 0) return out;
  for (size_t i = 0; i < w.size(); ++i)
    out[i] = std::max<idx_t>(1, static_cast<idx_t>(std::llround(w[i] / sum * total)));
  return out;
}

std::vector<int> metis_parts(const PartitionGraph& g, int k, uint64_t seed) {
  const int n = g.num_layers();
  std::map<std::pair<int, int>, double> bytes;
  for (const auto& v : g.values)
    for (int c : v.consumers) bytes[{v.producer, c}] += static_cast<double>(v.bytes);
  std::vector<std::vector<std::pair<int, double>>> adj(n);
  double max_bytes = 0;
  for (const auto& [e, b] : bytes) {
    adj[e.first].push_back({e.second, b});
    adj[e.second].push_back({e.first, b});
    max_bytes = std::max(max_bytes, b);
  }
  std::vector<idx_t> xadj{0}, adjncy, adjwgt;
  for (int l = 0; l < n; ++l) {
    for (const auto& [to, b] : adj[l]) {
      adjncy.push_back(to);
      adjwgt.push_back(max_bytes > 0 ? std::max<idx_t>(1, static_cast<idx_t>(std::llround(b / max_bytes * 1e5))) : 1);
    }
    xadj.push_back(static_cast<idx_t>(adjncy.size()));
  }
  std::vector<double> time(n), memory(n);
  for (int l = 0; l < n; ++l) {
    time[l] = g.layers[l].time_s();
    memory[l] = static_cast<double>(g.layers[l].activation_bytes);
    for (int p : g.layers[l].params) memory[l] += static_cast<double>(g.params[p].state_bytes);
  }
  const auto tw = scaled(time, 1e6), mw = scaled(memory, 1e6);
  std::vector<idx_t> vwgt(2 * n);
  for (int l = 0; l < n; ++l) {
    vwgt[2 * l] = tw[l];
    vwgt[2 * l + 1] = mw[l];
  }
  idx_t nvtxs = n, ncon = 2, nparts = k, objval = 0;
  real_t ubvec[2] = {1.05f, 1.5f};  // time must balance; memory is only a soft second goal
  idx_t options[METIS_NOPTIONS];
  METIS_SetDefaultOptions(options);
  options[METIS_OPTION_SEED] = static_cast<idx_t>(seed & 0x3fffffff);
  options[METIS_OPTION_NUMBERING] = 0;
  std::vector<idx_t> part(n, 0);
  const int rc = METIS_PartGraphKway(&nvtxs, &ncon, xadj.data(), adjncy.empty() ? nullptr : adjncy.data(),
                                     vwgt.data(), nullptr, adjncy.empty() ? nullptr : adjwgt.data(), &nparts,
                                     nullptr, ubvec, options, &objval, part.data());
  TORCH_CHECK(rc == METIS_OK, "METIS_PartGraphKway failed (code ", rc, ") on a graph of ", n, " layers into ", k,
              " parts");
  return std::vector<int>(part.begin(), part.end());
}

// Parts -> a topological order that keeps each part's layers together.
std::vector<int> repaired_order(const PartitionGraph& g, const std::vector<int>& part, int k) {
  const int n = g.num_layers();
  std::vector<double> sum(k, 0), count(k, 0);
  for (int l = 0; l < n; ++l) {
    sum[part[l]] += l;
    count[part[l]] += 1;
  }
  std::vector<int> parts(k);
  std::iota(parts.begin(), parts.end(), 0);
  auto mean = [&](int p) { return count[p] > 0 ? sum[p] / count[p] : 1e300; };
  std::stable_sort(parts.begin(), parts.end(), [&](int a, int b) { return mean(a) < mean(b); });
  std::vector<int> rank(k);
  for (int r = 0; r < k; ++r) rank[parts[r]] = r;
  std::vector<int> stage(n);
  for (int l = 0; l < n; ++l) stage[l] = rank[part[l]];
  for (int l : g.output_layers) stage[l] = k - 1;
  const auto producers = g.producers();
  for (int l = 0; l < n; ++l)  // layer order is topological: producers are already final
    for (int p : producers[l]) stage[l] = std::max(stage[l], stage[p]);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return stage[a] < stage[b]; });
  return order;
}

struct Score {
  double slowest = 0;
  int64_t cut = 0;
  bool operator<(const Score& o) const {
    if (slowest != o.slowest) return slowest < o.slowest;
    return cut < o.cut;
  }
};

Score score(const PartitionGraph& g, const std::vector<int>& stage_of, const PipelineShape& shape) {
  const auto est = estimate_stages(g, stage_of, shape);
  return {slowest_stage_s(est), cut_bytes(est)};
}

}  // namespace

void refine_by_moves(const PartitionGraph& g, const PlanOptions& o, std::vector<int>& stage_of) {
  const int n = g.num_layers(), k = o.stages;
  const auto producers = g.producers(), consumers = g.consumers();
  std::vector<bool> is_output(n, false);
  for (int l : g.output_layers) is_output[l] = true;
  for (int iteration = 0; iteration < 4 * n; ++iteration) {
    const auto est = estimate_stages(g, stage_of, o.pipeline);
    int worst = 0;
    for (int s = 1; s < k; ++s)
      if (est[s].time_s() > est[worst].time_s()) worst = s;
    if (est[worst].layers.size() < 2) return;
    // Candidate moves, best first: (new slower time of the two stages, layer, target).
    std::vector<std::tuple<double, int, int>> moves;
    for (int l : est[worst].layers) {
      const double t = g.layers[l].time_s();
      if (worst > 0 && !is_output[l] &&
          std::all_of(producers[l].begin(), producers[l].end(), [&](int p) { return stage_of[p] < worst; }))
        moves.emplace_back(std::max(est[worst].time_s() - t, est[worst - 1].time_s() + t), l, worst - 1);
      if (worst + 1 < k &&
          std::all_of(consumers[l].begin(), consumers[l].end(), [&](int c) { return stage_of[c] > worst; }))
        moves.emplace_back(std::max(est[worst].time_s() - t, est[worst + 1].time_s() + t), l, worst + 1);
    }
    std::sort(moves.begin(), moves.end());
    bool moved = false;
    for (const auto& [time, l, to] : moves) {
      if (!(time < est[worst].time_s() * (1 - 1e-9))) break;
      const int from = stage_of[l];
      stage_of[l] = to;
      if (o.memory_limit_bytes > 0) {
        const auto after = estimate_stages(g, stage_of, o.pipeline);
        if (after[to].memory_bytes > o.memory_limit_bytes) {
          stage_of[l] = from;
          continue;
        }
      }
      moved = true;
      break;
    }
    if (!moved) return;
  }
}

std::vector<int> metis_assign(const PartitionGraph& g, const PlanOptions& o) {
  const int n = g.num_layers(), k = o.stages;
  TORCH_INTERNAL_ASSERT(k >= 1 && k <= n);
  std::vector<double> time(n);
  for (int l = 0; l < n; ++l) time[l] = g.layers[l].time_s();
  std::vector<int> best;
  Score best_score;
  std::string error;  // of the last trial no split of whose order fits the memory limit
  for (int trial = 0; trial < (k == 1 ? 1 : kSeeds); ++trial) {
    const auto part = k == 1 ? std::vector<int>(n, 0) : metis_parts(g, k, o.seed * kSeeds + trial);
    ContiguousSplit split;
    split.graph = &g;
    split.order = repaired_order(g, part, k);
    split.weight = time;
    split.stages = k;
    split.pipeline = o.pipeline;
    split.memory_limit_bytes = o.memory_limit_bytes;
    std::vector<int> stage_of;
    try {
      stage_of = split.solve();
    } catch (const c10::Error& e) {
      error = e.what_without_backtrace();
      continue;
    }
    refine_by_moves(g, o, stage_of);
    const Score s = score(g, stage_of, o.pipeline);
    if (best.empty() || s < best_score) {
      best = std::move(stage_of);
      best_score = s;
    }
  }
  TORCH_CHECK(!best.empty(), error);
  return best;
}

}  // namespace trine::detail
