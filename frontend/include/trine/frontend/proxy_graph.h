// ProxyGraph: trine's own small, serialisable picture of a traced model
// (docs/design.md §3). It is what the partitioner reasons about and what
// users inspect: ops with costs, values with shapes and bytes, parameters, and
// layers (ops grouped by the parameter prefix they read).
//
// Layers. A parameter "blocks.3.attn.qkv.weight" belongs to the layer named by
// its path up to and including the first index component: a number ("blocks.3")
// or a name ending in "_<number>" ("encoder.layers.encoder_layer_3"); when
// there is none, to the module that owns it ("tok_emb", "transformer.ln_f").
// An op joins the layer of
// the parameters it reads (through parameter-only ops like a transpose); an op
// that reads none joins the latest layer among its producers. When an op reads
// an earlier layer's parameters but consumes a later layer's activations (a tied
// LM head reading the token embedding), it goes to a new layer "<name>#2": the
// parameter is then held by two layers. Layers are numbered in order of their
// first op and every data edge goes from a layer to itself or a later one.
//
// Parameter-only ops (inputs only parameters, buffers and constants, e.g. a
// weight transpose or a position arange) are not owned by any stage: the stage
// splitter recomputes them wherever they are needed. They are listed in the
// layer of their first consumer for costing.
#pragma once
#include "trine/frontend/traced_model.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace trine {

struct ProxyValue {
  std::string name;             // debug name in the traced graph
  bool is_tensor = true;
  std::vector<int64_t> shape;   // tensors only
  std::string dtype;            // tensors only
  int64_t bytes = 0;            // tensors only
  int producer = -1;            // op id; -1 for a graph input
  int input_index = -1;         // graph input position, or -1
  std::vector<int> consumers;   // op ids
};

struct ProxyOp {
  std::string kind;             // "aten::addmm"
  std::vector<int> inputs;      // value ids (constants omitted)
  std::vector<int> outputs;     // value ids
  std::vector<int> params;      // parameter ids read, directly or through parameter-only ops
  int layer = -1;
  bool param_only = false;      // computed from parameters/buffers/constants alone
  bool random = false;          // draws random numbers (dropout, rand, ...)
  double flops = 0;             // forward FLOPs
  int64_t activation_bytes = 0; // bytes of the new (non-view) tensors it outputs
};

struct ProxyParameter {
  std::string name;
  std::vector<std::string> aliases;
  int value = -1;               // value id of its graph input
  bool is_buffer = false;
  bool requires_grad = false;
  std::vector<int64_t> shape;
  int64_t bytes = 0;
  std::vector<int> layers;      // layers whose ops read it (two or more: tied)
};

struct ProxyLayer {
  std::string name;
  std::vector<int> ops;
  std::vector<int> params;
  double flops = 0;
  int64_t param_bytes = 0;
  int64_t activation_bytes = 0;
};

struct LayerOptions {
  // Maps a parameter or buffer name to its layer name; empty uses the rule above.
  std::function<std::string(const std::string&)> layer_of;
};

class ProxyGraph {
 public:
  std::string description;
  std::vector<ProxyOp> ops;
  std::vector<ProxyValue> values;
  std::vector<ProxyParameter> params;
  std::vector<ProxyLayer> layers;
  std::vector<int> data_inputs;    // value ids of data inputs, in order
  std::vector<int> target_inputs;  // value ids of targets, in order
  std::vector<int> outputs;        // value ids of the graph outputs
  bool has_loss = false;

  double total_flops() const;
  int64_t total_param_bytes() const;
  int64_t total_activation_bytes() const;
  // Distinct (producer layer, consumer layer) pairs with producer != consumer.
  std::vector<std::pair<int, int>> layer_edges() const;
  int find_layer(const std::string& name) const;  // -1 if absent
  int find_param(const std::string& name) const;  // by name or alias; -1 if absent

  // A table with one row per layer and a totals row.
  std::string layer_table() const;

  nlohmann::json to_json() const;
  static ProxyGraph from_json(const nlohmann::json& j);
  // Written to a temporary file and renamed: a crash never leaves half a file.
  void save(const std::string& path) const;
  static ProxyGraph load(const std::string& path);
};

ProxyGraph build_proxy_graph(const TracedModel& model, const LayerOptions& options = {});

// The default layer rule (see above), exposed for tests and users' overrides.
std::string default_layer_of(const std::string& param_name);

}  // namespace trine
