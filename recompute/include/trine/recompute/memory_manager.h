// The memory manager of saved activations (docs/design.md §4b): DELTA-style
// swapping and recomputation under a budget. As the policy of a
// SavedTensorScope (frontend/saved_tensors.h) it sees every tensor autograd
// saves while a stage runs (and the inputs checkpointed segments and units
// keep), and counts the bytes of the activations among them by storage: a
// storage saved several times counts once, for as long as some saved tensor
// refers to it.
//
// With a budget, whenever the bytes it holds would pass it, a filter picks
// victims among the held storages nobody else refers to (freeing them frees
// memory) by the lowest cost / (bytes x staleness), and a director decides
// per victim: swap (copy to a host pool, give the device storage up) or drop
// (give it up; the unit that saved it runs again from its kept inputs when a
// backward needs it: frontend/unit_replay.h). It swaps when the copy back
// fits in the compute before the tensor's next use (the gap recorded when
// that tensor was last used), drops otherwise; without a record it takes the
// cheaper of the copy and the rerun. Bringing one tensor back prefetches the
// next swapped ones in the order the first backward used them, while they fit
// and at most `prefetch` are back unused.
//
// Contract:
//   - Exact: every slot gives back the values it was given (swapped bytes are
//     copied back; dropped ones are made again by rerunning their unit, which
//     draws the same random numbers), so losses and gradients are bit-equal
//     to running without the manager, whatever the budget.
//   - held_bytes() never passes the budget after a pack or an unpack, unless
//     what it holds cannot be released (used right now, referred to elsewhere,
//     or forbidden by the policy); then needed_bytes() says the least budget
//     that would have been enough.
//   - Tensors sharing storage with `excluded` (the stage's parameters and
//     buffers) are kept as saved and not counted.
//   - Swaps copy on a side stream into pinned host memory on CUDA (the device
//     storage is given up, and stops counting, when the copy has finished;
//     a tensor brought back is used only after its copy), at once on the CPU,
//     where the host pool is host memory too: the same code path, so that the
//     policy runs in CI (the CUDA copies are built, not yet run on a GPU).
//   - Safe to use from several threads (sub-microbatch parts, autograd's).
#pragma once
#include "trine/frontend/saved_tensors.h"

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace trine {

class HostTransfer;

// Which releases the director may choose (names: memory_policy.cpp).
enum class MemoryPolicy { Swap, Recompute, Combined };
// Throws naming `key` (where the name came from) and listing the names.
MemoryPolicy memory_policy_named(const std::string& name, const std::string& key = "memory policy");
const char* memory_policy_name(MemoryPolicy policy);
std::vector<std::string> memory_policy_names();

struct MemoryBudget {
  int64_t bytes = 0;  // most bytes of saved activations held at once; 0: no budget (only count)
  MemoryPolicy policy = MemoryPolicy::Combined;
  double swap_bytes_per_s = 10e9;  // the host link the director plans with
  int prefetch = 2;                // swapped tensors brought back ahead of their use and not yet used, at most
};

struct MemoryCounters {
  int64_t swapped_out = 0, swapped_in = 0, prefetched = 0, dropped = 0, replays = 0;
  int64_t swapped_out_bytes = 0, dropped_bytes = 0;
  double swap_s = 0, replay_s = 0;  // copying, and rerunning units
};

class MemoryManager : public SavedTensorPolicy {
 public:
  explicit MemoryManager(const std::vector<torch::Tensor>& excluded = {}, MemoryBudget budget = {});
  ~MemoryManager() override;
  std::unique_ptr<SavedTensorSlot> pack(const torch::Tensor& saved, const PackSite& site) override;
  // Under a budget, packs carry their place (the prefetch order is kept by
  // place); units keep their inputs only when tensors may be dropped.
  bool wants_units() const override { return budget_.bytes > 0; }
  bool replays_units() const override { return budget_.bytes > 0 && budget_.policy != MemoryPolicy::Swap; }

  const MemoryBudget& budget() const { return budget_; }
  int64_t held_bytes() const;  // activations saved, not yet released, on the device
  int64_t host_bytes() const;  // swapped out
  int64_t peak_bytes() const;  // the most held at once since the last reset
  // 0 while the budget has been kept since the last reset; else the least
  // budget that would have been (the most bytes it could not release at once).
  int64_t needed_bytes() const;
  int64_t tensors_packed() const;  // activations and excluded tensors alike
  MemoryCounters counters() const;
  void reset_peak();  // peak, needed bytes and counters start again

 private:
  struct Entry;
  class Slot;
  enum class Release { None, Swap, Drop };
  struct Victim {
    Entry* entry = nullptr;
    Release how = Release::None;
  };
  using Lock = std::unique_lock<std::mutex>;

  std::shared_ptr<Entry> entry_for(const torch::Tensor& saved, const PackSite& site);
  torch::Tensor unpack(Slot& slot);
  void release(Entry& entry);  // a slot let go
  void make_resident(Entry& entry, Lock& lock);
  void swap_in(Entry& entry);  // copies it back, room or not
  void replay_unit(Entry& entry, Lock& lock);
  void refill(Entry& entry, c10::Storage storage);  // made again by its unit's rerun
  void prefetch_after(const Entry& entry, Lock& lock);
  void record_use(Entry& entry);
  // Releases victims until `extra` more bytes fit the budget.
  void make_room(int64_t extra, Lock& lock);
  Victim choose_victim(double now) const;
  Release director(const Entry& e, double now, double* cost) const;
  void swap_out(Entry& entry);
  // Copies out that have finished give their device bytes up (with
  // `wait_for_one`, after waiting for the oldest); finished copies retire.
  void finish_transfers(bool wait_for_one);
  void stop_leaving(Entry& entry);
  void retire(std::unique_ptr<HostTransfer> transfer);  // kept until it has finished
  void drop(Entry& entry);
  void leave_device(Entry& entry);
  void note_held();

  std::unordered_set<const c10::StorageImpl*> excluded_;
  MemoryBudget budget_;
  mutable std::mutex mutex_;
  std::unordered_map<const c10::StorageImpl*, Entry*> resident_;
  std::set<Entry*> dropped_;
  std::vector<Entry*> leaving_;  // swapped, copy out not finished: still held, oldest first
  std::vector<std::unique_ptr<HostTransfer>> retiring_;  // copies nobody waits for, not finished
  std::map<std::tuple<int64_t, int, int64_t>, Entry*> swapped_;  // by (run, unit, ordinal); unit entries only
  std::map<std::pair<int, int64_t>, double> gap_s_;         // (unit, ordinal) -> seconds from save to first use
  std::vector<std::pair<int, int64_t>> use_order_;          // first uses in the recorded backward
  std::map<std::pair<int, int64_t>, size_t> use_position_;
  int64_t recorded_run_ = -1;
  int64_t held_ = 0, host_ = 0, peak_ = 0, needed_ = 0, packed_ = 0;
  int prefetched_unused_ = 0;
  MemoryCounters counters_;
};

}  // namespace trine
