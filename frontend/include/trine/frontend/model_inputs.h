// Facts about a traced model's data inputs that let trine check data before
// training on it.
#pragma once
#include "trine/frontend/traced_model.h"

#include <optional>
#include <string>
#include <utility>

namespace trine {

// When data input `data_input` (token ids) indexes an embedding table, through
// reshapes only: the table's parameter name and its number of rows (the
// vocabulary). Ids at or above it would fail inside a step.
std::optional<std::pair<std::string, int64_t>> embedding_rows_of_input(const TracedModel& model, int64_t data_input);

}  // namespace trine
