// Internal to frontend/: one step of a GraphRunner (an op, or a list/tuple
// construct or unpack), shared by graph_runner.cpp and segment_checkpoint.cpp.
#pragma once
#include "trine/frontend/graph_runner.h"

#include <torch/csrc/jit/runtime/operator.h>

namespace trine {

enum class StepKind { Op, ListConstruct, ListUnpack, TupleConstruct, TupleUnpack };

struct GraphRunner::Step {
  StepKind kind = StepKind::Op;
  mutable torch::jit::Operation op{nullptr};  // operator() is non-const in LibTorch
  std::vector<int> in, out, free_after;
  size_t position = 0;           // the node's position in the graph
  std::vector<int> written;      // inputs (slots) its schema says it writes in place
  c10::TypePtr list_elem;        // ListConstruct
  bool random = false;
  bool communicates = false;     // a collective (communicates())
  int64_t rng_id = 0;
  c10::Device device = c10::kCPU;  // whose generator a random op draws from
  std::string what;              // for error messages
};

// Whether `v` is, or contains, a tensor (a list or tuple of them).
bool holds_tensors(const c10::IValue& v);

}  // namespace trine
