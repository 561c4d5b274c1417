// Applying a tensor-parallel layout to the stages of a pipeline
// (docs/design.md §5a). The sharding analysis decided, on the whole traced
// model, where every value lives across the t ranks; stages are cut from that
// model as usual (frontend/stage_split.h) and then each tp rank rewrites its
// stage graphs to compute only its piece:
//   - a column-parallel linear reads its whole input through
//     trine_tp::enter (identity forward, all-reduce of the gradient backward),
//     and so does every other op that turns a whole value into a split one;
//   - a row-parallel linear computes its partial product without the bias,
//     sums it over the group (trine_tp::leave), then adds the bias once;
//   - a dropout of a split value applies its piece of the mask the whole
//     value would get (trine_tp::dropout), so masks equal one process's (or,
//     with exact_dropout off, draws its own piece: trine_tp::shard_dropout);
//   - shape arguments that carry a split dimension (the heads of a view, the
//     sizes of a fused q/k/v split) take this rank's sizes, and every split
//     value's type (a received activation's included) its local shape.
// Parameters are cut by parameter_shards.h; with_parameter_shards gives the
// traced model whose tensors a rank's stages start from.
#pragma once
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/stage_split.h"
#include "trine/tensor_parallel/parameter_shards.h"
#include "trine/tensor_parallel/sharding_analysis.h"

#include <map>
#include <string>
#include <vector>

namespace trine {

struct StageShardingContext {
  const TracedModel* model = nullptr;  // the whole traced model the stages were cut from
  const ShardingAnalysis* analysis = nullptr;
  const std::map<std::string, ParameterShard>* shards = nullptr;
  int rank = 0, tp = 1;
  int64_t group = 0;  // a RegisteredGroup's id (tensor_parallel_group.h)
  // Dropout of split values: the single-process mask (exact, the default), or
  // each rank's own draw of its piece (per shard: cheaper, a different stream
  // from one process's, so training no longer equals it).
  bool exact_dropout = true;
};

// Rewrites `stage` for tp rank `context.rank` (its graph, types and runner).
// Throws, naming the op, when the graph holds something the rewrite cannot
// give rank-local form (a random op other than dropout on a split value, a
// dimension the ranks cannot share).
void shard_stage(StageProgram& stage, const StageShardingContext& context);

// What a rewritten stage holds on one tp rank against the whole stage: the
// bytes of its parameters and of the values its graph computes (one
// microbatch's activations, before any are freed), read off the value types.
struct ShardedStageBytes {
  int64_t parameters = 0, whole_parameters = 0;
  int64_t activations = 0, whole_activations = 0;
};
ShardedStageBytes sharded_stage_bytes(const StageProgram& stage);
// The same for every stage of `stage_of_layer`, cut from `model` and
// rewritten for tp rank 0 (every rank holds the same amounts).
std::vector<ShardedStageBytes> sharded_stage_bytes(const TracedModel& model, const ProxyGraph& proxy,
                                                   const std::vector<int>& stage_of_layer,
                                                   const ShardingAnalysis& analysis);

// `model` with every cut parameter replaced by rank `rank`'s slice of it
// (the graph is shared, not copied); a deferred parameter's slice stays a
// stand-in (frontend/deferred_init.h).
TracedModel with_parameter_shards(const TracedModel& model, const std::map<std::string, ParameterShard>& shards,
                                  int rank, int tp);

}  // namespace trine
