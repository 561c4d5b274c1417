// Internal to tensor_parallel/: the small edits of a stage graph that its
// rewrites (stage_sharding.cpp, sub_microbatches.cpp) share.
#pragma once
#include <torch/csrc/jit/ir/ir.h>

#include <c10/util/Exception.h>

#include <string>
#include <vector>

namespace trine {

inline torch::jit::Value* insert_constant(torch::jit::Graph& graph, const c10::IValue& value,
                                          torch::jit::Node* before) {
  torch::jit::WithInsertPoint guard(before);
  return graph.insertConstant(value);
}

// A node of `kind` with one output of `type`, before `before`; its operator must exist.
inline torch::jit::Node* insert_op(torch::jit::Graph& graph, c10::Symbol kind,
                                   const std::vector<torch::jit::Value*>& inputs, const c10::TypePtr& type,
                                   torch::jit::Node* before) {
  torch::jit::Node* node = graph.create(kind, inputs, 1);
  node->insertBefore(before);
  node->output()->setType(type);
  TORCH_INTERNAL_ASSERT(node->maybeOperator() != nullptr, "no operator for ", kind.toQualString());
  return node;
}

// An in-place dropout (aten::dropout_) becomes an out-of-place op only when
// nothing reads its input after it. `what` opens the error ("tensor
// parallelism: the in-place dropout of ...").
inline void check_in_place_dropout_read_last(const torch::jit::Node* n, const std::string& what) {
  if (n->kind() != c10::aten::dropout_) return;
  for (const torch::jit::Use& use : n->input(0)->uses())
    TORCH_CHECK(use.user == n || use.user->isBefore(n), what, " is read again through its input; use an "
                "out-of-place dropout");
}

}  // namespace trine
