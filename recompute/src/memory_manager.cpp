#include "trine/recompute/memory_manager.h"

#include "host_transfers.h"
#include "trine/frontend/unit_replay.h"

#include <algorithm>
#include <chrono>
#include <limits>

namespace trine {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

// One saved storage: on the device, in the host pool, or dropped.
struct MemoryManager::Entry : std::enable_shared_from_this<Entry> {
  enum class State { Resident, Swapped, Dropped };
  State state = State::Resident;
  c10::Storage storage;  // while resident
  // While swapped: the copy to host (its bytes; until it has finished, the
  // device storage too, still counted as held: `leaving`).
  std::unique_ptr<HostTransfer> out;
  bool leaving = false;
  std::unique_ptr<HostTransfer> in;  // after a swap in, until the first use orders the compute after it
  c10::Device device = c10::kCPU;
  int64_t bytes = 0;
  int slots = 0;  // saved tensors referring to it
  int pins = 0;   // being unpacked
  // The unit whose rerun makes it again (null: none can), as its
  // `ordinal`-th saved tensor or its `output`-th output.
  std::shared_ptr<UnitReplay> unit;
  int64_t ordinal = -1;
  int output = -1;
  double saved_at = 0, last_use = 0;
  double gap_s = -1;        // recorded seconds from save to first use at its place (-1: none)
  bool used = false;        // unpacked since it was saved
  bool prefetched = false;  // brought back ahead of its use, not used yet

  bool droppable() const { return unit && unit->replayable(); }
  // Where in its unit: the ordinal, or an output numbered below -1.
  int64_t position() const { return output >= 0 ? -2 - output : ordinal; }
  std::tuple<int64_t, int, int64_t> key() const { return {unit->run(), unit->index(), position()}; }
  std::pair<int, int64_t> place() const { return {unit->index(), position()}; }
  // Its tensor among what a rerun of its unit made (null: not there).
  const torch::Tensor* made_in(const UnitRemade& remade) const {
    const auto& list = output >= 0 ? remade.outputs : remade.saved;
    const size_t at = static_cast<size_t>(output >= 0 ? output : ordinal);
    return at < list.size() && list[at].defined() ? &list[at] : nullptr;
  }
};

// A saved tensor: its entry and where in the storage it lies, or (not an
// activation) the tensor itself.
class MemoryManager::Slot : public SavedTensorSlot {
 public:
  Slot(MemoryManager* manager, std::shared_ptr<Entry> entry, const torch::Tensor& t)
      : manager_(manager), entry_(std::move(entry)) {
    if (!entry_) {
      tensor_ = t;
      return;
    }
    options_ = t.options();
    sizes_ = t.sizes().vec();
    strides_ = t.strides().vec();
    offset_ = t.storage_offset();
  }
  ~Slot() override {
    if (entry_) manager_->release(*entry_);
  }
  torch::Tensor unpack() override { return entry_ ? manager_->unpack(*this) : tensor_; }

  torch::Tensor view_of(const c10::Storage& storage) const {
    torch::NoGradGuard no_grad;
    return at::empty({0}, options_).set_(storage, offset_, sizes_, strides_);
  }
  Entry& entry() { return *entry_; }

 private:
  MemoryManager* manager_;
  std::shared_ptr<Entry> entry_;
  torch::Tensor tensor_;
  torch::TensorOptions options_;
  std::vector<int64_t> sizes_, strides_;
  int64_t offset_ = 0;
};

MemoryManager::MemoryManager(const std::vector<torch::Tensor>& excluded, MemoryBudget budget)
    : budget_(budget) {
  TORCH_CHECK(budget_.bytes >= 0, "memory budget of ", budget_.bytes, " bytes; give a positive number, or 0 for none");
  TORCH_CHECK(budget_.swap_bytes_per_s > 0, "memory.swap_bytes_per_s must be positive");
  TORCH_CHECK(budget_.prefetch >= 0, "memory.prefetch must be 0 or more");
  for (const auto& t : excluded)
    if (t.defined() && t.has_storage()) excluded_.insert(t.storage().unsafeGetStorageImpl());
}

MemoryManager::~MemoryManager() = default;

std::unique_ptr<SavedTensorSlot> MemoryManager::pack(const torch::Tensor& saved, const PackSite& site) {
  Lock lock(mutex_);
  ++packed_;
  if (!saved.defined() || !saved.has_storage() || saved.layout() != c10::kStrided ||
      excluded_.count(saved.storage().unsafeGetStorageImpl()))
    return std::make_unique<Slot>(this, nullptr, saved);
  auto slot = std::make_unique<Slot>(this, entry_for(saved, site), saved);
  make_room(0, lock);
  note_held();
  return slot;
}

std::shared_ptr<MemoryManager::Entry> MemoryManager::entry_for(const torch::Tensor& saved, const PackSite& site) {
  const double now = now_s();
  const c10::StorageImpl* impl = saved.storage().unsafeGetStorageImpl();
  if (auto it = resident_.find(impl); it != resident_.end()) {
    ++it->second->slots;
    it->second->last_use = now;
    return it->second->shared_from_this();
  }
  auto e = std::make_shared<Entry>();
  e->storage = saved.storage();
  e->device = saved.device();
  e->bytes = static_cast<int64_t>(saved.storage().nbytes());
  e->saved_at = e->last_use = now;
  if (site.unit && (site.ordinal >= 0 || site.output >= 0)) {
    e->unit = site.unit;
    e->ordinal = site.ordinal;
    e->output = site.output;
    if (auto gap = gap_s_.find(e->place()); gap != gap_s_.end()) e->gap_s = gap->second;
  }
  e->slots = 1;
  resident_[impl] = e.get();
  held_ += e->bytes;
  return e;
}

torch::Tensor MemoryManager::unpack(Slot& slot) {
  Lock lock(mutex_);
  Entry& e = slot.entry();
  ++e.pins;
  make_resident(e, lock);
  if (e.in) {
    e.in->order_before_use();
    retire(std::move(e.in));
  }
  record_use(e);
  const c10::Storage storage = e.storage;  // a reference: e cannot be released until the tensor is gone
  --e.pins;
  prefetch_after(e, lock);
  lock.unlock();
  return slot.view_of(storage);
}

void MemoryManager::release(Entry& e) {
  Lock lock(mutex_);
  if (--e.slots > 0) return;
  if (e.prefetched) --prefetched_unused_;
  switch (e.state) {
    case Entry::State::Resident:
      leave_device(e);
      if (e.in) retire(std::move(e.in));
      break;
    case Entry::State::Swapped:
      host_ -= e.bytes;
      if (e.leaving) {  // its device bytes go when the copy has finished, uncounted from now
        stop_leaving(e);
        held_ -= e.bytes;
      }
      retire(std::move(e.out));
      if (e.unit) swapped_.erase(e.key());
      break;
    case Entry::State::Dropped: dropped_.erase(&e); break;
  }
}

void MemoryManager::make_resident(Entry& e, Lock& lock) {
  if (e.state == Entry::State::Resident) return;
  if (e.state == Entry::State::Swapped) {
    make_room(e.bytes, lock);
    swap_in(e);
  } else {
    replay_unit(e, lock);
  }
  note_held();
}

void MemoryManager::swap_in(Entry& e) {
  const double t0 = now_s();
  if (e.leaving) {
    // Its copy out has not finished: the device storage is still there.
    e.storage = e.out->from().storage();
    stop_leaving(e);
    held_ -= e.bytes;  // counted again below
  } else {
    e.in = copy_to_device(e.out->bytes(), e.device);
    e.storage = e.in->bytes().storage();
  }
  retire(std::move(e.out));
  e.state = Entry::State::Resident;
  resident_[e.storage.unsafeGetStorageImpl()] = &e;
  if (e.unit) swapped_.erase(e.key());
  held_ += e.bytes;
  host_ -= e.bytes;
  ++counters_.swapped_in;
  counters_.swap_s += now_s() - t0;
}

void MemoryManager::replay_unit(Entry& e, Lock& lock) {
  const std::shared_ptr<UnitReplay> unit = e.unit;
  // One rerun makes every dropped tensor of the unit: `e` comes back, the
  // others too where they fit without releasing anything more.
  std::vector<std::shared_ptr<Entry>> others;
  for (Entry* d : dropped_)
    if (d->unit == unit && d != &e) others.push_back(d->shared_from_this());
  make_room(e.bytes, lock);
  // The rerun unpacks the unit's inputs, which may have to come back first.
  lock.unlock();
  const double t0 = now_s();
  UnitRemade remade = unit->replay();
  const double seconds = now_s() - t0;
  lock.lock();
  ++counters_.replays;
  counters_.replay_s += seconds;
  // Only the storages are wanted: the rerun's tensors also refer to its
  // inputs, which must not look held elsewhere when room is made below.
  auto storage_of = [&](const Entry& d) {
    const torch::Tensor* t = d.made_in(remade);
    TORCH_INTERNAL_ASSERT(t && static_cast<int64_t>(t->storage().nbytes()) == d.bytes, unit->what(),
                          " made other tensors when it ran again (", remade.saved.size(), " saved); it is not "
                          "deterministic");
    return t->storage();
  };
  refill(e, storage_of(e));
  std::vector<c10::Storage> other_storages;
  for (const auto& d : others) other_storages.push_back(storage_of(*d));
  remade = {};
  make_room(0, lock);  // the inputs the rerun brought back may have taken e's room
  for (size_t k = 0; k < others.size(); ++k) {
    Entry& d = *others[k];
    if (d.state == Entry::State::Dropped && (budget_.bytes == 0 || held_ + d.bytes <= budget_.bytes))
      refill(d, std::move(other_storages[k]));
  }
}

void MemoryManager::refill(Entry& d, c10::Storage storage) {
  d.storage = std::move(storage);
  d.state = Entry::State::Resident;
  resident_[d.storage.unsafeGetStorageImpl()] = &d;
  dropped_.erase(&d);
  held_ += d.bytes;
}

void MemoryManager::record_use(Entry& e) {
  const double now = now_s();
  if (e.prefetched) {
    e.prefetched = false;
    --prefetched_unused_;
  }
  if (!e.used && e.unit) {
    gap_s_[e.place()] = now - e.saved_at;
    if (recorded_run_ < 0) recorded_run_ = e.unit->run();
    if (e.unit->run() == recorded_run_ && use_position_.emplace(e.place(), use_order_.size()).second)
      use_order_.push_back(e.place());
  }
  e.used = true;
  e.last_use = now;
}

void MemoryManager::prefetch_after(const Entry& e, Lock&) {
  if (budget_.prefetch == 0 || !e.unit || swapped_.empty()) return;
  const auto at = use_position_.find(e.place());
  if (at == use_position_.end()) return;
  // Look a few uses ahead: entries already back (or dropped) are skipped.
  const size_t horizon = std::min(use_order_.size(), at->second + 1 + 8 * static_cast<size_t>(budget_.prefetch));
  for (size_t p = at->second + 1; p < horizon && prefetched_unused_ < budget_.prefetch; ++p) {
    const auto it = swapped_.find({e.unit->run(), use_order_[p].first, use_order_[p].second});
    if (it == swapped_.end()) continue;
    Entry& next = *it->second;
    if (budget_.bytes > 0 && held_ + next.bytes > budget_.bytes) return;  // only into free room
    swap_in(next);
    next.prefetched = true;
    ++prefetched_unused_;
    ++counters_.prefetched;
    note_held();
  }
}

void MemoryManager::make_room(int64_t extra, Lock&) {
  finish_transfers(false);
  if (budget_.bytes == 0) return;
  const double now = now_s();
  while (held_ + extra > budget_.bytes) {
    const Victim v = choose_victim(now);
    if (v.entry) {
      if (v.how == Release::Swap)
        swap_out(*v.entry);
      else
        drop(*v.entry);
    } else if (!leaving_.empty()) {
      finish_transfers(true);  // a copy out frees its device bytes when it finishes
    } else {
      needed_ = std::max(needed_, held_ + extra);
      return;
    }
  }
}

void MemoryManager::finish_transfers(bool wait_for_one) {
  if (wait_for_one && !leaving_.empty()) leaving_.front()->out->wait();
  for (auto it = leaving_.begin(); it != leaving_.end();) {
    Entry& e = **it;
    if (!e.out->finished()) {
      ++it;
      continue;
    }
    e.out->release_from();
    e.leaving = false;
    held_ -= e.bytes;
    it = leaving_.erase(it);
  }
  retiring_.erase(std::remove_if(retiring_.begin(), retiring_.end(), [](const auto& t) { return t->finished(); }),
                  retiring_.end());
}

void MemoryManager::stop_leaving(Entry& e) {
  leaving_.erase(std::find(leaving_.begin(), leaving_.end(), &e));
  e.leaving = false;
}

void MemoryManager::retire(std::unique_ptr<HostTransfer> transfer) {
  if (transfer && !transfer->finished()) retiring_.push_back(std::move(transfer));
}

MemoryManager::Victim MemoryManager::choose_victim(double now) const {
  Victim best;
  double best_score = std::numeric_limits<double>::infinity();
  for (const auto& [impl, e] : resident_) {
    // In use now, or held elsewhere too (releasing it would free nothing).
    if (e->pins > 0 || e->storage.use_count() > 1) continue;
    double cost = 0;
    const Release how = director(*e, now, &cost);
    if (how == Release::None) continue;
    const double staleness = std::max(now - e->last_use, 1e-9);
    const double score = cost / (static_cast<double>(e->bytes) * staleness);
    if (score < best_score) {
      best_score = score;
      best = {e, how};
    }
  }
  return best;
}

MemoryManager::Release MemoryManager::director(const Entry& e, double now, double* cost) const {
  const bool can_swap = budget_.policy != MemoryPolicy::Recompute;
  const bool can_drop = budget_.policy != MemoryPolicy::Swap && e.droppable();
  const double copy = static_cast<double>(e.bytes) / budget_.swap_bytes_per_s;  // one way
  const double rerun = can_drop ? e.unit->seconds() : 0;
  if (can_swap && can_drop) {
    // The copy back hides if it takes less than the compute left before the
    // next use (as recorded); with no record, the cheaper one goes.
    const bool hides = e.gap_s >= 0 ? copy <= e.gap_s - (now - e.saved_at) : 2 * copy <= rerun;
    *cost = hides ? 2 * copy : rerun;
    return hides ? Release::Swap : Release::Drop;
  }
  if (can_swap) {
    *cost = 2 * copy;
    return Release::Swap;
  }
  if (can_drop) {
    *cost = rerun;
    return Release::Drop;
  }
  return Release::None;
}

void MemoryManager::swap_out(Entry& e) {
  const double t0 = now_s();
  e.out = copy_to_host(e.storage);
  leave_device(e);
  e.state = Entry::State::Swapped;
  host_ += e.bytes;
  if (!e.out->finished()) {  // its device bytes stay held until the copy is done
    e.leaving = true;
    leaving_.push_back(&e);
    held_ += e.bytes;
  }
  if (e.unit) swapped_[e.key()] = &e;
  ++counters_.swapped_out;
  counters_.swapped_out_bytes += e.bytes;
  counters_.swap_s += now_s() - t0;
}

void MemoryManager::drop(Entry& e) {
  leave_device(e);
  e.state = Entry::State::Dropped;
  dropped_.insert(&e);
  ++counters_.dropped;
  counters_.dropped_bytes += e.bytes;
}

void MemoryManager::leave_device(Entry& e) {
  resident_.erase(e.storage.unsafeGetStorageImpl());
  e.storage = c10::Storage();
  held_ -= e.bytes;
}

void MemoryManager::note_held() { peak_ = std::max(peak_, held_); }

int64_t MemoryManager::held_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return held_;
}

int64_t MemoryManager::host_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return host_;
}

int64_t MemoryManager::peak_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_;
}

int64_t MemoryManager::needed_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return needed_;
}

int64_t MemoryManager::tensors_packed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return packed_;
}

MemoryCounters MemoryManager::counters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return counters_;
}

void MemoryManager::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  peak_ = held_;
  needed_ = 0;
  counters_ = {};
}

}  // namespace trine
