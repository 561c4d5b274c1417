// Internal: a stable numbering of a traced graph's ops and values, shared by the
// proxy IR and the stage splitter so that both speak of the same op ids.
//   op i    = the i-th node of the graph that is not a prim::Constant
//   value v = graph inputs first (v = input index), then op outputs in order;
//             constants get no id.
#pragma once
#include <torch/csrc/jit/ir/ir.h>

#include <unordered_map>
#include <vector>

namespace trine::detail {

struct GraphIndex {
  std::vector<torch::jit::Node*> ops;
  std::vector<torch::jit::Value*> values;
  std::unordered_map<const torch::jit::Value*, int> value_id;  // absent for constants
  std::unordered_map<const torch::jit::Node*, int> op_id;

  explicit GraphIndex(torch::jit::Graph& graph) {
    for (torch::jit::Value* v : graph.inputs()) add_value(v);
    for (torch::jit::Node* n : graph.nodes()) {
      if (n->kind() == torch::jit::prim::Constant) continue;
      op_id[n] = static_cast<int>(ops.size());
      ops.push_back(n);
      for (torch::jit::Value* v : n->outputs()) add_value(v);
    }
  }
  int id(const torch::jit::Value* v) const {
    auto it = value_id.find(v);
    return it == value_id.end() ? -1 : it->second;
  }

 private:
  void add_value(torch::jit::Value* v) {
    value_id[v] = static_cast<int>(values.size());
    values.push_back(v);
  }
};

}  // namespace trine::detail
