// The layout planner (`"parallel": "auto"`, `trine plan --world N`;
// docs/design.md §6a): every dp x pp x tp that fills the world, every
// microbatch count, schedule and recomputation policy that suits it, ranked
// by the simulated step time of the same global batch.
//
// For each candidate, from profiles of the model's layers (partitioner/
// profiler.h) taken at one or two microbatch sizes: a layer's time at the
// candidate's rows is the line through the two (small microbatches cost
// more per row: per-op overheads do not shrink with them), or proportional
// to the rows with one; activation bytes are proportional to the rows:
//   - the stages are cut by the `dp` method (least slowest stage over
//     contiguous splits), pp x v of them;
//   - what each stage recomputes is recompute_for_pipeline's answer, and its
//     memory is parameters, gradients and optimizer state plus the
//     activation peak the memory model predicts under the schedule, per tp
//     rank divided by tp (a candidate over `memory_per_device` is kept, marked
//     as not fitting, and ranked after every one that fits);
//   - the step is simulated on the machine description (simulate_layout):
//     compute per tp rank divided by tp plus the tp all-reduces the sharding
//     analysis finds, transfers, the data-parallel all-reduce, the optimizer.
#pragma once
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/traced_model.h"
#include "trine/partitioner/cost_model.h"
#include "trine/runtime/step_prediction.h"

#include <string>
#include <vector>

namespace trine {

struct PlannerOptions {
  int world = 1;
  int64_t global_batch = 1;       // rows per step, all replicas
  int64_t memory_per_device = 0;  // bytes; 0: no limit
  double optimizer_state_factor = 2;
  double recompute_ratio = 0.5;   // stage_aware candidates' r0
  int max_microbatches = 64;
  MachineDescription machine = MachineDescription::this_host();
};

struct LayoutCandidate {
  Layout layout;
  RecomputeSettings recompute;
  double step_s = 0;
  double bubble = 0;
  double compute_s = 0;     // per rank: forward and backward
  double recompute_s = 0;   // per rank
  double tp_comm_s = 0;     // per rank: tensor-parallel all-reduces
  int64_t memory_bytes = 0; // the fullest device's estimate
  bool fits = true;
  std::string note;         // why it was skipped or does not fit ("" when it fits)
  double samples_per_s(int64_t global_batch) const { return step_s > 0 ? global_batch / step_s : 0; }
  std::string describe() const;  // "dp 2 x pp 2, m 4, 1f1b, recompute none"
};

// Ranked, fastest fitting first. Throws when no candidate can run at all
// (naming why the layouts were refused).
// Layer costs measured at a microbatch of `rows` rows.
struct LayerProfile {
  int64_t rows = 1;
  CostModel costs;
};
// The layer costs at `rows`, from one or two profiles (see above).
CostModel costs_at_rows(const std::vector<LayerProfile>& profiles, double rows);

std::vector<LayoutCandidate> plan_layouts(const TracedModel& model, const ProxyGraph& proxy,
                                          const std::vector<LayerProfile>& profiles, const PlannerOptions& options);

// The top `rows` candidates: step time, samples/s, memory, and against the
// best, the reason each loses (the largest of its extra bubble, recompute,
// tp all-reduce or compute time per rank, or its memory).
std::string layout_table(const std::vector<LayoutCandidate>& ranked, int64_t global_batch, int rows);

}  // namespace trine
