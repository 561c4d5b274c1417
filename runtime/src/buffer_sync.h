// Keeps the buffers a stage updates in place (BatchNorm's running statistics
// and num_batches_tracked) equal across data-parallel replicas, and equal to
// what one process gets by running the step's microbatches one after another
// (replica 0's first, then replica 1's, ...).
//
// Each replica starts a step from the same value r0 and updates it once per
// microbatch, in its own order. For an update r <- A r + x (BatchNorm with
// momentum a: A = 1 - a; a counter: A = 1) with A the same for every
// microbatch, m microbatches on replica d leave r_d = A^m r0 + D_d, and the
// sequential run over all dp replicas gives
//   A^(dp m) r0 + sum_d A^(m (dp-1-d)) D_d,
// a weighted sum of the replicas' values and r0: one all-reduce per dtype.
// A buffer updated any other way is taken from replica 0, as DDP does, and
// listed by `broadcast_buffers()`.
#pragma once
#include "trine/frontend/stage_split.h"
#include "trine/runtime/communicator.h"

#include <map>
#include <string>
#include <vector>

namespace trine {

class BufferSync {
 public:
  // `held`: the stage's tensors by ProxyGraph parameter id.
  BufferSync(const StageProgram& stage, const ProxyGraph& proxy, const std::map<int, torch::Tensor>& held,
             Communicator* dp, int microbatches);

  // Before the step's first forward: remember r0.
  void begin_step();
  // After the step's last forward, on every replica.
  void finish_step();
  // A skipped step: back to r0 (the same on every replica).
  void undo_step();

  std::vector<std::string> broadcast_buffers() const;

 private:
  struct Updated {
    std::string name;
    torch::Tensor live;  // the stage's copy, updated in place by its graph
    torch::Tensor start; // r0
    double factor = 0;   // A per microbatch; NaN: unknown (taken from replica 0)
  };
  std::vector<Updated> updated_;
  Communicator* dp_;
  int microbatches_;
};

}  // namespace trine
