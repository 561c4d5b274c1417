#include "trine/frontend/attention_cores.h"

#include <map>

namespace trine {

namespace {

bool is_product_of_activations(const ProxyOp& op) {
  static const char* kinds[] = {"aten::matmul", "aten::bmm", "aten::baddbmm", "aten::einsum"};
  bool product = false;
  for (const char* k : kinds) product = product || op.kind == k;
  return product && op.params.empty() && !op.param_only;
}

bool is_fused_attention(const ProxyOp& op) {
  return op.kind == "aten::scaled_dot_product_attention" ||
         op.kind == "aten::_scaled_dot_product_flash_attention" ||
         op.kind == "aten::_scaled_dot_product_efficient_attention";
}

}  // namespace

std::vector<AttentionCore> attention_cores(const ProxyGraph& proxy) {
  std::vector<AttentionCore> cores;
  std::map<int, int> open;  // layer -> op id of its unmatched q·kᵀ product
  for (size_t o = 0; o < proxy.ops.size(); ++o) {
    const ProxyOp& op = proxy.ops[o];
    if (op.param_only) continue;
    if (is_fused_attention(op)) {
      cores.push_back({op.layer, {static_cast<int>(o)}});
      continue;
    }
    if (!is_product_of_activations(op)) continue;
    auto it = open.find(op.layer);
    if (it == open.end()) {
      open[op.layer] = static_cast<int>(o);
      continue;
    }
    AttentionCore core{op.layer, {}};
    for (int k = it->second; k <= static_cast<int>(o); ++k)
      if (proxy.ops[k].layer == op.layer && !proxy.ops[k].param_only) core.ops.push_back(k);
    cores.push_back(std::move(core));
    open.erase(it);
  }
  return cores;
}

}  // namespace trine
