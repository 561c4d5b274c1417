// Runs a torch::jit::Graph node by node with LibTorch's operators, under the
// current autograd mode, so a run with grad enabled builds the ordinary autograd
// graph of those ops (backward then needs nothing from trine).
//
// Why not torch::jit::GraphExecutor: trine needs control per node: seeding
// random ops so that dropout masks do not depend on how the model was split or
// scheduled, releasing values after their last use, and (later) timing ops.
#pragma once
#include <torch/torch.h>
#include <torch/csrc/jit/ir/ir.h>

#include <memory>
#include <optional>
#include <string>
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

class GraphRunner {
 public:
  GraphRunner() = default;
  // op_ids[i]: a stable id of the graph's i-th node (constants included),
  // used to seed random ops under RngPolicy::PerOp. Defaults to the position.
  explicit GraphRunner(std::shared_ptr<torch::jit::Graph> graph, std::vector<int64_t> op_ids = {});

  // Inputs in graph order. Tensor inputs must have the shapes the graph was
  // traced with; a mismatch is an error naming the input and both shapes.
  std::vector<c10::IValue> run(std::vector<c10::IValue> inputs, const RngPolicy& rng = {}) const;

  const std::shared_ptr<torch::jit::Graph>& graph() const { return graph_; }

 private:
  struct Step;
  std::shared_ptr<torch::jit::Graph> graph_;
  std::shared_ptr<const std::vector<Step>> steps_;
  std::vector<c10::IValue> constants_;  // slot values known before running
  std::vector<int> input_slots_, output_slots_;
  std::vector<std::string> input_names_;
  std::vector<std::optional<std::vector<int64_t>>> input_shapes_;  // for sized tensors
  size_t num_slots_ = 0;
};

}  // namespace trine
