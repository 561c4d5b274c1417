// One pipeline stage's computation on one microbatch: the single place where a
// stage program meets autograd (docs/design.md §5). Every way of running stages
// (SequentialStagedModel in one process, the runtime's PipelineExecutor on one
// rank per stage, and later recomputation, tensor parallelism and swapping)
// runs a stage through this class, so they cannot drift apart.
//
// Contract:
//   - The stage holds its own copies of its parameters and buffers, made from
//     the traced model's tensors when it is built; parameter gradients
//     accumulate into those copies.
//   - forward() takes the activations this stage receives as autograd leaves
//     (whoever moves them between stages detaches them), slices this
//     microbatch's data and targets, and runs the stage graph with grad on.
//   - backward() seeds the loss output (if this stage computes it) with a
//     constant, every other output with the gradient its readers sent back,
//     and returns the gradients of the received activations.
//   - It knows nothing of ranks, schedules or communication.
#pragma once
#include "trine/frontend/attention_cores.h"
#include "trine/frontend/graph_runner.h"
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/saved_tensors.h"
#include "trine/frontend/segment_checkpoint.h"
#include "trine/frontend/stage_split.h"
#include "trine/frontend/traced_model.h"

#include <map>
#include <memory>
#include <optional>
#include <vector>

namespace trine {

// One microbatch on one stage between its forward and its backward.
struct StageActivations {
  std::vector<torch::Tensor> inputs;   // per stage input: the received activation (a leaf), else undefined
  std::vector<torch::Tensor> outputs;  // per stage output, with its autograd history (after a
                                       // forward that kept nothing: its values only, until recompute)
  // A forward that kept only its inputs: the graph inputs and random policy to
  // run it again with grad before the backward.
  // The stage's buffers (tensors it holds that need no gradient) appear
  // there as copies taken before the forward: the graph may update buffers in
  // place (BatchNorm's statistics), and the rerun must see what the forward
  // saw and leave its own updates in the copies.
  bool recompute_pending = false;
  std::vector<c10::IValue> graph_inputs;
  RngPolicy rng;
  // A forward with grad whose checkpointed segments kept only their inputs:
  // one run per segment, recomputed by recompute() or by the backward.
  std::vector<c10::intrusive_ptr<SegmentRun>> segments;
  // With sub-microbatches (split_microbatches): each part's own activations;
  // `outputs` then holds the parts' outputs joined, without autograd history.
  std::vector<StageActivations> parts;
};

// Which rows of a batch one forward reads: microbatch `index` of `count`
// equal slices along dim 0 (count 1: the batch as it is).
struct MicrobatchSlice {
  int index = 0;
  int count = 1;
};

class StageExecution {
 public:
  // `program` must outlive this object. Parameter and buffer copies go to
  // `device`, or stay where the model's tensors are when it is not given.
  StageExecution(const StageProgram& program, const TracedModel& model, const ProxyGraph& proxy,
                 std::optional<c10::Device> device = std::nullopt);

  // Forward of one microbatch. `received` has one entry per stage input: the
  // activation for each Activation input (required), undefined for the rest.
  // Data and targets are `slice` of `batch`, moved to the stage's device.
  // With `keep_graph` false the forward runs without grad and keeps only its
  // inputs (recomputation: the stage's intermediate activations are freed at
  // once); its outputs carry the values, and require grad where the graph's
  // would, so that readers differentiate them as usual. That needs random ops
  // drawn by RngPolicy::PerOp, which draws the same numbers when run again.
  StageActivations forward(std::vector<torch::Tensor> received, const SampleBatch& batch, MicrobatchSlice slice,
                           const RngPolicy& rng, bool keep_graph = true) const;

  // Layers whose activations a forward with grad does not keep: each inner
  // list is one checkpointed segment (its layers' ops run as one unit, kept
  // only as inputs and recomputed before the backward). Empty: keep all.
  // Needs RngPolicy::PerOp when a segment has random ops.
  // With `attention_cores`, the attention core of every layer not already
  // in a segment is a segment of its own too (attention_cores.h: selective
  // recomputation, which drops the s²-sized tensors only).
  void checkpoint_layers(const std::vector<std::vector<int>>& segments, bool attention_cores = false);
  const std::vector<std::vector<int>>& checkpointed_layers() const { return checkpointed_layers_; }

  // Runs a forward that kept nothing again, with grad, from its kept inputs,
  // so that its backward can run (the outputs are the same values); after a
  // forward with checkpointed segments, reruns those (only what was dropped).
  // Nothing to do after a forward that kept everything. The backward
  // recomputes whatever is still pending by itself.
  void recompute(StageActivations& activations) const;

  // Backward of one microbatch, consuming its activations. The loss output is
  // seeded with `loss_seed` (1/m for a mean over m microbatches); output o with
  // `output_grads[o]` where present (outputs nobody differentiates are not
  // seeded). Returns, for every Activation input whose leaf requires grad, the
  // gradient that reached it, or zeros of its shape when none did.
  std::map<int, torch::Tensor> backward(StageActivations&& activations, const std::map<int, torch::Tensor>& output_grads,
                                        double loss_seed) const;

  // Runs every microbatch as parts.size() equal sub-microbatches (rows of
  // the data, and blocks of each received activation along its batch
  // dimension), part h through `parts[h]`: this stage cut from the model
  // traced at 1/parts.size() of the rows and rewritten for part h
  // (tensor_parallel/sub_microbatches.h). The parts share this stage's
  // parameters and run on threads of their own taking turns (turns.h): where
  // one waits on a collective, the next computes. Outputs are the parts'
  // joined along the batch dimension, the loss their mean (parts combine as
  // microbatches do). Throws, naming the value, when a received activation
  // or an output other than the loss does not carry the batch (its shape
  // does not shrink by the parts along exactly one dimension). `parts` must
  // outlive this object.
  void split_microbatches(const std::vector<const StageProgram*>& parts);
  // Every tensor autograd saves while this stage runs (forward, recompute,
  // backward, its parts' included) goes to `policy` (saved_tensors.h), which
  // must outlive every microbatch run under it; null: saved as usual.
  void set_saved_tensor_policy(SavedTensorPolicy* policy);

  // Parts per microbatch: 1 unless split_microbatches.
  int sub_microbatches() const { return parts_.empty() ? 1 : static_cast<int>(parts_.size()); }

  // Seconds spent recomputing so far (whole-stage reruns and checkpointed
  // segments, wherever they ran: an R, or inside a backward).
  double recompute_seconds() const;

  // The loss among a forward's outputs; undefined on stages that do not compute it.
  torch::Tensor loss(const StageActivations& activations) const;

  const StageProgram& program() const { return *program_; }
  // Parameter and buffer copies held by this stage: ProxyGraph parameter id -> tensor.
  const std::map<int, torch::Tensor>& parameters() const { return held_; }

 private:
  // A part of `whole` (split_microbatches): its program, `whole`'s parameters.
  StageExecution(const StageProgram& part, const StageExecution& whole);
  void read_outputs();  // loss_output_ and output_requires_grad_ from the program
  // checkpoints_: the segments (segment_of_node, per graph node: a segment id
  // or -1) and the units (each layer's nodes outside them).
  void plan_segments_and_units(const std::vector<int>& segment_of_node);
  StageActivations forward_parts(std::vector<torch::Tensor> received, const SampleBatch& batch,
                                 MicrobatchSlice slice, const RngPolicy& rng, bool keep_graph) const;
  std::map<int, torch::Tensor> backward_parts(StageActivations&& activations,
                                              const std::map<int, torch::Tensor>& output_grads,
                                              double loss_seed) const;
  torch::Tensor batch_tensor(const SampleBatch& batch, const StageInput& input, MicrobatchSlice slice) const;

  const StageProgram* program_;
  std::map<int, torch::Tensor> held_;
  std::optional<c10::Device> device_;
  int loss_output_ = -1;  // position of the model's output 0 among the stage outputs
  std::vector<bool> output_requires_grad_;  // per output: whether the traced graph's does
  std::vector<int> layer_of_op_;            // ProxyGraph op id -> layer
  std::vector<AttentionCore> attention_cores_;  // of the whole model
  std::vector<std::vector<int>> checkpointed_layers_;
  CheckpointPlan checkpoints_;
  bool checkpoints_random_ = false;  // some checkpointed segment draws random numbers (from checkpoints_)
  bool checkpoint_cores_ = false;    // checkpoint_layers(..., attention_cores)
  SavedTensorPolicy* saved_policy_ = nullptr;
  std::vector<std::unique_ptr<StageExecution>> parts_;  // split_microbatches
  std::vector<int> input_batch_dim_, output_batch_dim_;  // per stage input/output; -1: not split (the loss)
};

}  // namespace trine
