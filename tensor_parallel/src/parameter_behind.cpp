#include "parameter_behind.h"

#include <set>
#include <string>

namespace trine {

bool looks_through(const torch::jit::Node* n) {
  static const std::set<std::string> ops{"aten::t", "aten::detach", "aten::to", "aten::contiguous"};
  return ops.count(n->kind().toQualString()) > 0;
}

ParameterUse parameter_behind(const TracedModel& model, const torch::jit::Value* v) {
  ParameterUse use;
  while (v->node()->kind() != c10::prim::Param) {
    const torch::jit::Node* n = v->node();
    if (!looks_through(n) || n->inputs().empty()) return {};
    if (n->kind() == c10::aten::t) use.transposed = !use.transposed;
    v = n->input(0);
  }
  const size_t i = v->offset();
  if (i >= model.inputs.size() || model.inputs[i].kind != InputKind::Parameter) return {};
  use.input = static_cast<int>(i);
  return use;
}

}  // namespace trine
