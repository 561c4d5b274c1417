#include "trine/frontend/sequential_staged_model.h"

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

// Counts the bytes allocated minus the bytes freed on this thread while it is
// installed, through the allocators' memory-reporting hook (the one LibTorch's
// profiler uses; CPU and CUDA allocators both report). Unlike looking at op
// outputs, it also sees what composite ops allocate inside and autograd keeps
// (a cross-entropy's log-softmax, a layer norm's mean and rstd, dropout masks).
class AllocationCounter : public c10::MemoryReportingInfoBase {
 public:
  void reportMemoryUsage(void*, int64_t bytes, size_t, size_t, c10::Device) override { live_ += bytes; }
  bool memoryProfilingEnabled() const override { return true; }
  int64_t live() const { return live_; }

 private:
  int64_t live_ = 0;
};

}  // namespace

SequentialStagedModel::SequentialStagedModel(const TracedModel& model, ProxyGraph proxy,
                                             const std::vector<int>& stage_of_layer)
    : proxy_(std::move(proxy)) {
  TORCH_CHECK(model.has_loss, "staged training needs a model traced with a loss function");
  stages_ = split_into_stages(model, proxy_, stage_of_layer);
  held_.resize(stages_.size());
  torch::NoGradGuard no_grad;
  for (size_t s = 0; s < stages_.size(); ++s) {
    for (int p : stages_[s].params) {
      const torch::Tensor& orig = model.inputs.at(proxy_.params[p].value).value;
      held_[s][p] = orig.detach().clone().requires_grad_(orig.requires_grad());
    }
  }
}

torch::Tensor SequentialStagedModel::forward_backward(const SampleBatch& batch, const RngPolicy& rng,
                                                     StageMeasurements* measure) {
  TORCH_CHECK(batch.inputs.size() == proxy_.data_inputs.size(), "the batch has ", batch.inputs.size(),
              " inputs, the model was traced with ", proxy_.data_inputs.size());
  TORCH_CHECK(batch.targets.size() == proxy_.target_inputs.size(), "the batch has ", batch.targets.size(),
              " targets, the model was traced with ", proxy_.target_inputs.size());
  const size_t k = stages_.size();
  std::map<int, torch::Tensor> produced;                 // value id -> tensor, with its autograd history
  std::vector<std::vector<torch::Tensor>> leaves(k);      // per stage: received activations (detached)
  std::vector<std::vector<torch::Tensor>> outs(k);
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
    std::vector<c10::IValue> in;
    in.reserve(st.inputs.size());
    for (const StageInput& i : st.inputs) {
      switch (i.kind) {
        case StageInput::Kind::Activation: {
          const torch::Tensor& t = produced.at(i.value);
          auto leaf = t.detach();
          if (t.requires_grad()) leaf.requires_grad_(true);
          leaves[s].push_back(leaf);
          in.emplace_back(leaf);
          break;
        }
        case StageInput::Kind::Data: in.emplace_back(batch.inputs[i.index]); break;
        case StageInput::Kind::Target: in.emplace_back(batch.targets[i.index]); break;
        case StageInput::Kind::Parameter: in.emplace_back(held_[s].at(i.index)); break;
      }
    }
    auto result = st.runner.run(std::move(in), rng);
    for (size_t o = 0; o < st.outputs.size(); ++o) {
      auto t = result[o].toTensor();
      outs[s].push_back(t);
      if (!st.outputs[o].to_stages.empty()) produced[st.outputs[o].value] = t;
      if (st.outputs[o].model_output == 0) loss = t;
    }
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
  // consumers computed for their received copies (summed over consumers).
  std::map<int, torch::Tensor> grads;
  for (size_t s = k; s-- > 0;) {
    const StageProgram& st = stages_[s];
    if (measure) synchronize(device);
    const auto t0 = Clock::now();
    std::vector<torch::Tensor> roots, root_grads;
    for (size_t o = 0; o < st.outputs.size(); ++o) {
      const torch::Tensor& t = outs[s][o];
      if (!t.requires_grad()) continue;
      if (st.outputs[o].model_output == 0) {
        roots.push_back(t);
        root_grads.push_back(torch::ones_like(t));
      } else if (auto it = grads.find(st.outputs[o].value); it != grads.end()) {
        roots.push_back(t);
        root_grads.push_back(it->second);
        grads.erase(it);
      }
    }
    if (!roots.empty()) torch::autograd::backward(roots, root_grads);
    outs[s].clear();
    size_t leaf = 0;
    for (const StageInput& i : st.inputs) {
      if (i.kind != StageInput::Kind::Activation) continue;
      const torch::Tensor& l = leaves[s][leaf++];
      if (!l.requires_grad() || !l.grad().defined()) continue;
      auto& g = grads[i.value];
      g = g.defined() ? g + l.grad() : l.grad();
    }
    leaves[s].clear();
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
    for (auto& h : held_)
      if (auto it = h.find(static_cast<int>(p)); it != h.end() && it->second.grad().defined())
        copies.push_back(it->second);
    if (copies.size() < 2) continue;
    auto sum = copies[0].grad().clone();
    for (size_t c = 1; c < copies.size(); ++c) sum += copies[c].grad();
    for (auto& c : copies) c.mutable_grad().copy_(sum);
  }
}

void SequentialStagedModel::zero_grad() {
  for (auto& h : held_)
    for (auto& [p, t] : h)
      if (t.grad().defined()) t.mutable_grad() = torch::Tensor();
}

std::vector<torch::Tensor> SequentialStagedModel::parameters() const {
  std::vector<torch::Tensor> out;
  for (size_t s = 0; s < held_.size(); ++s)
    for (int p : stages_[s].params)
      if (held_[s].at(p).requires_grad()) out.push_back(held_[s].at(p));
  return out;
}

int SequentialStagedModel::param_id(const std::string& name) const {
  const int p = proxy_.find_param(name);
  TORCH_CHECK(p >= 0, "the model has no parameter or buffer named '", name, "'");
  return p;
}

torch::Tensor SequentialStagedModel::parameter(const std::string& name, int stage) const {
  const int p = param_id(name);
  for (size_t s = 0; s < held_.size(); ++s) {
    if (stage >= 0 && static_cast<int>(s) != stage) continue;
    if (auto it = held_[s].find(p); it != held_[s].end()) return it->second;
  }
  TORCH_CHECK(false, "parameter '", name, "' is not held by ", stage >= 0 ? "stage " + std::to_string(stage) : "any stage",
              " (no op reads it)");
}

}  // namespace trine
