#include "trine/frontend/saved_tensors.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/saved_variable_hooks.h>

#include <mutex>

namespace trine {

namespace {

thread_local SavedTensorPolicy* active_policy = nullptr;

// One saved variable's hooks: pack hands the tensor to the policy that was
// active when autograd saved it.
class PolicyHooks : public torch::autograd::SavedVariableHooks {
 public:
  explicit PolicyHooks(SavedTensorPolicy& policy) : policy_(policy) {}
  void call_pack_hook(const at::Tensor& tensor) override { slot_ = policy_.pack(tensor); }
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

}  // namespace trine
