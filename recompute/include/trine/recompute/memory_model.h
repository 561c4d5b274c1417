// Predicts each pipeline stage's activation memory for a schedule and a
// recomputation policy (docs/design.md §4a), without running the model:
//   - per microbatch, what a stage holds after a forward: whole (every
//     layer's kept bytes), under the policy (kept bytes of the layers it
//     keeps, plus only the outputs of each checkpointed segment), after F*
//     (the stage's outputs only);
//   - over a step, the most it holds at once between instructions: the
//     schedule checker plays the schedule with those per-microbatch costs.
// Layer bytes come from the partitioner's cost model (measured by the
// profiler's allocator hook, or analytic). Every stage's row says what it
// keeps and why, which is what DeepSpeed's and Megatron's single setting for
// every stage cannot show.
#pragma once
#include "trine/frontend/proxy_graph.h"
#include "trine/recompute/recompute_policy.h"

#include <cstdint>
#include <string>
#include <vector>

namespace trine {

struct StageActivationMemory {
  int64_t whole = 0;       // one microbatch kept whole: the sum of its layers' kept bytes
  int64_t kept = 0;        // one microbatch after a forward under the policy
  int64_t checkpoint = 0;  // one microbatch after F*: the stage's outputs
  int layers = 0, recomputed_layers = 0, recomputed_cores = 0;
  int peak_in_flight = 0;  // microbatches held at once under the schedule
  int64_t peak = 0;        // most activation bytes held at once between instructions
  std::string why;         // "3 of 4 layers recomputed (stage_aware, r = 0.7); 2 microbatches in flight"
};

// `layer_bytes[l]`: what layer l keeps per microbatch with grad;
// `layer_bytes_selective[l]`: the same with its attention cores recomputed,
// where measured (>= 0; else, or when empty, estimated from the proxy).
// `recompute[s]`: what stage s recomputes (checkpointed_segments()). With
// `virtual_stages` v, the stages are p·v chunks, rank r holding r, r+p, ... An
// attention core recomputed saves the bytes its ops output (the proxy's
// analytic count) and keeps the tensors leaving it.
std::vector<StageActivationMemory> predict_activation_memory(const ProxyGraph& proxy,
                                                             const std::vector<int64_t>& layer_bytes,
                                                             const std::vector<int64_t>& layer_bytes_selective,
                                                             const std::vector<std::vector<int>>& layers_of_stage,
                                                             const std::vector<StageRecompute>& recompute,
                                                             const std::string& schedule, int microbatches,
                                                             const std::string& policy_summary,
                                                             int virtual_stages = 1);

// Everything choosing a pipeline's recomputation needs.
struct PipelineRecomputeInputs {
  const ProxyGraph* proxy = nullptr;
  std::vector<int64_t> layer_bytes, layer_bytes_selective;  // as above
  std::vector<std::vector<int>> layers_of_stage;
  std::string schedule;
  int microbatches = 1;
  int virtual_stages = 1;  // layers_of_stage has pipeline ranks x this many stages
};

// What every stage recomputes under `settings` (the one place the trainer and
// `trine plan` get it from): checkpointed_segments() with the schedule's
// in-flight counts, or, for stage_aware with memory_limit_bytes, each stage's
// fewest first layers whose predicted peak fits the limit (an error names a
// stage that does not fit even recomputing every layer). The last stage keeps
// everything under schedules that say so.
std::vector<StageRecompute> recompute_for_pipeline(const RecomputeSettings& settings,
                                                   const PipelineRecomputeInputs& in);

// One row per stage: whole, kept and F* bytes per microbatch, in flight, peak, why.
std::string activation_memory_table(const std::vector<StageActivationMemory>& stages);

}  // namespace trine
