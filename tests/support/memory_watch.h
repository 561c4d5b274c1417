// Test helper for the multi-process equivalence binaries: follows the memory
// manager's figures step by step (runtime StepTimings) and counts a step whose
// saved activations passed the budget as a failure.
#pragma once
#include "trine/runtime/pipeline_executor.h"

#include <cstdio>
#include <string>

namespace trine::testing {

struct MemoryWatch {
  int64_t budget = 0;  // config.memory.budget_bytes; 0: nothing to watch
  std::string policy;
  int64_t saved_peak = 0, swapped = 0, dropped = 0;

  // Returns 1 when the step held more than the budget.
  int after_step(const StepTimings& t, int rank, int step) {
    saved_peak = std::max(saved_peak, t.saved_peak_bytes);
    swapped += t.memory.swapped_out;
    dropped += t.memory.dropped;
    if (budget == 0 || t.saved_peak_bytes <= budget) return 0;
    std::fprintf(stderr, "rank %d step %d: %lld bytes of saved activations held, budget %lld\n", rank, step,
                 static_cast<long long>(t.saved_peak_bytes), static_cast<long long>(budget));
    return 1;
  }
  void print(int rank) const {
    if (budget == 0) return;
    std::printf("rank %d: memory budget %lld (%s): saved activations peak %lld, %lld swapped, %lld dropped\n", rank,
                static_cast<long long>(budget), policy.c_str(), static_cast<long long>(saved_peak),
                static_cast<long long>(swapped), static_cast<long long>(dropped));
  }
};

}  // namespace trine::testing
