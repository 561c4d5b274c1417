// "parallel": "auto" (docs/design.md §6a): before anything else is built,
// rank 0 profiles the model's layers at two microbatch sizes, ranks every
// layout of the world's ranks with the layout planner (runtime/
// layout_planner.h) and publishes the fastest that fits config.partition.
// memory_limit_bytes (per device), or its error, through the store; every
// rank returns the config with that layout filled in (parallel dp/pp/tp,
// microbatches, schedule, virtual stages, recomputation). Collective.
#pragma once
#include "trine/frontend/traced_model.h"
#include "trine/runtime/train_config.h"

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <functional>

namespace trine {

// `trace_rows`: the model traced on the sample's first `rows` rows.
TrainConfig choose_layout(const TrainConfig& config, const SampleBatch& sample,
                          const std::function<TracedModel(const SampleBatch&)>& trace_rows, c10d::Store& store,
                          int rank, int world_size);

}  // namespace trine
