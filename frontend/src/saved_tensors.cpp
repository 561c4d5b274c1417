#include "trine/frontend/saved_tensors.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/saved_variable_hooks.h>

#include <mutex>

namespace trine {

struct UnitPackingScope::Packing {
  std::shared_ptr<UnitReplay> unit;
  int64_t next = 0;
};

namespace {

thread_local UnitPackingScope::Packing* current_unit = nullptr;

PackSite next_site() {
  if (!current_unit || !current_unit->unit) return {};
  return {current_unit->unit, current_unit->next++};
}

// A tensor kept as it is (no policy active).
class PlainSlot : public SavedTensorSlot {
 public:
  explicit PlainSlot(torch::Tensor t) : tensor_(std::move(t)) {}
  torch::Tensor unpack() override { return tensor_; }

 private:
  torch::Tensor tensor_;
};

thread_local SavedTensorPolicy* active_policy = nullptr;

// One saved variable's hooks: pack hands the tensor to the policy that was
// active when autograd saved it.
class PolicyHooks : public torch::autograd::SavedVariableHooks {
 public:
  explicit PolicyHooks(SavedTensorPolicy& policy) : policy_(policy) {}
  void call_pack_hook(const at::Tensor& tensor) override { slot_ = policy_.pack(tensor, next_site()); }
  at::Tensor call_unpack_hook() override {
    TORCH_INTERNAL_ASSERT(slot_, "a saved tensor unpacked before it was packed");
    return slot_->unpack();
  }

 private:
  SavedTensorPolicy& policy_;
  std::unique_ptr<SavedTensorSlot> slot_;
};

// LibTorch's engine, except that tensors saved under a SavedTensorScope get
// the scope's hooks.
struct HookingEngine : torch::autograd::Engine {
  std::unique_ptr<torch::autograd::SavedVariableHooks> get_default_saved_variable_hooks() override {
    if (SavedTensorPolicy* policy = active_policy) return std::make_unique<PolicyHooks>(*policy);
    return nullptr;
  }
};

torch::autograd::Engine& hooking_engine() {
  static HookingEngine engine;
  return engine;
}

void install_hooking_engine() {
  static std::once_flag once;
  std::call_once(once, [] { torch::autograd::set_default_engine_stub(&hooking_engine); });
}

}  // namespace

SavedTensorScope::SavedTensorScope(SavedTensorPolicy& policy) : previous_(active_policy) {
  install_hooking_engine();
  active_policy = &policy;
}

SavedTensorScope::~SavedTensorScope() { active_policy = previous_; }

SavedTensorPolicy* active_saved_tensor_policy() { return active_policy; }

std::unique_ptr<SavedTensorSlot> keep_tensor(const torch::Tensor& t, const PackSite& site) {
  if (active_policy) return active_policy->pack(t, site);
  return plain_slot(t);
}

std::unique_ptr<SavedTensorSlot> plain_slot(torch::Tensor t) { return std::make_unique<PlainSlot>(std::move(t)); }

UnitPackingScope::UnitPackingScope(std::shared_ptr<UnitReplay> unit)
    : mine_(new Packing{std::move(unit), 0}), previous_(current_unit) {
  current_unit = mine_.get();
}

UnitPackingScope::~UnitPackingScope() { current_unit = previous_; }

}  // namespace trine
