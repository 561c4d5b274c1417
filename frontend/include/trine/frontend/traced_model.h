// The result of tracing a user's model: one torch::jit::Graph whose inputs are
// the data, the targets and every parameter and buffer (each named by its module
// path), and whose output is the loss (or the model's outputs when no loss was
// given). Shapes are concrete: the microbatch shape is fixed by the sample.
#pragma once
#include <torch/torch.h>
#include <torch/csrc/jit/ir/ir.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace trine {

enum class InputKind { Data, Target, Parameter, Buffer };
const char* to_string(InputKind kind);

struct GraphInput {
  std::string name;                  // "input0", "target0", "blocks.3.fc.weight", ...
  InputKind kind = InputKind::Data;
  torch::Tensor value;               // the model's own tensor for parameters and buffers,
                                     // the sample tensor for data and targets
  std::vector<std::string> aliases;  // other names of the same tensor (tied weights)
};

// One microbatch: the model's inputs and the loss's targets.
struct SampleBatch {
  std::vector<torch::Tensor> inputs;
  std::vector<torch::Tensor> targets;
};

// loss(model outputs, targets) -> scalar tensor.
using LossFn = std::function<torch::Tensor(const std::vector<torch::Tensor>& outputs,
                                           const std::vector<torch::Tensor>& targets)>;

struct TracedModel {
  std::shared_ptr<torch::jit::Graph> graph;
  std::vector<GraphInput> inputs;  // one per graph input, in graph order:
                                   // data, targets, parameters, buffers
  bool has_loss = false;           // graph has exactly one output, the scalar loss
  std::string description;         // what was traced, for messages
  std::vector<std::string> warnings;  // the tracer's warnings, for users to read

  int64_t count(InputKind kind) const;
  // Index of the graph input with this name or alias; -1 when there is none.
  int64_t find_input(const std::string& name) const;
};

}  // namespace trine
