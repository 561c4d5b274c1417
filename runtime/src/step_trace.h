// logging.trace: the timelines every rank recorded of its first steps
// (PipelineExecutor::start_tracing) gathered on rank 0 through the store and
// written there as one Chrome/Perfetto trace file (atomically), one process
// row per rank. Collective: every rank calls it once.
#pragma once
#include "trine/schedules/schedule_simulator.h"

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace trine {

// `mine`: this rank's events (their `rank` is overwritten with `rank`);
// `rank_names`: rank 0's names for every rank's row. Returns the events
// written (rank 0) or sent (the others).
size_t write_step_trace(c10d::Store& store, int rank, int world_size, std::vector<TimelineEvent> mine,
                      const std::vector<std::string>& rank_names, const std::string& path,
                      std::chrono::milliseconds timeout);

}  // namespace trine
