// What one tensor-parallel rank holds of each pipeline stage, as a table
// under the stage plan's (`trine train`, `trine plan --tp`): its parameters
// and the values its graph computes per microbatch against the whole
// stage's, and the plan's state (parameters, gradients, optimizer state) and
// memory (state and activations in flight) scaled by those shares.
#pragma once
#include "trine/partitioner/stage_plan.h"
#include "trine/tensor_parallel/stage_sharding.h"

#include <string>
#include <vector>

namespace trine {

std::string tensor_parallel_memory_table(const StagePlan& plan, const std::vector<ShardedStageBytes>& stage_bytes);

}  // namespace trine
