#include "trine/frontend/sequential_staged_model.h"

#include "trine/frontend/allocation_counter.h"

#include <torch/cuda.h>

#include <chrono>
#include <map>
#include <optional>

#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>

namespace trine {

namespace {

using Clock = std::chrono::steady_clock;

// Times on an accelerator mean nothing until its queue has drained.
void synchronize(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

SequentialStagedModel::SequentialStagedModel(const TracedModel& model, ProxyGraph proxy,
                                             const std::vector<int>& stage_of_layer)
    : proxy_(std::move(proxy)) {
  TORCH_CHECK(model.has_loss, "staged training needs a model traced with a loss function");
  stages_ = split_into_stages(model, proxy_, stage_of_layer);
  executions_.reserve(stages_.size());
  for (const StageProgram& program : stages_) executions_.emplace_back(program, model, proxy_);
}

std::vector<torch::Tensor> SequentialStagedModel::receive(int stage, const std::map<int, torch::Tensor>& produced) const {
  const StageProgram& st = stages_[stage];
  std::vector<torch::Tensor> received(st.inputs.size());
  for (size_t i = 0; i < st.inputs.size(); ++i) {
    if (st.inputs[i].kind != StageInput::Kind::Activation) continue;
    const torch::Tensor& t = produced.at(st.inputs[i].value);
    received[i] = t.detach();
    if (t.requires_grad()) received[i].requires_grad_(true);
  }
  return received;
}

torch::Tensor SequentialStagedModel::forward_backward(const SampleBatch& batch, const RngPolicy& rng,
                                                     StageMeasurements* measure) {
  TORCH_CHECK(batch.inputs.size() == proxy_.data_inputs.size(), "the batch has ", batch.inputs.size(),
              " inputs, the model was traced with ", proxy_.data_inputs.size());
  TORCH_CHECK(batch.targets.size() == proxy_.target_inputs.size(), "the batch has ", batch.targets.size(),
              " targets, the model was traced with ", proxy_.target_inputs.size());
  const size_t k = stages_.size();
  std::map<int, torch::Tensor> produced;  // value id -> tensor, with its autograd history
  std::vector<StageActivations> activations(k);
  torch::Tensor loss;
  const c10::Device device = batch.inputs.empty() ? c10::Device(c10::kCPU) : batch.inputs[0].device();
  std::shared_ptr<AllocationCounter> counter;
  std::optional<c10::DebugInfoGuard> counting;
  if (measure) {
    *measure = StageMeasurements{std::vector<double>(k), std::vector<double>(k), std::vector<int64_t>(k)};
    counter = std::make_shared<AllocationCounter>();
    counting.emplace(c10::DebugInfoKind::PROFILER_STATE, counter);
  }

  for (size_t s = 0; s < k; ++s) {
    const StageProgram& st = stages_[s];
    if (measure) synchronize(device);
    const auto t0 = Clock::now();
    const int64_t live_before = counter ? counter->live() : 0;
    activations[s] = executions_[s].forward(receive(static_cast<int>(s), produced), batch, {}, rng, !recompute_);
    for (size_t o = 0; o < st.outputs.size(); ++o)
      if (!st.outputs[o].to_stages.empty()) produced[st.outputs[o].value] = activations[s].outputs[o];
    if (auto l = executions_[s].loss(activations[s]); l.defined()) loss = l;
    if (measure) {
      synchronize(device);
      measure->forward_s[s] = seconds_since(t0);
      // What this forward allocated and did not free: its outputs and what its
      // autograd graph keeps; both live until this stage's backward.
      measure->kept_bytes[s] = counter->live() - live_before;
    }
  }
  counting.reset();
  TORCH_INTERNAL_ASSERT(loss.defined(), "no stage produced the loss");
  produced.clear();

  // Backward, last stage first: each stage's outputs get the gradients its
  // readers computed for their received copies (summed over readers).
  std::map<int, torch::Tensor> grads;  // value id -> gradient
  for (size_t s = k; s-- > 0;) {
    const StageProgram& st = stages_[s];
    if (measure) synchronize(device);
    const auto t0 = Clock::now();
    std::map<int, torch::Tensor> output_grads;
    for (size_t o = 0; o < st.outputs.size(); ++o)
      if (auto it = grads.find(st.outputs[o].value); it != grads.end()) {
        output_grads[static_cast<int>(o)] = it->second;
        grads.erase(it);
      }
    for (auto& [i, g] : executions_[s].backward(std::move(activations[s]), output_grads, 1.0)) {
      auto& sum = grads[st.inputs[i].value];
      sum = sum.defined() ? sum + g : g;
    }
    if (measure) {
      synchronize(device);
      measure->backward_s[s] = seconds_since(t0);
    }
  }
  return loss.detach();
}

void SequentialStagedModel::reduce_shared_gradients() {
  torch::NoGradGuard no_grad;
  for (size_t p = 0; p < proxy_.params.size(); ++p) {
    std::vector<torch::Tensor> copies;
    for (const auto& e : executions_)
      if (auto it = e.parameters().find(static_cast<int>(p)); it != e.parameters().end() && it->second.grad().defined())
        copies.push_back(it->second);
    if (copies.size() < 2) continue;
    auto sum = copies[0].grad().clone();
    for (size_t c = 1; c < copies.size(); ++c) sum += copies[c].grad();
    for (auto& c : copies) c.mutable_grad().copy_(sum);
  }
}

void SequentialStagedModel::zero_grad() {
  for (const auto& e : executions_)
    for (const auto& [p, t] : e.parameters())
      if (t.grad().defined()) t.mutable_grad() = torch::Tensor();
}

std::vector<torch::Tensor> SequentialStagedModel::parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& e : executions_)
    for (int p : e.program().params)
      if (e.parameters().at(p).requires_grad()) out.push_back(e.parameters().at(p));
  return out;
}

int SequentialStagedModel::param_id(const std::string& name) const {
  const int p = proxy_.find_param(name);
  TORCH_CHECK(p >= 0, "the model has no parameter or buffer named '", name, "'");
  return p;
}

torch::Tensor SequentialStagedModel::parameter(const std::string& name, int stage) const {
  const int p = param_id(name);
  for (size_t s = 0; s < executions_.size(); ++s) {
    if (stage >= 0 && static_cast<int>(s) != stage) continue;
    if (auto it = executions_[s].parameters().find(p); it != executions_[s].parameters().end()) return it->second;
  }
  TORCH_CHECK(false, "parameter '", name, "' is not held by ", stage >= 0 ? "stage " + std::to_string(stage) : "any stage",
              " (no op reads it)");
}

}  // namespace trine
