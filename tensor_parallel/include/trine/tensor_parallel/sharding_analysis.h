// Finds a tensor-parallel layout on a traced graph by propagating placements
// (placement.h) through it, op by op, instead of looking layers up by name
// (docs/design.md §5a). Every linear (aten::linear; aten::addmm and
// aten::matmul with a parameter as the weight, as Conv1D traces) is
//   - column-parallel when its input is replicated: its output is split
//     along the features (and, when a chunk or split of it follows, the
//     weight is cut per fused part, as for q/k/v);
//   - row-parallel when its input is split along the features: each rank's
//     product is a partial sum, made whole by one all-reduce inside the
//     linear (before its bias is added), so its output is whole;
//   - replicated otherwise, and whenever a column-parallel output would
//     reach an op that cannot take it split (a layer norm over the split
//     dimension, a loss, an op the rules do not know): the analysis then
//     reverts the linears that split it and runs again, until nothing
//     changes. A weight read by anything but its one linear (tied to an
//     embedding, shared across layers) stays replicated.
// Vocabulary parallelism: a token embedding (an aten::embedding whose ids
// come from the data) is cut by rows when t divides them; a linear whose
// split output reaches aten::cross_entropy_loss as its class dimension is
// column-parallel, and the loss is computed over the split classes without
// gathering the logits. A weight read only by such an embedding and such a
// head (tied) is cut alike for both; when either cannot be cut, both stay
// whole.
// Attention splits by heads on its own: q, k, v column-parallel, their
// views to [batch, seq, heads, head_dim] split the heads dimension (its size
// becomes heads / t on each rank), the products and softmax stay split by
// head, and the output projection is row-parallel. Shapes come from the
// traced graph's concrete types, so sizes computed by aten::size in
// Python-traced graphs need no special case.
// Nothing here rewrites the graph; the plan is what a rewrite follows.
#pragma once
#include "trine/frontend/traced_model.h"
#include "trine/tensor_parallel/placement.h"

#include <string>
#include <unordered_map>
#include <vector>

namespace trine {

// A linear's decision, or an embedding's (Vocab: its table cut by rows,
// each rank looking up the ids it holds and one all-reduce summing them).
struct LinearDecision {
  enum class Mode { Column, Row, Replicated, Vocab };
  std::string weight;  // the weight parameter's name
  Mode mode = Mode::Replicated;
  int blocks = 1;      // Column: fused parts of the output (3 for a fused q/k/v), each cut in t
  std::string why;
  // Kept whole only because t does not divide what it would cut (its output
  // features, or the heads a view of its output makes).
  bool indivisible = false;
  const torch::jit::Node* node = nullptr;  // the linear in the analysed graph
};

const char* to_string(LinearDecision::Mode mode);

// Decisions the user forces by parameter-name pattern ('*' matches any run
// of characters); the analysis checks that each can hold.
struct ShardingOverrides {
  std::vector<std::string> column, row, replicate;
};

struct ShardingAnalysis {
  int tp = 1;
  std::vector<LinearDecision> linears;  // in graph order (embeddings too)
  std::unordered_map<const torch::jit::Value*, Placement> placements;  // every tensor value's
  int forward_allreduces = 0;  // partial sums made whole per forward
  std::vector<std::string> reshapes;  // shape changes a rewrite must make ("aten::view: dim 2, 4 -> 2 per rank")
  int passes = 0;                     // propagation passes until nothing changed
};

// Throws when an override cannot hold, naming the parameter and why.
ShardingAnalysis analyze_sharding(const TracedModel& model, int tp, const ShardingOverrides& overrides = {});

// Throws, naming the linears and the fix (config key `tp_key`, and
// `replicate_key` to keep them whole on purpose), when t leaves linears whole
// because it does not divide their features or heads, or when it shards
// nothing at all.
void check_tensor_parallel_layout(const ShardingAnalysis& analysis, const std::string& tp_key,
                                  const std::string& replicate_key);

// One row per linear: weight, decision, fused blocks, why; then the counts.
std::string sharding_table(const ShardingAnalysis& analysis);

}  // namespace trine
