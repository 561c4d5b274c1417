#include "trine/frontend/model_inputs.h"

#include <unordered_set>

namespace trine {

namespace jit = torch::jit;

std::optional<std::pair<std::string, int64_t>> embedding_rows_of_input(const TracedModel& model, int64_t data_input) {
  int64_t position = -1, seen = 0;
  for (size_t i = 0; i < model.inputs.size(); ++i)
    if (model.inputs[i].kind == InputKind::Data && seen++ == data_input) position = static_cast<int64_t>(i);
  if (position < 0) return std::nullopt;
  // Ops that move ids around without changing them.
  static const std::unordered_set<std::string> reshapes{"aten::view", "aten::reshape", "aten::flatten",
                                                        "aten::contiguous", "aten::unsqueeze", "aten::to",
                                                        "aten::clone", "aten::slice", "aten::expand"};
  std::vector<const jit::Value*> todo{model.graph->inputs()[position]};
  std::unordered_set<const jit::Value*> visited;
  while (!todo.empty()) {
    const jit::Value* v = todo.back();
    todo.pop_back();
    if (!visited.insert(v).second) continue;
    for (const jit::Use& use : v->uses()) {
      const jit::Node* n = use.user;
      const std::string kind = n->kind().toQualString();
      if (kind == "aten::embedding" && use.offset == 1 && n->input(0)->node()->kind() == jit::prim::Param) {
        const size_t w = n->input(0)->offset();
        const GraphInput& weight = model.inputs.at(w);
        return std::make_pair(weight.name, weight.value.size(0));
      }
      if (reshapes.count(kind) && use.offset == 0)
        for (const jit::Value* out : n->outputs()) todo.push_back(out);
    }
  }
  return std::nullopt;
}

}  // namespace trine
