// METIS k-way partitioning of the layer graph, repaired into a pipeline and
// refined (internal; the `metis` method).
#pragma once
#include "trine/partitioner/partition_method.h"

#include <vector>

namespace trine::detail {

std::vector<int> metis_assign(const PartitionGraph& graph, const PlanOptions& options);

// Moves single layers from the slowest stage to a neighbouring stage, keeping
// the chain ordered and every stage within the memory limit, while that makes
// the slowest stage faster.
void refine_by_moves(const PartitionGraph& graph, const PlanOptions& options, std::vector<int>& stage_of_layer);

}  // namespace trine::detail
