// The recomputation policies a config can name (`recompute.policy` and its
// keys, docs/config.md), defined once here, and what each means for a
// pipeline: per stage, which of its layers run as checkpointed segments
// (StageExecution::checkpoint_layers; docs/design.md §4a).
//
//   none         keep every activation until its backward
//   full         every layer of every stage, in segments of `every` layers
//   layers       the layers named in `layers`, each its own segment
//   stage_aware  Merak's rule: stage i recomputes its first
//                floor(n_i * r_i) layers, r_i from `ratio` (r0) and the
//                microbatches each stage holds under the schedule
//                (stage_aware_ratios_for: 1F1B's last stage none, stage p-2
//                of the shifted critical path takes p-3's ratio); or, with
//                `memory_limit_bytes`, the fewest first layers that keep each
//                stage's predicted peak within it (memory_model.h)
//   selective    every layer's attention core (frontend/attention_cores.h):
//                the s²-sized scores and probabilities only
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace trine {

struct RecomputePolicy {
  std::string name;
  std::string summary;  // one line, for messages and docs
  bool implemented = false;
};

const std::vector<RecomputePolicy>& recompute_policies();

// Throws naming the known policies (and which are implemented) unless `name`
// is an implemented one; `where` names the config key in the message.
const RecomputePolicy& find_recompute_policy(const std::string& name, const std::string& where);

// `recompute` in a config.
struct RecomputeSettings {
  std::string policy = "none";
  int every = 1;                    // full: layers per checkpointed segment
  std::vector<std::string> layers;  // layers: the layer names to recompute
  double ratio = 0;                 // stage_aware: r0, the first stage's share of recomputed layers
  int64_t memory_limit_bytes = 0;   // stage_aware instead of ratio: each stage's activation budget
};

// Throws naming the key (prefixed by `where`, "config.recompute") and the fix
// when the settings do not fit together.
void check_recompute_settings(const RecomputeSettings& settings, const std::string& where);

// What one stage recomputes: segments of whole layers, and (selective) the
// attention cores of its other layers.
using StageSegments = std::vector<std::vector<int>>;
struct StageRecompute {
  StageSegments layer_segments;  // each a list of layer ids, in order
  bool attention_cores = false;
};

// Per stage, what it recomputes.
// `layers_of_stage[s]`: stage s's layers in order; `layer_names[l]`: layer l's
// name; `in_flight[s]`: the most microbatches stage s holds at once under
// the schedule (read by stage_aware). Throws naming unknown layers for the
// `layers` policy.
std::vector<StageRecompute> checkpointed_segments(const RecomputeSettings& settings,
                                                 const std::vector<std::vector<int>>& layers_of_stage,
                                                 const std::vector<std::string>& layer_names,
                                                 const std::vector<int>& in_flight);

}  // namespace trine
