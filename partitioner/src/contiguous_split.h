// Optimal contiguous splits of a topological order of the layers: the engine of
// the dp and parameters methods, and of METIS's refinement (internal).
#pragma once
#include "trine/partitioner/partition_graph.h"

#include <vector>

namespace trine::detail {

struct ContiguousSplit {
  const PartitionGraph* graph = nullptr;
  std::vector<int> order;      // a topological order of all layers
  std::vector<double> weight;  // per layer (by layer id): what the slowest stage minimises
  int stages = 1;
  PipelineShape pipeline;
  int64_t memory_limit_bytes = 0;  // 0: none

  // Stage of each layer (by layer id): the minimum over contiguous splits of
  // `order` into `stages` non-empty runs of the largest run weight, every run
  // within the memory limit; among the optimal splits, the fewest bytes cut.
  // Throws when no split fits the limit, saying the least peak memory possible.
  std::vector<int> solve() const;
};

// Layers in order, cut into k runs of equal counts (the first runs one shorter
// when k does not divide the count).
std::vector<int> equal_count_split(int num_layers, int k);

}  // namespace trine::detail
