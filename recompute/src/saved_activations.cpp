#include "trine/recompute/saved_activations.h"

namespace trine {

// One saved activation: the tensor itself (the ledger only watches), and its
// storage's place in the ledger until autograd lets go of it.
class SavedActivationLedger::Slot : public SavedTensorSlot {
 public:
  Slot(SavedActivationLedger* ledger, torch::Tensor tensor) : ledger_(ledger), tensor_(std::move(tensor)) {}
  ~Slot() override {
    if (ledger_) ledger_->release(tensor_.storage().unsafeGetStorageImpl());
  }
  torch::Tensor unpack() override { return tensor_; }

 private:
  SavedActivationLedger* ledger_;  // null: an excluded tensor, not counted
  torch::Tensor tensor_;
};

SavedActivationLedger::SavedActivationLedger(const std::vector<torch::Tensor>& excluded) {
  for (const auto& t : excluded)
    if (t.defined() && t.has_storage()) excluded_.insert(t.storage().unsafeGetStorageImpl());
}

std::unique_ptr<SavedTensorSlot> SavedActivationLedger::pack(const torch::Tensor& saved) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++packed_;
  }
  if (!saved.defined() || !saved.has_storage() || excluded_.count(saved.storage().unsafeGetStorageImpl()))
    return std::make_unique<Slot>(nullptr, saved);
  const c10::StorageImpl* storage = saved.storage().unsafeGetStorageImpl();
  hold(storage, static_cast<int64_t>(saved.storage().nbytes()));
  return std::make_unique<Slot>(this, saved);
}

void SavedActivationLedger::hold(const c10::StorageImpl* storage, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  Held& h = held_[storage];
  if (h.refs++ == 0) {
    h.bytes = bytes;
    held_bytes_ += bytes;
    peak_bytes_ = std::max(peak_bytes_, held_bytes_);
  }
}

void SavedActivationLedger::release(const c10::StorageImpl* storage) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = held_.find(storage);
  TORCH_INTERNAL_ASSERT(it != held_.end(), "a saved activation released twice");
  if (--it->second.refs > 0) return;
  held_bytes_ -= it->second.bytes;
  held_.erase(it);
}

int64_t SavedActivationLedger::held_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return held_bytes_;
}

int64_t SavedActivationLedger::peak_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_bytes_;
}

void SavedActivationLedger::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  peak_bytes_ = held_bytes_;
}

int64_t SavedActivationLedger::tensors_packed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return packed_;
}

}  // namespace trine
