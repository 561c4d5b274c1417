// Hooks on every tensor autograd saves for backward (docs/design.md §4b), in
// C++: LibTorch's C++ API has no saved_tensors_hooks (Python's rests on the
// Python engine), so trine installs, once per process, an autograd engine
// whose default saved-variable hooks hand each saved tensor to the policy
// active on the saving thread. This is the mechanism a memory manager
// (swapping to host, dropping and recomputing) builds on; it decides nothing.
//
// Contract:
//   - While a SavedTensorScope is alive on a thread, every tensor that autograd
//     saves for backward in ops run on that thread goes to policy.pack(),
//     which returns a slot; the backward calls the slot's unpack() when it
//     needs the tensor (once per use: a retained graph's second backward calls
//     it again), and unpack() must return a tensor equal to the one packed
//     (same values, shape, dtype and device).
//   - Tensors saved outside any scope are saved as LibTorch saves them; scopes
//     nest (the innermost policy packs).
//   - The first scope replaces LibTorch's default autograd engine for the whole
//     process by one that differs only in those hooks (torch::autograd::
//     set_default_engine_stub); it must happen before any other code installs
//     an engine of its own.
#pragma once
#include <torch/torch.h>

#include <memory>

namespace trine {

// What a policy keeps for one saved tensor.
class SavedTensorSlot {
 public:
  virtual ~SavedTensorSlot() = default;
  virtual torch::Tensor unpack() = 0;
};

class SavedTensorPolicy {
 public:
  virtual ~SavedTensorPolicy() = default;
  // `saved` is what autograd would keep; the slot stands in for it.
  virtual std::unique_ptr<SavedTensorSlot> pack(const torch::Tensor& saved) = 0;
};

// Makes `policy` (which must outlive the scope and every backward through the
// graphs built under it) pack the tensors saved on this thread.
class SavedTensorScope {
 public:
  explicit SavedTensorScope(SavedTensorPolicy& policy);
  ~SavedTensorScope();
  SavedTensorScope(const SavedTensorScope&) = delete;
  SavedTensorScope& operator=(const SavedTensorScope&) = delete;

 private:
  SavedTensorPolicy* previous_;
};

}  // namespace trine
