// Checkpointed segments: planning them on a GraphRunner's steps, running one
// as an autograd node, and rerunning it with grad (segment_checkpoint.h).
#include "trine/frontend/segment_checkpoint.h"

#include "graph_runner_step.h"

#include <torch/csrc/autograd/custom_function.h>

#include <chrono>
#include <set>

namespace trine {

namespace jit = torch::jit;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool holds_tensors(const c10::IValue& v) {
  if (v.isTensor()) return true;
  if (v.isList()) {
    for (const c10::IValue& e : v.toListRef())
      if (holds_tensors(e)) return true;
  }
  if (v.isTuple()) {
    for (const c10::IValue& e : v.toTupleRef().elements())
      if (holds_tensors(e)) return true;
  }
  return false;
}

namespace {

// One segment as one autograd node: its tensor inputs in, its tensor outputs out.
struct SegmentFunction : torch::autograd::Function<SegmentFunction> {
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, c10::intrusive_ptr<SegmentRun> run) {
    auto outputs = run->forward(inputs.vec());
    std::vector<torch::Tensor> not_differentiable;
    for (const auto& t : outputs)
      if (!c10::isFloatingType(t.scalar_type()) && !c10::isComplexType(t.scalar_type()))
        not_differentiable.push_back(t);
    if (!not_differentiable.empty()) ctx->mark_non_differentiable(not_differentiable);
    ctx->saved_data["run"] = c10::IValue::make_capsule(run);
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto holder = ctx->saved_data["run"].toCapsule();
    auto* run = static_cast<SegmentRun*>(holder.get());
    auto grads = run->backward(grad_outputs);
    grads.emplace_back();  // the SegmentRun argument
    return grads;
  }
};

}  // namespace

SegmentRun::SegmentRun(const GraphRunner& runner, const SegmentPlan& plan, const RngPolicy& rng,
                       std::shared_ptr<std::atomic<int64_t>> recompute_ns)
    : runner_(&runner), plan_(&plan), rng_(rng), recompute_ns_(std::move(recompute_ns)) {}

std::vector<c10::IValue> SegmentRun::slots_with(const std::vector<torch::Tensor>& tensor_inputs) const {
  std::vector<c10::IValue> slots = runner_->constants_;
  size_t t = 0;
  for (size_t i = 0; i < plan_->inputs.size(); ++i)
    slots[plan_->inputs[i]] = is_tensor_input_[i] ? c10::IValue(tensor_inputs.at(t++)) : other_inputs_[i];
  return slots;
}

std::vector<torch::Tensor> SegmentRun::forward(const std::vector<torch::Tensor>& tensor_inputs) {
  // What the rerun starts from: the inputs as they are now, copies of those
  // the segment updates in place.
  size_t t = 0;
  for (size_t i = 0; i < plan_->inputs.size(); ++i) {
    if (!is_tensor_input_[i]) continue;
    const torch::Tensor& x = tensor_inputs.at(t++);
    kept_.push_back(keep_tensor(plan_->copied[i] ? x.detach().clone() : x.detach()));
    saved_requires_grad_.push_back(x.requires_grad());
  }
  std::vector<c10::IValue> slots = slots_with(tensor_inputs);
  runner_->run_steps(slots, plan_->begin, plan_->end, rng_);
  std::vector<torch::Tensor> outputs;
  other_outputs_.assign(plan_->outputs.size(), c10::IValue());
  for (size_t o = 0; o < plan_->outputs.size(); ++o) {
    c10::IValue& v = slots[plan_->outputs[o]];
    if (!v.isTensor()) {
      TORCH_CHECK(!holds_tensors(v), plan_->what, " passes a list or tuple of tensors out of the segment; "
                  "recompute it together with the layer that reads it");
      other_outputs_[o] = v;
      continue;
    }
    torch::Tensor out = v.toTensor();
    // An output that shares memory with an input (a view) would tie the two
    // together outside autograd's knowledge: hand out a copy.
    for (const auto& x : tensor_inputs)
      if (x.defined() && out.defined() && out.is_alias_of(x)) {
        out = out.clone();
        break;
      }
    outputs.push_back(out);
  }
  return outputs;
}

void SegmentRun::recompute() {
  if (recomputed_) return;
  const auto t0 = std::chrono::steady_clock::now();
  torch::AutoGradMode grad(true);
  leaves_.clear();
  for (size_t i = 0; i < kept_.size(); ++i) {
    torch::Tensor leaf = kept_[i]->unpack().detach();
    if (saved_requires_grad_[i]) leaf.requires_grad_(true);
    leaves_.push_back(leaf);
  }
  // Inputs the segment updates in place get a fresh copy, so the saved one
  // stays as the forward saw it.
  std::vector<torch::Tensor> run_inputs = leaves_;
  size_t t = 0;
  for (size_t i = 0; i < plan_->inputs.size(); ++i) {
    if (!is_tensor_input_[i]) continue;
    if (plan_->copied[i]) run_inputs[t] = leaves_[t].clone();
    ++t;
  }
  std::vector<c10::IValue> slots = slots_with(run_inputs);
  runner_->run_steps(slots, plan_->begin, plan_->end, rng_);
  outputs_.clear();
  for (size_t o = 0; o < plan_->outputs.size(); ++o)
    if (slots[plan_->outputs[o]].isTensor()) outputs_.push_back(slots[plan_->outputs[o]].toTensor());
  recomputed_ = true;
  if (recompute_ns_)
    *recompute_ns_ +=
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<torch::Tensor> SegmentRun::backward(const std::vector<torch::Tensor>& grad_outputs) {
  recompute();
  TORCH_INTERNAL_ASSERT(grad_outputs.size() == outputs_.size(), plan_->what, ": ", grad_outputs.size(),
                        " output gradients for ", outputs_.size(), " outputs");
  std::vector<torch::Tensor> outs, seeds, wrt;
  for (size_t o = 0; o < outputs_.size(); ++o)
    if (grad_outputs[o].defined() && outputs_[o].requires_grad()) {
      outs.push_back(outputs_[o]);
      seeds.push_back(grad_outputs[o]);
    }
  std::vector<size_t> wrt_index;
  for (size_t i = 0; i < leaves_.size(); ++i)
    if (leaves_[i].requires_grad()) {
      wrt.push_back(leaves_[i]);
      wrt_index.push_back(i);
    }
  std::vector<torch::Tensor> grads(leaves_.size());
  if (!outs.empty() && !wrt.empty()) {
    auto g = torch::autograd::grad(outs, wrt, seeds, /*retain_graph=*/false, /*create_graph=*/false,
                                   /*allow_unused=*/true);
    for (size_t k = 0; k < wrt_index.size(); ++k) grads[wrt_index[k]] = g[k];
  }
  leaves_.clear();
  outputs_.clear();
  kept_.clear();
  return grads;
}

void GraphRunner::run_segment(std::vector<c10::IValue>& slots, const SegmentPlan& segment, const RngPolicy& rng,
                              const std::shared_ptr<std::atomic<int64_t>>& recompute_ns,
                              std::vector<c10::intrusive_ptr<SegmentRun>>* segment_runs) const {
  auto run = c10::make_intrusive<SegmentRun>(*this, segment, rng, recompute_ns);
  std::vector<torch::Tensor> tensors;
  std::vector<c10::IValue> others(segment.inputs.size());
  std::vector<bool> is_tensor(segment.inputs.size(), false);
  for (size_t i = 0; i < segment.inputs.size(); ++i) {
    const c10::IValue& v = slots[segment.inputs[i]];
    if (v.isTensor()) {
      tensors.push_back(v.toTensor());
      is_tensor[i] = true;
    } else {
      TORCH_CHECK(!holds_tensors(v), segment.what, " reads a list or tuple of tensors made before it; recompute it "
                  "together with the layer that makes it");
      others[i] = v;
    }
  }
  run->set_other_inputs(std::move(others), std::move(is_tensor));
  auto outputs = SegmentFunction::apply(at::TensorList(tensors), run);
  size_t t = 0;
  for (size_t o = 0; o < segment.outputs.size(); ++o) {
    const c10::IValue& other = run->other_outputs()[o];
    slots[segment.outputs[o]] = other.isNone() && t < outputs.size() ? c10::IValue(outputs[t++]) : other;
  }
  // Values whose last use was inside the segment are released, as a plain run would.
  for (size_t i = segment.begin; i < segment.end; ++i)
    for (int s : (*steps_)[i].free_after) slots[s] = c10::IValue();
  if (segment_runs) segment_runs->push_back(std::move(run));
}

CheckpointPlan GraphRunner::plan_checkpoints(const std::vector<int>& segment_of_node,
                                             const std::vector<bool>& graph_input_copied) const {
  TORCH_CHECK(segment_of_node.size() == num_nodes_, "segment ids for ", segment_of_node.size(),
              " nodes, the graph has ", num_nodes_);
  TORCH_CHECK(graph_input_copied.size() == input_slots_.size(), "copy flags for ", graph_input_copied.size(),
              " inputs, the graph has ", input_slots_.size());
  const auto& steps = *steps_;
  std::vector<bool> copied_slot(num_slots_, false);
  for (size_t i = 0; i < input_slots_.size(); ++i) copied_slot[input_slots_[i]] = graph_input_copied[i];
  std::vector<int> defined_at(num_slots_, -1);  // step index; -1: graph input or constant
  for (size_t i = 0; i < steps.size(); ++i)
    for (int s : steps[i].out) defined_at[s] = static_cast<int>(i);
  std::vector<int> last_read(num_slots_, -1);
  for (size_t i = 0; i < steps.size(); ++i)
    for (int s : steps[i].in) last_read[s] = static_cast<int>(i);
  std::vector<bool> is_output(num_slots_, false);
  for (int s : output_slots_) is_output[s] = true;

  CheckpointPlan plan;
  size_t i = 0;
  while (i < steps.size()) {
    const int id = segment_of_node[steps[i].position];
    if (id < 0) {
      ++i;
      continue;
    }
    SegmentPlan seg;
    seg.begin = i;
    while (i < steps.size() && segment_of_node[steps[i].position] == id) ++i;
    seg.end = i;
    seg.what = "checkpointed segment " + std::to_string(id) + " (nodes " + std::to_string(steps[seg.begin].position) +
               ".." + std::to_string(steps[seg.end - 1].position) + ")";
    std::set<int> inputs, written;
    for (size_t k = seg.begin; k < seg.end; ++k) {
      seg.random = seg.random || steps[k].random;
      seg.communicates = seg.communicates || steps[k].communicates;
      for (int s : steps[k].in)
        if (!is_constant_[s] && (defined_at[s] < 0 || defined_at[s] < static_cast<int>(seg.begin))) inputs.insert(s);
      for (int s : steps[k].written) written.insert(s);
    }
    for (int s : inputs) {
      seg.inputs.push_back(s);
      seg.copied.push_back(copied_slot[s] || written.count(s) > 0);
      seg.buffer.push_back(copied_slot[s]);
    }
    for (size_t k = seg.begin; k < seg.end; ++k)
      for (int s : steps[k].out)
        if (is_output[s] || last_read[s] >= static_cast<int>(seg.end)) seg.outputs.push_back(s);
    plan.segments.push_back(std::move(seg));
  }
  return plan;
}

}  // namespace trine
