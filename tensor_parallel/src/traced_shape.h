// Internal to tensor_parallel/: the concrete shape a traced value's type
// records (tracing fixes every shape), or nullopt for non-tensors and
// tensors of unknown shape.
#pragma once
#include <torch/csrc/jit/ir/ir.h>

#include <optional>
#include <vector>

namespace trine {

inline std::optional<std::vector<int64_t>> traced_shape(const torch::jit::Value* v) {
  const auto t = v->type()->cast<c10::TensorType>();
  if (!t) return std::nullopt;
  return t->sizes().concrete_sizes();
}

}  // namespace trine
