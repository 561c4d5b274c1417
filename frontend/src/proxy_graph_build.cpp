// Building a ProxyGraph from a traced model: values, parameters, ops with costs,
// and the grouping of ops into layers (rules in proxy_graph.h).
#include "trine/frontend/proxy_graph.h"

#include "graph_index.h"
#include "trine/frontend/graph_runner.h"
#include "trine/frontend/op_costs.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <set>

namespace trine {

namespace jit = torch::jit;

std::string default_layer_of(const std::string& param_name) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t dot = param_name.find('.', start);
    parts.push_back(param_name.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  auto numeric = [](const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
  };
  // A container index: "3" in "blocks.3", or a numbered name such as
  // "encoder_layer_3" (torchvision's ViT), but not "layer1" or "conv1".
  auto indexed = [&](const std::string& s) {
    const size_t underscore = s.rfind('_');
    return numeric(s) || (underscore != std::string::npos && underscore > 0 && numeric(s.substr(underscore + 1)));
  };
  // Up to and including the first indexed component: "blocks.3.attn.qkv.weight" -> "blocks.3".
  std::string name;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    name += (i ? "." : "") + parts[i];
    if (indexed(parts[i])) return name;
  }
  // No container index: the module that owns it ("tok_emb.weight" -> "tok_emb",
  // "model.transformer.wte.weight" -> "model.transformer.wte"); a parameter
  // of the root module is its own layer.
  return parts.size() > 1 ? name : param_name;
}

namespace {

bool writes_an_input(const jit::Node* node) {
  const c10::FunctionSchema* schema = node->maybeSchema();
  if (schema == nullptr) return false;
  for (const auto& arg : schema->arguments())
    if (arg.alias_info() != nullptr && arg.alias_info()->isWrite()) return true;
  return false;
}

void fill_values(ProxyGraph& g, const detail::GraphIndex& idx) {
  g.values.resize(idx.values.size());
  for (size_t v = 0; v < idx.values.size(); ++v) {
    const jit::Value* jv = idx.values[v];
    ProxyValue& pv = g.values[v];
    pv.name = jv->debugName();
    auto tt = jv->type()->cast<c10::TensorType>();
    pv.is_tensor = static_cast<bool>(tt);
    if (tt) {
      if (auto sizes = tt->sizes().concrete_sizes()) pv.shape = *sizes;
      if (auto st = tt->scalarType()) {
        pv.dtype = c10::toString(*st);
        int64_t n = 1;
        for (auto d : pv.shape) n *= d;
        pv.bytes = n * static_cast<int64_t>(c10::elementSize(*st));
      }
    }
    if (jv->node()->kind() == jit::prim::Param) {
      pv.input_index = static_cast<int>(jv->offset());
    } else {
      pv.producer = idx.op_id.at(jv->node());
    }
  }
}

void fill_params(ProxyGraph& g, const TracedModel& model) {
  for (size_t i = 0; i < model.inputs.size(); ++i) {
    const GraphInput& in = model.inputs[i];
    switch (in.kind) {
      case InputKind::Data: g.data_inputs.push_back(static_cast<int>(i)); break;
      case InputKind::Target: g.target_inputs.push_back(static_cast<int>(i)); break;
      case InputKind::Parameter:
      case InputKind::Buffer: {
        ProxyParameter p;
        p.name = in.name;
        p.aliases = in.aliases;
        p.value = static_cast<int>(i);
        p.is_buffer = in.kind == InputKind::Buffer;
        p.requires_grad = in.value.requires_grad();
        p.shape = in.value.sizes().vec();
        p.bytes = static_cast<int64_t>(in.value.numel() * in.value.element_size());
        g.params.push_back(std::move(p));
      }
    }
  }
}

void fill_ops(ProxyGraph& g, const detail::GraphIndex& idx) {
  std::map<int, int> param_of_value;
  for (size_t p = 0; p < g.params.size(); ++p) param_of_value[g.params[p].value] = static_cast<int>(p);
  // Parameters behind each value computed from parameters alone.
  std::vector<std::set<int>> closure(g.values.size());
  std::vector<bool> param_derived(g.values.size(), false);
  for (auto& [v, p] : param_of_value) {
    param_derived[v] = true;
    closure[v].insert(p);
  }
  g.ops.resize(idx.ops.size());
  for (size_t o = 0; o < idx.ops.size(); ++o) {
    const jit::Node* node = idx.ops[o];
    ProxyOp& op = g.ops[o];
    op.kind = node->kind().toQualString();
    op.random = draws_random_numbers(node);
    op.flops = forward_flops(node);
    // An in-place update of a buffer (BatchNorm's num_batches_tracked += 1)
    // reads buffers alone but must run once per forward where the buffer
    // lives: it belongs to a layer like any op, not to the recomputed ones.
    bool only_params = !op.random && !node->hasSideEffects() && !writes_an_input(node);
    std::set<int> read;
    for (const jit::Value* in : node->inputs()) {
      const int v = idx.id(in);
      if (v < 0) continue;  // a constant
      op.inputs.push_back(v);
      g.values[v].consumers.push_back(static_cast<int>(o));
      if (param_derived[v]) read.insert(closure[v].begin(), closure[v].end());
      else only_params = false;
    }
    op.param_only = only_params;
    op.params.assign(read.begin(), read.end());
    for (size_t i = 0; i < node->outputs().size(); ++i) {
      const int v = idx.id(node->output(i));
      op.outputs.push_back(v);
      if (!output_is_view(node, i)) op.activation_bytes += g.values[v].bytes;
      if (only_params) {
        param_derived[v] = true;
        closure[v] = read;
      }
    }
  }
}

// Layer grouping; see proxy_graph.h for the rules.
void assign_layers(ProxyGraph& g, const LayerOptions& options) {
  auto layer_name = [&](int param) {
    return options.layer_of ? options.layer_of(g.params[param].name) : default_layer_of(g.params[param].name);
  };
  std::map<std::string, std::vector<int>> instances;  // base name -> layer ids, oldest first
  auto new_layer = [&](const std::string& base) {
    auto& inst = instances[base];
    const std::string name = inst.empty() ? base : base + "#" + std::to_string(inst.size() + 1);
    g.layers.push_back(ProxyLayer{name, {}, {}, 0, 0, 0});
    inst.push_back(static_cast<int>(g.layers.size()) - 1);
    return inst.back();
  };
  std::vector<int> pending;  // ops placed by their consumers
  for (size_t o = 0; o < g.ops.size(); ++o) {
    ProxyOp& op = g.ops[o];
    if (op.param_only) {
      pending.push_back(static_cast<int>(o));
      continue;
    }
    int latest_producer = -1;
    for (int v : op.inputs) {
      const int p = g.values[v].producer;
      if (p >= 0 && !g.ops[p].param_only) latest_producer = std::max(latest_producer, g.ops[p].layer);
    }
    if (!op.params.empty()) {
      // The parameters' newest layer instance, if it may still take this op.
      int best = -1;
      std::string best_base;
      for (int p : op.params) {
        const std::string base = layer_name(p);
        auto it = instances.find(base);
        const int latest = it == instances.end() ? -1 : it->second.back();
        if (best_base.empty() || latest > best) {
          best = latest;
          best_base = base;
        }
      }
      op.layer = (best >= 0 && best >= latest_producer) ? best : new_layer(best_base);
    } else if (latest_producer >= 0) {
      op.layer = latest_producer;
    } else {
      pending.push_back(static_cast<int>(o));  // reads data and constants only
    }
  }
  if (g.layers.empty()) new_layer("model");  // a model without parameters is one layer
  // Pending ops go to the earliest layer among their consumers (reverse order, so
  // consumers are placed first); unused ones to the last layer.
  std::sort(pending.rbegin(), pending.rend());
  for (int o : pending) {
    int layer = -1;
    for (int v : g.ops[o].outputs)
      for (int c : g.values[v].consumers)
        if (g.ops[c].layer >= 0) layer = layer < 0 ? g.ops[c].layer : std::min(layer, g.ops[c].layer);
    g.ops[o].layer = layer >= 0 ? layer : static_cast<int>(g.layers.size()) - 1;
  }
  // Aggregates.
  std::vector<std::set<int>> layer_params(g.layers.size());
  for (size_t o = 0; o < g.ops.size(); ++o) {
    const ProxyOp& op = g.ops[o];
    ProxyLayer& l = g.layers[op.layer];
    l.ops.push_back(static_cast<int>(o));
    l.flops += op.flops;
    l.activation_bytes += op.activation_bytes;
    layer_params[op.layer].insert(op.params.begin(), op.params.end());
  }
  for (size_t l = 0; l < g.layers.size(); ++l) {
    for (int p : layer_params[l]) {
      g.layers[l].params.push_back(p);
      g.layers[l].param_bytes += g.params[p].bytes;
      g.params[p].layers.push_back(static_cast<int>(l));
    }
  }
}

}  // namespace

ProxyGraph build_proxy_graph(const TracedModel& model, const LayerOptions& options) {
  TORCH_CHECK(model.graph, "build_proxy_graph: the traced model has no graph");
  detail::GraphIndex idx(*model.graph);
  ProxyGraph g;
  g.description = model.description;
  g.has_loss = model.has_loss;
  fill_values(g, idx);
  fill_params(g, model);
  fill_ops(g, idx);
  for (const jit::Value* out : model.graph->outputs()) {
    const int v = idx.id(out);
    TORCH_CHECK(v >= 0, "the traced graph returns a constant; nothing to train");
    g.outputs.push_back(v);
  }
  assign_layers(g, options);
  return g;
}

}  // namespace trine
