// A unit of a stage graph (one layer's nodes outside checkpointed segments,
// GraphRunner::run) as a forward with grad under a SavedTensorScope ran it,
// kept so that a saved-tensor policy can make its saved tensors again after
// dropping them (docs/design.md §4b): the memory manager's "drop and
// recompute" (recompute/memory_manager.h).
//
// Contract:
//   - When the unit starts, its inputs (values made before it and read in
//     it) are kept through the active policy (keep_tensor; the site names the
//     unit that made the input and which of its outputs it is, if one did);
//     a buffer the unit updates in place (BatchNorm's statistics) is kept as
//     a copy taken before.
//   - replay() runs the unit's nodes again with grad from those inputs (each
//     unpacked, so a policy may have to bring it back first), random ops
//     drawing what they drew (RngPolicy::PerOp), and returns the tensors
//     autograd saved in the rerun, in order (the k-th is the same values,
//     shape and layout as the k-th the first run saved: PackSite::ordinal),
//     and the unit's outputs (PackSite::output). The rerun's autograd graph
//     is thrown away; nothing else changes.
//   - A unit is not replayable when the policy does not replay units
//     (SavedTensorPolicy::replays_units) or the rerun could differ or would
//     need other ranks: it draws random numbers under RngPolicy::Sequential,
//     reads a list or tuple of tensors, or calls a collective (an op with a
//     `group` or `group_name` argument); or when it updates an input
//     activation in place (keeping a copy would cost what dropping saves).
//     Its inputs are then not kept.
#pragma once
#include "trine/frontend/graph_runner.h"
#include "trine/frontend/saved_tensors.h"

#include <ATen/core/ivalue.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace trine {

struct SegmentPlan;

// What a unit's rerun makes: its saved tensors in order, and its outputs
// (per output of its plan: the tensor, or undefined for a non-tensor value).
struct UnitRemade {
  std::vector<torch::Tensor> saved, outputs;
};

class UnitReplay {
 public:
  // Keeps the inputs of `unit` (the runner's unit `index`) from `slots`, the
  // runner's values as the unit is about to run, when `replays` (else the
  // unit only names where tensors were saved); `made_by` gives the site of
  // an input slot made by an earlier unit; `run` numbers the forward.
  static std::shared_ptr<UnitReplay> start(const GraphRunner& runner, const SegmentPlan& unit, int index,
                                           const RngPolicy& rng, const std::vector<c10::IValue>& slots,
                                           const std::function<PackSite(int slot)>& made_by, int64_t run,
                                           bool replays);

  bool replayable() const { return replayable_; }
  UnitRemade replay() const;

  int index() const { return index_; }    // which unit of the stage graph
  int64_t run() const { return run_; }    // which forward (distinct per GraphRunner::run)
  double seconds() const { return seconds_; }  // how long the first run took
  void set_seconds(double s) { seconds_ = s; }
  const std::string& what() const;

 private:
  UnitReplay(const GraphRunner& runner, const SegmentPlan& unit, int index, const RngPolicy& rng, int64_t run);
  void keep_inputs(const std::vector<c10::IValue>& slots, const std::function<PackSite(int slot)>& made_by,
                   bool replays);

  const GraphRunner* runner_;
  const SegmentPlan* unit_;
  int index_;
  RngPolicy rng_;
  int64_t run_;
  bool replayable_ = false;
  double seconds_ = 0;
  std::vector<c10::IValue> other_inputs_;                    // per unit input: a non-tensor value, else None
  std::vector<std::unique_ptr<SavedTensorSlot>> kept_;       // per unit input: the tensor's slot, else null
  std::vector<bool> requires_grad_;                          // per unit input
};

}  // namespace trine
