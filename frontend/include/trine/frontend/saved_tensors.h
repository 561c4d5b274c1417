// Hooks on every tensor autograd saves for backward (docs/design.md §4b), in
// C++: LibTorch's C++ API has no saved_tensors_hooks (Python's rests on the
// Python engine), so trine installs, once per process, an autograd engine
// whose default saved-variable hooks hand each saved tensor to the policy
// active on the saving thread. This is the mechanism the memory manager
// (recompute/memory_manager.h: swapping to host, dropping and recomputing)
// builds on; it decides nothing.
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
//   - Each pack says where its tensor comes from (PackSite): a unit of a
//     stage graph that can be run again (unit_replay.h) saved it, or made it
//     as an output; or neither.
//   - The first scope replaces LibTorch's default autograd engine for the whole
//     process by one that differs only in those hooks (torch::autograd::
//     set_default_engine_stub); it must happen before any other code installs
//     an engine of its own.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <memory>

namespace trine {

class UnitReplay;

// Where a packed tensor comes from: `unit` saved it as its `ordinal`-th saved
// tensor (0, 1, ... in the order autograd saved them), or, with `output` >= 0,
// it is the unit's output-th output (a value the unit made that a later unit
// keeps as an input); unit null: neither (made outside any unit).
struct PackSite {
  std::shared_ptr<UnitReplay> unit;
  int64_t ordinal = -1;
  int output = -1;
};

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
  virtual std::unique_ptr<SavedTensorSlot> pack(const torch::Tensor& saved, const PackSite& site) = 0;
  // Whether forwards under this policy run their layers as units
  // (unit_replay.h), so that packs say where they happened (PackSite).
  virtual bool wants_units() const { return false; }
  // Whether those units keep their inputs to run again: only worth it to a
  // policy that may drop saved tensors and have them made again.
  virtual bool replays_units() const { return false; }
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

// The policy of the innermost SavedTensorScope alive on this thread, or null.
SavedTensorPolicy* active_saved_tensor_policy();

// A slot that keeps `t` as it is.
std::unique_ptr<SavedTensorSlot> plain_slot(torch::Tensor t);

// Keeps `t` for a later backward as the active policy keeps saved tensors
// (its slot from pack(t, site)), or as itself when no scope is active: how
// code outside autograd's own saving (a checkpointed segment's inputs, a
// unit's inputs) lets the memory manager see what it holds.
std::unique_ptr<SavedTensorSlot> keep_tensor(const torch::Tensor& t, const PackSite& site = {});

// While alive on a thread, tensors autograd saves there are packed as
// `unit`'s, numbered from 0 (null: outside any unit).
class UnitPackingScope {
 public:
  explicit UnitPackingScope(std::shared_ptr<UnitReplay> unit);
  ~UnitPackingScope();
  UnitPackingScope(const UnitPackingScope&) = delete;
  UnitPackingScope& operator=(const UnitPackingScope&) = delete;
  struct Packing;  // the unit and its next ordinal (saved_tensors.cpp)

 private:
  std::unique_ptr<Packing> mine_;
  Packing* previous_;
};

}  // namespace trine
