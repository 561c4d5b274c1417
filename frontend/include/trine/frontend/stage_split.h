// Cutting a traced model into pipeline stages (docs/design.md §3 and §5).
//
// Given an assignment of every layer to a stage that respects data flow (a
// layer's stage is never before the stage of a layer it reads from), builds one
// executable subgraph per stage:
//   - its inputs are the activations it receives (each straight from the stage
//     that produces it, also when that stage is not the previous one), the data
//     and targets it reads, and the parameters and buffers it holds;
//   - its outputs are the activations later stages need, and on the last stage
//     the model's outputs (the loss);
//   - constants and parameter-only ops (a weight transpose, a position arange)
//     are cloned into every stage that uses them instead of being sent;
//   - a parameter read on two stages (tied weights) is an input of both.
#pragma once
#include "trine/frontend/graph_runner.h"
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/traced_model.h"

#include <memory>
#include <unordered_map>
#include <vector>

namespace trine {

struct StageInput {
  enum class Kind { Activation, Data, Target, Parameter };
  Kind kind = Kind::Activation;
  int value = -1;       // ProxyGraph value id
  int from_stage = -1;  // Activation: the producing stage
  int index = -1;       // Data/Target: position in the batch; Parameter: ProxyGraph parameter id
};

struct StageOutput {
  int value = -1;              // ProxyGraph value id
  std::vector<int> to_stages;  // later stages that read it
  int model_output = -1;       // position among the model's outputs, or -1
};

struct StageProgram {
  int stage = 0;
  std::vector<int> layers;
  std::vector<int> params;  // ProxyGraph parameter ids held by this stage
  std::shared_ptr<torch::jit::Graph> graph;
  std::vector<StageInput> inputs;    // graph inputs, in order
  std::vector<StageOutput> outputs;  // graph outputs, in order
  // Each value of `graph` -> the traced model's value it copies (constants
  // included), for passes that rewrite a stage from what is known of the
  // whole model (tensor_parallel/).
  std::unordered_map<const torch::jit::Value*, const torch::jit::Value*> source;
  GraphRunner runner;
};

// Throws, naming the offending layer or stage, unless `stage_of_layer` gives
// every layer a stage in [0, k), uses every stage, and lets data flow only to
// the same or later stages. Returns k.
int check_stage_assignment(const ProxyGraph& proxy, const std::vector<int>& stage_of_layer);

std::vector<StageProgram> split_into_stages(const TracedModel& model, const ProxyGraph& proxy,
                                            const std::vector<int>& stage_of_layer);

// Where the batch runs in a value of a stage: the dimension along which
// `whole` (traced at a microbatch's rows) is `parts` times `part` (the same
// value traced at 1/parts of them), or -1 when both have one shape (the value
// does not depend on the rows). Throws, naming `what`, when neither holds.
int batch_dimension(const torch::jit::Value* whole, const torch::jit::Value* part, int parts, const std::string& what);

// The batch dimension of every value crossing into and out of a stage, for
// running it in parts (StageExecution::split_microbatches): `whole` cut from
// the model traced at a microbatch's rows, `part` from it traced at 1/parts
// of them. Per received activation and per output; -1 for other inputs and
// for the loss. Throws, naming the value, when one does not carry the batch.
struct CrossingBatchDimensions {
  std::vector<int> inputs, outputs;
};
CrossingBatchDimensions crossing_batch_dimensions(const StageProgram& whole, const StageProgram& part, int parts);

}  // namespace trine
