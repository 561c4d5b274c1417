// Runs a torch::jit::Graph node by node with LibTorch's operators, under the
// current autograd mode, so a run with grad enabled builds the ordinary autograd
// graph of those ops (backward then needs nothing from trine).
//
// Why not torch::jit::GraphExecutor: trine needs control per node: seeding
// random ops so that dropout masks do not depend on how the model was split or
// scheduled, releasing values after their last use, and (later) timing ops.
#pragma once
#include "trine/frontend/saved_tensors.h"

#include <torch/torch.h>
#include <torch/csrc/jit/ir/ir.h>

#include <ATen/core/ivalue.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace trine {

// How random ops (dropout, rand, bernoulli, ...) draw their numbers.
struct RngPolicy {
  enum class Mode {
    // Use the default generator as it stands: the same stream an eager run of
    // the model would consume, provided ops run in the model's order.
    Sequential,
    // Reseed the generator before every random op from (seed, microbatch, op
    // id): masks become a function of those three alone, the same for every
    // split of the graph and every schedule.
    PerOp,
  };
  Mode mode = Mode::Sequential;
  uint64_t seed = 0;
  int64_t microbatch = 0;
};

// splitmix64: a well-spread 64-bit number from any other, how seeds are
// combined (PerOp: seed, microbatch and op id; per-shard dropout: the rank).
uint64_t mix_seed(uint64_t x);

struct CheckpointPlan;
class SegmentRun;

// Whether `node` is a collective over a process group (its schema has an
// argument named "group", as trine_tp's ops do, or "group_name", as c10d's
// functional ones do): running it on one rank alone would wait for the others.
bool communicates(const torch::jit::Node* node);

// Whether running `node` draws from a random generator: LibTorch's own
// nondeterministic ops (dropout, rand, bernoulli, ...) and any registered op
// tagged nondeterministic_seeded (a custom dropout such as tensor_parallel's).
bool draws_random_numbers(const torch::jit::Node* node);

class GraphRunner {
 public:
  GraphRunner() = default;
  // op_ids[i]: a stable id of the graph's i-th node (constants included),
  // used to seed random ops under RngPolicy::PerOp. Defaults to the position.
  explicit GraphRunner(std::shared_ptr<torch::jit::Graph> graph, std::vector<int64_t> op_ids = {});

  // Inputs in graph order. Tensor inputs must have the shapes the graph was
  // traced with; a mismatch is an error naming the input and both shapes.
  // With `checkpoints` (segment_checkpoint.h) and grad enabled, each segment
  // runs as one autograd node that keeps only its inputs; `segment_runs`, if
  // given, receives one SegmentRun per segment executed. With its units, grad
  // enabled and a SavedTensorScope active whose policy wants_units(), each
  // unit runs as a UnitReplay (unit_replay.h) that tensors saved in it are
  // packed under.
  std::vector<c10::IValue> run(std::vector<c10::IValue> inputs, const RngPolicy& rng = {},
                               const CheckpointPlan* checkpoints = nullptr,
                               std::vector<c10::intrusive_ptr<SegmentRun>>* segment_runs = nullptr) const;

  // Segments from `segment_of_node` (per graph node, constants included: a
  // segment id, or -1): consecutive nodes with the same id form one segment.
  // `graph_input_copied[i]`: graph input i is updated in place (buffers), so
  // a segment reading it keeps a copy. Throws naming the node when a segment
  // would pass a list or tuple of tensors across its boundary.
  CheckpointPlan plan_checkpoints(const std::vector<int>& segment_of_node,
                                  const std::vector<bool>& graph_input_copied) const;

  const std::shared_ptr<torch::jit::Graph>& graph() const { return graph_; }
  // The op id given for graph node `position` (constants included).
  int64_t op_id(size_t position) const { return op_ids_.empty() ? static_cast<int64_t>(position) : op_ids_.at(position); }
  size_t num_nodes() const { return num_nodes_; }

 private:
  friend class SegmentRun;
  friend class UnitReplay;
  struct Step;
  void run_steps(std::vector<c10::IValue>& slots, size_t begin, size_t end, const RngPolicy& rng) const;
  void run_segment(std::vector<c10::IValue>& slots, const struct SegmentPlan& segment, const RngPolicy& rng,
                   const std::shared_ptr<std::atomic<int64_t>>& recompute_ns,
                   std::vector<c10::intrusive_ptr<SegmentRun>>* segment_runs) const;
  // Runs `unit` as a UnitReplay; `made` (slot -> site) learns its outputs.
  void run_unit(std::vector<c10::IValue>& slots, const struct SegmentPlan& unit, int index, const RngPolicy& rng,
                int64_t run, std::unordered_map<int, PackSite>& made) const;
  std::shared_ptr<torch::jit::Graph> graph_;
  std::shared_ptr<const std::vector<Step>> steps_;
  std::vector<c10::IValue> constants_;  // slot values known before running
  std::vector<int> input_slots_, output_slots_;
  std::vector<std::string> input_names_;
  std::vector<std::optional<std::vector<int64_t>>> input_shapes_;  // for sized tensors
  std::vector<bool> is_constant_;  // per slot
  std::vector<bool> written_;      // per slot: some step updates it in place
  std::vector<int64_t> op_ids_;
  size_t num_nodes_ = 0;
  size_t num_slots_ = 0;
};

}  // namespace trine
