#include "trine/frontend/unit_replay.h"

#include "graph_runner_step.h"
#include "trine/frontend/segment_checkpoint.h"

#include <mutex>

namespace trine {

namespace {

// Collects the tensors a rerun saves, in order, and keeps them as they are.
class Capture : public SavedTensorPolicy {
 public:
  std::unique_ptr<SavedTensorSlot> pack(const torch::Tensor& saved, const PackSite&) override {
    tensors.push_back(saved);
    return plain_slot(saved);
  }
  std::vector<torch::Tensor> tensors;
};

}  // namespace

UnitReplay::UnitReplay(const GraphRunner& runner, const SegmentPlan& unit, int index, const RngPolicy& rng,
                       int64_t run)
    : runner_(&runner), unit_(&unit), index_(index), rng_(rng), run_(run) {}

std::shared_ptr<UnitReplay> UnitReplay::start(const GraphRunner& runner, const SegmentPlan& unit, int index,
                                              const RngPolicy& rng, const std::vector<c10::IValue>& slots,
                                              const std::function<PackSite(int slot)>& made_by, int64_t run,
                                              bool replays) {
  std::shared_ptr<UnitReplay> replay(new UnitReplay(runner, unit, index, rng, run));
  replay->keep_inputs(slots, made_by, replays);
  return replay;
}

void UnitReplay::keep_inputs(const std::vector<c10::IValue>& slots,
                             const std::function<PackSite(int slot)>& made_by, bool replays) {
  replayable_ = replays && !unit_->communicates && !(unit_->random && rng_.mode != RngPolicy::Mode::PerOp);
  for (size_t i = 0; i < unit_->inputs.size(); ++i) {
    const c10::IValue& v = slots[unit_->inputs[i]];
    if (!v.isTensor() && holds_tensors(v)) replayable_ = false;
    // An activation the unit updates in place (an in-place ReLU on its
    // input) would have to be kept as a copy as big as itself: not worth it.
    if (unit_->copied[i] && !unit_->buffer[i]) replayable_ = false;
  }
  if (!replayable_) return;
  for (size_t i = 0; i < unit_->inputs.size(); ++i) {
    const c10::IValue& v = slots[unit_->inputs[i]];
    if (!v.isTensor()) {
      other_inputs_.push_back(v);
      kept_.push_back(nullptr);
      requires_grad_.push_back(false);
      continue;
    }
    const torch::Tensor& t = v.toTensor();
    other_inputs_.emplace_back();
    requires_grad_.push_back(t.requires_grad());
    torch::NoGradGuard no_grad;
    // A copy is made here, by no unit.
    kept_.push_back(unit_->copied[i] ? keep_tensor(t.detach().clone())
                                     : keep_tensor(t.detach(), made_by(unit_->inputs[i])));
  }
}

UnitRemade UnitReplay::replay() const {
  TORCH_INTERNAL_ASSERT(replayable_, what(), " cannot be run again");
  std::vector<c10::IValue> slots = runner_->constants_;
  for (size_t i = 0; i < unit_->inputs.size(); ++i) {
    if (!kept_[i]) {
      slots[unit_->inputs[i]] = other_inputs_[i];
      continue;
    }
    torch::Tensor t = kept_[i]->unpack().detach();
    // An input updated in place gets a fresh copy: the kept one stays as the first run saw it.
    if (unit_->copied[i]) t = t.clone();
    if (requires_grad_[i]) t.requires_grad_(true);
    slots[unit_->inputs[i]] = t;
  }
  Capture capture;
  {
    torch::AutoGradMode grad(true);
    SavedTensorScope scope(capture);
    UnitPackingScope outside(nullptr);
    runner_->run_steps(slots, unit_->begin, unit_->end, rng_);
  }
  UnitRemade remade;
  remade.saved = std::move(capture.tensors);
  for (int s : unit_->outputs)
    remade.outputs.push_back(slots[s].isTensor() ? slots[s].toTensor().detach() : torch::Tensor());
  return remade;
}

const std::string& UnitReplay::what() const { return unit_->what; }

}  // namespace trine
