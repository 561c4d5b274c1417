// Internal to tensor_parallel/: the parameter a value is, possibly seen
// through ops that only look at it (aten::t, detach, to, contiguous), as
// LibTorch traces a linear's weight.
#pragma once
#include "trine/frontend/traced_model.h"

namespace trine {

struct ParameterUse {
  int input = -1;            // graph input index of the parameter; -1: not a parameter
  bool transposed = false;   // seen through an odd number of aten::t
};

ParameterUse parameter_behind(const TracedModel& model, const torch::jit::Value* v);
// Whether `n` only looks at its input (so its reader reads the parameter).
bool looks_through(const torch::jit::Node* n);

}  // namespace trine
