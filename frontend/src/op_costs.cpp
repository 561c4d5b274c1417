#include "trine/frontend/op_costs.h"

#include <ATen/core/function_schema.h>

#include <optional>

namespace trine {

namespace jit = torch::jit;

namespace {

std::optional<std::vector<int64_t>> shape_of(const jit::Value* v) {
  auto t = v->type()->cast<c10::TensorType>();
  if (!t) return std::nullopt;
  return t->sizes().concrete_sizes();
}

double numel(const std::vector<int64_t>& s) {
  double n = 1;
  for (auto d : s) n *= static_cast<double>(d);
  return n;
}

double output_elements(const jit::Node* node) {
  double n = 0;
  for (size_t i = 0; i < node->outputs().size(); ++i) {
    if (output_is_view(node, i)) continue;
    if (auto s = shape_of(node->output(i))) n += numel(*s);
  }
  return n;
}

bool is_none(const jit::Value* v) { return v->type()->kind() == c10::TypeKind::NoneType; }

}  // namespace

bool output_is_view(const jit::Node* node, size_t i) {
  switch (node->kind()) {
    case jit::prim::ListUnpack:
    case jit::prim::TupleUnpack:
    case jit::prim::ListConstruct:
    case jit::prim::TupleConstruct:
      return true;  // containers and their elements: no new memory
    default: break;
  }
  const c10::FunctionSchema* schema = node->maybeSchema();
  if (!schema || i >= schema->returns().size()) return false;
  const auto* alias = schema->returns()[i].alias_info();
  return alias != nullptr && !alias->isWrite();
}

double forward_flops(const jit::Node* node) {
  const std::string kind = node->kind().toQualString();
  auto in = [&](size_t i) { return shape_of(node->input(i)); };
  if (node->outputs().empty()) return 0;
  const auto out = shape_of(node->output(0));

  if (kind == "aten::linear") {  // x [..., k] @ w[n, k]^T (+ b)
    auto x = in(0), w = in(1);
    if (x && w && out) return 2.0 * numel(*x) * (*w)[0] + (is_none(node->input(2)) ? 0 : numel(*out));
  } else if (kind == "aten::addmm" || kind == "aten::baddbmm" || kind == "aten::addbmm") {
    auto a = in(1);
    if (a && out) return 2.0 * numel(*out) * a->back() + numel(*out);
  } else if (kind == "aten::mm" || kind == "aten::bmm" || kind == "aten::matmul") {
    auto a = in(0);
    if (a && out && !a->empty()) return 2.0 * numel(*out) * a->back();
  } else if (kind == "aten::_convolution" || kind == "aten::convolution" || kind == "aten::conv1d" ||
             kind == "aten::conv2d" || kind == "aten::conv3d") {
    // weight [c_out, c_in / groups, k...]: every output element is a dot product of that length.
    auto w = in(1);
    bool transposed = false;
    if ((kind == "aten::_convolution" || kind == "aten::convolution") && node->inputs().size() > 6)
      transposed = jit::toIValue(node->input(6)).value_or(false).toBool();
    if (w && out) {
      std::vector<int64_t> per(w->begin() + 1, w->end());
      // A transposed convolution scatters each *input* element over c_out/groups x k outputs.
      auto x = in(0);
      return transposed && x ? 2.0 * numel(*x) * numel(per) : 2.0 * numel(*out) * numel(per);
    }
  } else if (kind == "aten::scaled_dot_product_attention") {
    auto q = in(0), k = in(1), v = in(2);
    if (q && k && v && q->size() >= 2) {
      const double lq = (*q)[q->size() - 2], d = q->back(), lk = (*k)[k->size() - 2], dv = v->back();
      const double batch = numel(*q) / (lq * d);
      return 2.0 * batch * lq * lk * d + 2.0 * batch * lq * lk * dv + batch * lq * lk;
    }
  }
  return output_elements(node);
}

}  // namespace trine
