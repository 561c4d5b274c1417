// The layer profiler: measures what every layer of a traced model costs on the
// current device (docs/design.md §5).
//
// The model is cut into one stage per layer and trained on the sample batch
// through SequentialStagedModel, so every layer runs exactly the ops (and the
// autograd backward) it runs inside a pipeline stage. After `warmup` untimed
// steps, `repeats` timed steps give per layer the median forward and the median
// backward seconds. Activation memory is measured, not estimated: the bytes of
// tensors a layer's forward created that autograd still holds when the whole
// forward is done (views and parameters excluded), i.e. what one microbatch in
// flight costs that layer's stage.
//
// Threads: `threads` > 0 sets LibTorch's intra-op threads for the measurement
// (and restores the previous count), so a profile taken for a rank with one
// thread measures one thread.
#pragma once
#include "trine/frontend/graph_runner.h"
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/traced_model.h"
#include "trine/partitioner/cost_model.h"

namespace trine {

struct ProfileOptions {
  int warmup = 2;
  int repeats = 5;
  int threads = 0;                    // 0: leave LibTorch's setting alone
  double optimizer_state_factor = 2;  // see CostModel
  RngPolicy rng{RngPolicy::Mode::PerOp, 0, 0};
};

// The model must have been traced with a loss (the backward is timed).
CostModel profile_layers(const TracedModel& model, const ProxyGraph& proxy, const SampleBatch& batch,
                         const ProfileOptions& options = {});

}  // namespace trine
