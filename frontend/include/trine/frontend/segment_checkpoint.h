// Checkpointed segments of a stage graph (docs/design.md §4a): a run of
// consecutive graph nodes (one or more layers, or a sub-block) that a forward
// with grad executes without grad, keeping only the values that flow into it
// and the random policy; its backward runs it again with grad first. Random
// ops must be drawn by RngPolicy::PerOp so that the rerun draws the same
// numbers; inputs the segment updates in place (BatchNorm's statistics, in-place
// ops on an input) are copied before the forward, so the rerun sees what the
// forward saw and leaves its own updates in the copy.
//
// GraphRunner::run takes a CheckpointPlan and hands back one SegmentRun per
// segment it executed; SegmentRun::recompute() reruns a segment ahead of its
// backward (the schedule's R), otherwise the backward does it.
#pragma once
#include "trine/frontend/graph_runner.h"
#include "trine/frontend/saved_tensors.h"

#include <ATen/core/ivalue.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

namespace trine {

struct SegmentPlan {
  size_t begin = 0, end = 0;   // the runner's steps [begin, end)
  std::vector<int> inputs;     // slots defined before the segment and read in it
  std::vector<bool> copied;    // per input: updated in place in the segment (copied before the forward)
  std::vector<bool> buffer;    // per input: one of the graph inputs flagged as copied (the stage's buffers)
  std::vector<int> outputs;    // slots defined in it and read after it (or graph outputs)
  bool random = false;         // some step draws random numbers
  bool communicates = false;   // some step is a collective (graph_runner.h: communicates)
  std::string what;            // for messages: "segment 2 (steps 10..24)"
};

struct CheckpointPlan {
  std::vector<SegmentPlan> segments;  // in step order, disjoint
  // Runs of steps outside the segments (one per layer) that a forward with
  // grad under a SavedTensorScope runs as units (unit_replay.h), so that a
  // memory manager can drop their saved tensors and have them made again.
  std::vector<SegmentPlan> units;
  // Nanoseconds spent rerunning these segments so far (every SegmentRun adds).
  std::shared_ptr<std::atomic<int64_t>> recompute_ns = std::make_shared<std::atomic<int64_t>>(0);
};

class SegmentRun : public torch::CustomClassHolder {
 public:
  // `recompute_ns` (may be null) accumulates the time recompute() takes.
  SegmentRun(const GraphRunner& runner, const SegmentPlan& plan, const RngPolicy& rng,
             std::shared_ptr<std::atomic<int64_t>> recompute_ns = nullptr);
  // Runs the segment again with grad now, so that its backward needs no
  // recompute. Idempotent until the backward consumes it.
  void recompute();
  bool recomputed() const { return recomputed_; }

  // Used by the autograd node (segment_checkpoint.cpp).
  std::vector<torch::Tensor> forward(const std::vector<torch::Tensor>& tensor_inputs);
  std::vector<torch::Tensor> backward(const std::vector<torch::Tensor>& grad_outputs);
  const std::vector<c10::IValue>& other_outputs() const { return other_outputs_; }
  void set_other_inputs(std::vector<c10::IValue> values, std::vector<bool> is_tensor) {
    other_inputs_ = std::move(values);
    is_tensor_input_ = std::move(is_tensor);
  }

 private:
  // Slots for a run of the segment: the runner's constants plus the inputs.
  std::vector<c10::IValue> slots_with(const std::vector<torch::Tensor>& tensor_inputs) const;

  const GraphRunner* runner_;
  const SegmentPlan* plan_;
  RngPolicy rng_;
  std::shared_ptr<std::atomic<int64_t>> recompute_ns_;
  std::vector<c10::IValue> other_inputs_;   // per plan input: a non-tensor value, else None
  std::vector<bool> is_tensor_input_;       // per plan input
  // Per tensor input: what the rerun starts from, kept through the active
  // saved-tensor policy (keep_tensor), so a memory manager counts and may swap it.
  std::vector<std::unique_ptr<SavedTensorSlot>> kept_;
  std::vector<bool> saved_requires_grad_;
  std::vector<c10::IValue> other_outputs_;  // per plan output: a non-tensor value, else None
  // After recompute(): the rerun's leaves (per tensor input) and tensor outputs.
  std::vector<torch::Tensor> leaves_, outputs_;
  bool recomputed_ = false;
};

}  // namespace trine
