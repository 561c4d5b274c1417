// Small partition graphs built by hand, whose best splits are known.
#pragma once
#include "trine/partitioner/partition_graph.h"

#include <algorithm>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace trine::testing {

// Layers "L0".."Ln-1" with these fwd+bwd times (split 1:2), no parameters.
inline PartitionGraph layers_with_times(const std::vector<double>& times) {
  PartitionGraph g;
  for (size_t i = 0; i < times.size(); ++i)
    g.layers.push_back({"L" + std::to_string(i), times[i] / 3, 2 * times[i] / 3, 0, {}});
  return g;
}

// Adds a value of `bytes` from `from` to the layers `to`.
inline void add_value(PartitionGraph& g, int from, std::vector<int> to, int64_t bytes = 100) {
  g.values.push_back({"v" + std::to_string(g.values.size()), from, std::move(to), bytes, true});
}

// A chain: every layer feeds the next; the last computes the output.
inline PartitionGraph chain(const std::vector<double>& times) {
  PartitionGraph g = layers_with_times(times);
  for (int l = 0; l + 1 < g.num_layers(); ++l) add_value(g, l, {l + 1});
  g.output_layers = {g.num_layers() - 1};
  return g;
}

// A random DAG: n layers, each reading 1-3 earlier ones, random times,
// parameters and activation sizes; layer n-1 reads every layer nobody reads.
inline PartitionGraph random_dag(int n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> time(0.1, 2.0);
  std::vector<double> times(n);
  for (auto& t : times) t = time(rng);
  PartitionGraph g = layers_with_times(times);
  std::vector<bool> read(n, false);
  std::vector<std::vector<int>> readers(n);
  for (int l = 1; l < n; ++l) {
    const int fan_in = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < fan_in; ++f) {
      const int from = l - 1 - static_cast<int>(rng() % std::min(l, 4));
      readers[from].push_back(l);
    }
  }
  for (int l = 0; l + 1 < n; ++l)
    if (readers[l].empty()) readers[l].push_back(n - 1);
  for (int l = 0; l < n; ++l) {
    auto& r = readers[l];
    std::sort(r.begin(), r.end());
    r.erase(std::unique(r.begin(), r.end()), r.end());
    if (!r.empty()) add_value(g, l, r, 1000 + static_cast<int64_t>(rng() % 100000));
    g.params.push_back({"p" + std::to_string(l), 4000, 16000, 1000});
    g.layers[l].params = {l};
    g.layers[l].activation_bytes = 1000 + static_cast<int64_t>(rng() % 5000);
  }
  g.output_layers = {n - 1};
  return g;
}

}  // namespace trine::testing
