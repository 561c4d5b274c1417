// Counts the bytes allocated minus the bytes freed on this thread while it is
// installed, through the allocators' memory-reporting hook (the one LibTorch's
// profiler uses; CPU and CUDA allocators both report). Unlike looking at op
// outputs, it also sees what composite ops allocate inside and autograd keeps
// (a cross-entropy's log-softmax, a layer norm's mean and rstd, dropout masks).
//
//   auto counter = std::make_shared<AllocationCounter>();
//   { AllocationCounting counting(counter); ...run...; }  // counter->live(), ->peak()
#pragma once
#include <c10/core/Device.h>
#include <c10/util/ThreadLocalDebugInfo.h>

#include <algorithm>
#include <memory>

namespace trine {

class AllocationCounter : public c10::MemoryReportingInfoBase {
 public:
  void reportMemoryUsage(void*, int64_t bytes, size_t, size_t, c10::Device) override {
    live_ += bytes;
    peak_ = std::max(peak_, live_);
  }
  bool memoryProfilingEnabled() const override { return true; }
  int64_t live() const { return live_; }
  int64_t peak() const { return peak_; }  // highest live() since installed

 private:
  int64_t live_ = 0, peak_ = 0;
};

// Installs a counter on this thread for its lifetime.
class AllocationCounting {
 public:
  explicit AllocationCounting(std::shared_ptr<AllocationCounter> counter)
      : guard_(c10::DebugInfoKind::PROFILER_STATE, std::move(counter)) {}

 private:
  c10::DebugInfoGuard guard_;
};

}  // namespace trine
