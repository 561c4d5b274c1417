#include "trine/frontend/stage_execution.h"

#include "trine/frontend/turns.h"

#include <algorithm>
#include <chrono>

namespace trine {

StageExecution::StageExecution(const StageProgram& program, const TracedModel& model, const ProxyGraph& proxy,
                               std::optional<c10::Device> device)
    : program_(&program), device_(device) {
  torch::NoGradGuard no_grad;
  for (int p : program.params) {
    const torch::Tensor& original = model.inputs.at(proxy.params[p].value).value;
    const torch::Tensor placed = device_ ? original.detach().to(*device_) : original.detach();
    held_[p] = placed.clone().requires_grad_(original.requires_grad());
  }
  for (const ProxyOp& op : proxy.ops) layer_of_op_.push_back(op.layer);
  attention_cores_ = attention_cores(proxy);
  read_outputs();
  plan_segments_and_units(std::vector<int>(program.runner.num_nodes(), -1));
}

StageExecution::StageExecution(const StageProgram& part, const StageExecution& whole)
    : program_(&part), held_(whole.held_), device_(whole.device_), layer_of_op_(whole.layer_of_op_),
      attention_cores_(whole.attention_cores_) {
  read_outputs();
  plan_segments_and_units(std::vector<int>(part.runner.num_nodes(), -1));
}

void StageExecution::read_outputs() {
  const StageProgram& program = *program_;
  for (size_t o = 0; o < program.outputs.size(); ++o)
    if (program.outputs[o].model_output == 0) loss_output_ = static_cast<int>(o);
  // The trace ran with autograd on: its value types record which outputs require grad.
  for (const torch::jit::Value* out : program.graph->outputs()) {
    const auto type = out->type()->cast<c10::TensorType>();
    const bool floating = type && type->scalarType() && c10::isFloatingType(*type->scalarType());
    output_requires_grad_.push_back(floating && type->requiresGrad().value_or(true));
  }
}

void StageExecution::split_microbatches(const std::vector<const StageProgram*>& parts) {
  const StageProgram& me = *program_;
  const int n = static_cast<int>(parts.size());
  TORCH_INTERNAL_ASSERT(n >= 2, "split_microbatches into ", n, " parts");
  const CrossingBatchDimensions dims = crossing_batch_dimensions(me, *parts[0], n);
  input_batch_dim_ = dims.inputs;
  output_batch_dim_ = dims.outputs;
  parts_.clear();
  for (const StageProgram* p : parts) {
    parts_.push_back(std::unique_ptr<StageExecution>(new StageExecution(*p, *this)));
    parts_.back()->set_saved_tensor_policy(saved_policy_);
    if (!checkpointed_layers_.empty() || checkpoint_cores_)
      parts_.back()->checkpoint_layers(checkpointed_layers_, checkpoint_cores_);
  }
}

void StageExecution::set_saved_tensor_policy(SavedTensorPolicy* policy) {
  saved_policy_ = policy;
  for (auto& part : parts_) part->set_saved_tensor_policy(policy);
}

double StageExecution::recompute_seconds() const {
  double s = *checkpoints_.recompute_ns * 1e-9;
  for (const auto& p : parts_) s += p->recompute_seconds();
  return s;
}

torch::Tensor StageExecution::batch_tensor(const SampleBatch& batch, const StageInput& input,
                                           MicrobatchSlice slice) const {
  const bool is_data = input.kind == StageInput::Kind::Data;
  const char* kind = is_data ? "input" : "target";
  const std::vector<torch::Tensor>& tensors = is_data ? batch.inputs : batch.targets;
  TORCH_CHECK(input.index < static_cast<int>(tensors.size()), "the batch has ", tensors.size(), " ", kind,
              "s; stage ", program_->stage, " reads ", kind, " ", input.index);
  torch::Tensor t = tensors[input.index];
  if (slice.count != 1) {
    TORCH_CHECK(t.dim() >= 1 && t.size(0) % slice.count == 0, kind, " ", input.index, " has ",
                t.dim() ? t.size(0) : 0, " rows, which do not split into ", slice.count, " equal microbatches");
    const int64_t rows = t.size(0) / slice.count;
    t = t.narrow(0, slice.index * rows, rows);
  }
  return device_ ? t.to(*device_) : t;
}

StageActivations StageExecution::forward(std::vector<torch::Tensor> received, const SampleBatch& batch,
                                         MicrobatchSlice slice, const RngPolicy& rng, bool keep_graph) const {
  const StageProgram& me = *program_;
  TORCH_INTERNAL_ASSERT(received.size() == me.inputs.size(), "stage ", me.stage, " got ", received.size(),
                        " received inputs for ", me.inputs.size(), " graph inputs");
  if (!parts_.empty()) return forward_parts(std::move(received), batch, slice, rng, keep_graph);
  std::optional<SavedTensorScope> saved;
  if (saved_policy_) saved.emplace(*saved_policy_);
  std::vector<c10::IValue> in;
  in.reserve(me.inputs.size());
  for (size_t i = 0; i < me.inputs.size(); ++i) {
    const StageInput& si = me.inputs[i];
    switch (si.kind) {
      case StageInput::Kind::Activation:
        TORCH_INTERNAL_ASSERT(received[i].defined(), "stage ", me.stage, " forwards microbatch ", rng.microbatch,
                              " without its input from stage ", si.from_stage);
        in.emplace_back(received[i]);
        break;
      case StageInput::Kind::Data:
      case StageInput::Kind::Target: in.emplace_back(batch_tensor(batch, si, slice)); break;
      case StageInput::Kind::Parameter: in.emplace_back(held_.at(si.index)); break;
    }
  }
  StageActivations out;
  out.inputs = std::move(received);
  if (keep_graph) {
    TORCH_CHECK(!checkpoints_random_ || rng.mode == RngPolicy::Mode::PerOp, "stage ", me.stage, ": recomputing "
                "layers with random ops needs them drawn by RngPolicy::PerOp (the same numbers when run again)");
    auto result = me.runner.run(std::move(in), rng, &checkpoints_, &out.segments);
    out.outputs.reserve(result.size());
    for (auto& r : result) out.outputs.push_back(r.toTensor());
    return out;
  }
  TORCH_CHECK(rng.mode == RngPolicy::Mode::PerOp, "stage ", me.stage, ": recomputation needs random ops drawn by "
              "RngPolicy::PerOp (the same numbers when the forward runs again)");
  std::vector<c10::IValue> result;
  {
    torch::NoGradGuard no_grad;
    out.graph_inputs = in;
    for (size_t i = 0; i < me.inputs.size(); ++i)
      if (me.inputs[i].kind == StageInput::Kind::Parameter && !held_.at(me.inputs[i].index).requires_grad())
        out.graph_inputs[i] = held_.at(me.inputs[i].index).clone();
    result = me.runner.run(std::move(in), rng);
  }
  out.outputs.reserve(result.size());
  for (size_t o = 0; o < result.size(); ++o) {
    torch::Tensor t = result[o].toTensor();
    out.outputs.push_back(output_requires_grad_[o] ? t.detach().requires_grad_(true) : t);
  }
  out.recompute_pending = true;
  out.rng = rng;
  return out;
}

StageActivations StageExecution::forward_parts(std::vector<torch::Tensor> received, const SampleBatch& batch,
                                               MicrobatchSlice slice, const RngPolicy& rng, bool keep_graph) const {
  const int n = sub_microbatches();
  StageActivations out;
  out.parts.resize(static_cast<size_t>(n));
  run_taking_turns(n, [&](int h) {
    std::vector<torch::Tensor> mine(received.size());
    for (size_t i = 0; i < received.size(); ++i) {
      const int d = input_batch_dim_[i];
      if (d < 0) continue;
      TORCH_INTERNAL_ASSERT(received[i].defined(), "stage ", program_->stage, " forwards microbatch ", rng.microbatch,
                            " without its input ", i);
      const int64_t rows = received[i].size(d) / n;
      mine[i] = received[i].detach().narrow(d, h * rows, rows).requires_grad_(received[i].requires_grad());
    }
    out.parts[static_cast<size_t>(h)] =
        parts_[static_cast<size_t>(h)]->forward(std::move(mine), batch, {slice.index * n + h, slice.count * n}, rng,
                                                keep_graph);
  });
  out.inputs = std::move(received);
  for (size_t o = 0; o < output_batch_dim_.size(); ++o) {
    std::vector<torch::Tensor> pieces;
    for (const StageActivations& part : out.parts) pieces.push_back(part.outputs[o].detach());
    // The loss of a microbatch is its parts' mean, as a step's is its microbatches'.
    torch::Tensor joined = output_batch_dim_[o] < 0 ? torch::stack(pieces).sum(0) / n
                                                    : torch::cat(pieces, output_batch_dim_[o]);
    out.outputs.push_back(output_requires_grad_[o] ? joined.requires_grad_(true) : joined);
  }
  return out;
}

std::map<int, torch::Tensor> StageExecution::backward_parts(StageActivations&& activations,
                                                            const std::map<int, torch::Tensor>& output_grads,
                                                            double loss_seed) const {
  StageActivations a = std::move(activations);
  const int n = sub_microbatches();
  std::vector<std::map<int, torch::Tensor>> grads(static_cast<size_t>(n));
  run_taking_turns(n, [&](int h) {
    std::map<int, torch::Tensor> mine;
    for (const auto& [o, g] : output_grads) {
      const int d = output_batch_dim_.at(static_cast<size_t>(o));
      TORCH_INTERNAL_ASSERT(d >= 0, "a gradient for the loss output of stage ", program_->stage);
      const int64_t rows = g.size(d) / n;
      mine[o] = g.narrow(d, h * rows, rows);
    }
    grads[static_cast<size_t>(h)] =
        parts_[static_cast<size_t>(h)]->backward(std::move(a.parts[static_cast<size_t>(h)]), mine, loss_seed / n);
  });
  std::map<int, torch::Tensor> input_grads;
  for (const auto& first_part : grads[0]) {
    const int i = first_part.first;
    std::vector<torch::Tensor> pieces;
    for (const auto& g : grads) pieces.push_back(g.at(i));
    input_grads[i] = torch::cat(pieces, input_batch_dim_.at(static_cast<size_t>(i)));
  }
  return input_grads;
}

void StageExecution::checkpoint_layers(const std::vector<std::vector<int>>& segments, bool attention_cores) {
  const StageProgram& me = *program_;
  std::map<int, int> segment_of_layer;
  for (size_t k = 0; k < segments.size(); ++k)
    for (int layer : segments[k]) {
      TORCH_CHECK(std::count(me.layers.begin(), me.layers.end(), layer), "stage ", me.stage,
                  " cannot checkpoint layer ", layer, ": it is not one of its layers");
      TORCH_CHECK(segment_of_layer.emplace(layer, static_cast<int>(k)).second, "layer ", layer,
                  " is in two checkpointed segments");
    }
  // Attention cores of this stage's layers not checkpointed whole: op id -> segment.
  std::map<int64_t, int> segment_of_op;
  if (attention_cores)
    for (size_t c = 0; c < attention_cores_.size(); ++c) {
      const AttentionCore& core = attention_cores_[c];
      if (!std::count(me.layers.begin(), me.layers.end(), core.layer) || segment_of_layer.count(core.layer)) continue;
      for (int op : core.ops) segment_of_op[op] = static_cast<int>(segments.size() + c);
    }
  const GraphRunner& runner = me.runner;
  std::vector<int> segment_of_node(runner.num_nodes(), -1);
  for (size_t position = 0; position < runner.num_nodes(); ++position) {
    const int64_t op = runner.op_id(position);
    if (op < 0) continue;
    auto it = segment_of_layer.find(layer_of_op_.at(op));
    auto core = segment_of_op.find(op);
    if (it != segment_of_layer.end() || core != segment_of_op.end())
      segment_of_node[position] = it != segment_of_layer.end() ? it->second : core->second;
  }
  // Nodes cloned into the middle of a core (ops on parameters or buffers alone,
  // such as a causal mask) join it rather than split it in two.
  std::map<int, std::pair<size_t, size_t>> span;  // core segment -> first, last node
  for (size_t n = 0; n < segment_of_node.size(); ++n)
    if (segment_of_node[n] >= static_cast<int>(segments.size())) {
      auto [it, fresh] = span.emplace(segment_of_node[n], std::make_pair(n, n));
      if (!fresh) it->second.second = n;
    }
  for (const auto& [id, range] : span)
    for (size_t n = range.first; n <= range.second; ++n)
      if (segment_of_node[n] < 0) segment_of_node[n] = id;
  plan_segments_and_units(segment_of_node);
  checkpointed_layers_ = segments;
  checkpoint_cores_ = attention_cores;
  for (auto& part : parts_) part->checkpoint_layers(segments, attention_cores);
}

void StageExecution::plan_segments_and_units(const std::vector<int>& segment_of_node) {
  const StageProgram& me = *program_;
  const GraphRunner& runner = me.runner;
  std::vector<bool> copied(me.inputs.size(), false);
  for (size_t i = 0; i < me.inputs.size(); ++i)
    copied[i] = me.inputs[i].kind == StageInput::Kind::Parameter && !held_.at(me.inputs[i].index).requires_grad();
  auto recompute_ns = checkpoints_.recompute_ns;  // the running total survives a new plan
  checkpoints_ = runner.plan_checkpoints(segment_of_node, copied);
  checkpoints_.recompute_ns = recompute_ns;
  checkpoints_random_ = std::any_of(checkpoints_.segments.begin(), checkpoints_.segments.end(),
                                    [](const SegmentPlan& segment) { return segment.random; });
  // Units: each layer's nodes outside the segments; nodes of no layer (added
  // by a rewrite) go with the layer before them, and collectives with none,
  // so that a unit can run again on this rank alone.
  std::vector<int> unit_of_node(runner.num_nodes(), -1);
  int layer = -1;
  size_t position = 0;
  for (const torch::jit::Node* node : me.graph->nodes()) {
    const int64_t op = runner.op_id(position);
    if (op >= 0) layer = layer_of_op_.at(op);
    if (segment_of_node[position] < 0 && !communicates(node)) unit_of_node[position] = layer;
    ++position;
  }
  checkpoints_.units = runner.plan_checkpoints(unit_of_node, copied).segments;
}

void StageExecution::recompute(StageActivations& activations) const {
  if (!parts_.empty()) {
    const bool dropped = std::any_of(activations.parts.begin(), activations.parts.end(), [](const StageActivations& p) {
      return p.recompute_pending || !p.segments.empty();
    });
    if (!dropped) return;  // nothing was dropped: no threads to start
    run_taking_turns(sub_microbatches(), [&](int h) {
      parts_[static_cast<size_t>(h)]->recompute(activations.parts[static_cast<size_t>(h)]);
    });
    return;
  }
  std::optional<SavedTensorScope> saved;
  if (saved_policy_) saved.emplace(*saved_policy_);
  for (auto& segment : activations.segments) segment->recompute();
  if (!activations.recompute_pending) return;
  const auto t0 = std::chrono::steady_clock::now();
  auto result = program_->runner.run(std::move(activations.graph_inputs), activations.rng);
  *checkpoints_.recompute_ns +=
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  activations.graph_inputs.clear();
  activations.recompute_pending = false;
  for (size_t o = 0; o < result.size(); ++o) activations.outputs[o] = result[o].toTensor();
}

std::map<int, torch::Tensor> StageExecution::backward(StageActivations&& activations,
                                                      const std::map<int, torch::Tensor>& output_grads,
                                                      double loss_seed) const {
  if (!parts_.empty()) return backward_parts(std::move(activations), output_grads, loss_seed);
  std::optional<SavedTensorScope> saved;  // segments rerun inside the backward save tensors too
  if (saved_policy_) saved.emplace(*saved_policy_);
  const StageProgram& me = *program_;
  StageActivations a = std::move(activations);
  recompute(a);
  std::vector<torch::Tensor> roots, seeds;
  for (size_t o = 0; o < a.outputs.size(); ++o) {
    const torch::Tensor& t = a.outputs[o];
    if (!t.requires_grad()) continue;
    if (static_cast<int>(o) == loss_output_) {
      roots.push_back(t);
      seeds.push_back(torch::full_like(t, loss_seed));
    } else if (auto g = output_grads.find(static_cast<int>(o)); g != output_grads.end()) {
      roots.push_back(t);
      seeds.push_back(g->second);
    }
  }
  if (!roots.empty()) torch::autograd::backward(roots, seeds);
  a.outputs.clear();  // the graph is spent; free what it held before returning
  std::map<int, torch::Tensor> input_grads;
  for (size_t i = 0; i < me.inputs.size(); ++i) {
    const torch::Tensor& leaf = a.inputs[i];
    if (me.inputs[i].kind != StageInput::Kind::Activation || !leaf.requires_grad()) continue;
    input_grads[static_cast<int>(i)] = leaf.grad().defined() ? leaf.grad() : torch::zeros_like(leaf);
  }
  return input_grads;
}

torch::Tensor StageExecution::loss(const StageActivations& activations) const {
  return loss_output_ < 0 ? torch::Tensor() : activations.outputs.at(loss_output_);
}

}  // namespace trine
