// The memory manager's ledger of saved activations (docs/design.md §4b; the
// start of DELTA-style swapping and recomputation under a budget). As the
// policy of a SavedTensorScope (frontend/saved_tensors.h) it sees every tensor
// autograd saves while a stage runs, and counts the bytes of the activations
// among them, by storage: a storage saved several times (a tensor and its
// views, an op's output read by two ops) counts once, and only while some
// saved tensor still refers to it; its bytes leave the ledger when the last
// such saved tensor is released (the backward frees the graph).
//
// Contract:
//   - Tensors sharing storage with the `excluded` tensors (the stage's
//     parameters and buffers) are not activations: they are kept as saved,
//     not counted.
//   - Watching changes nothing: every slot gives back the tensor it was
//     given, so losses and gradients are bit-equal to running without it.
//   - Safe to use from several threads (sub-microbatch parts, autograd's).
#pragma once
#include "trine/frontend/saved_tensors.h"

#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace trine {

class SavedActivationLedger : public SavedTensorPolicy {
 public:
  explicit SavedActivationLedger(const std::vector<torch::Tensor>& excluded = {});
  std::unique_ptr<SavedTensorSlot> pack(const torch::Tensor& saved) override;

  int64_t held_bytes() const;  // activations saved and not yet released
  int64_t peak_bytes() const;  // the most held at once since the last reset_peak
  void reset_peak();
  int64_t tensors_packed() const;  // activations and excluded tensors alike

 private:
  class Slot;
  void hold(const c10::StorageImpl* storage, int64_t bytes);
  void release(const c10::StorageImpl* storage);

  std::unordered_set<const c10::StorageImpl*> excluded_;
  mutable std::mutex mutex_;
  struct Held {
    int64_t bytes = 0;
    int refs = 0;
  };
  std::unordered_map<const c10::StorageImpl*, Held> held_;
  int64_t held_bytes_ = 0, peak_bytes_ = 0, packed_ = 0;
};

}  // namespace trine
