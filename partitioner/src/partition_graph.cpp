#include "trine/partitioner/partition_graph.h"

#include "trine/schedules/schedule_registry.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <unordered_set>

namespace trine {

namespace {

std::vector<std::vector<int>> distinct_sorted(std::vector<std::vector<int>> lists) {
  for (auto& l : lists) {
    std::sort(l.begin(), l.end());
    l.erase(std::unique(l.begin(), l.end()), l.end());
  }
  return lists;
}

}  // namespace

std::vector<std::vector<int>> PartitionGraph::producers() const {
  std::vector<std::vector<int>> out(layers.size());
  for (const Value& v : values)
    for (int c : v.consumers) out[c].push_back(v.producer);
  return distinct_sorted(std::move(out));
}

std::vector<std::vector<int>> PartitionGraph::consumers() const {
  std::vector<std::vector<int>> out(layers.size());
  for (const Value& v : values)
    for (int c : v.consumers) out[v.producer].push_back(c);
  return distinct_sorted(std::move(out));
}

int PartitionGraph::find_layer(const std::string& name) const {
  for (size_t l = 0; l < layers.size(); ++l)
    if (layers[l].name == name) return static_cast<int>(l);
  return -1;
}

void PartitionGraph::check() const {
  TORCH_CHECK(!layers.empty(), "the model has no layers to partition");
  std::unordered_set<std::string> names;
  for (const Layer& l : layers) {
    TORCH_CHECK(names.insert(l.name).second, "two layers are named '", l.name, "'");
    TORCH_CHECK(l.forward_s >= 0 && l.backward_s >= 0 && l.activation_bytes >= 0, "layer '", l.name,
                "' has a negative cost");
    for (int p : l.params)
      TORCH_CHECK(p >= 0 && p < static_cast<int>(params.size()), "layer '", l.name, "' reads parameter ", p,
                  ", which does not exist");
  }
  const int n = num_layers();
  for (const Value& v : values) {
    TORCH_CHECK(v.producer >= 0 && v.producer < n, "value '", v.name, "' has no producing layer");
    for (int c : v.consumers)
      TORCH_CHECK(c > v.producer && c < n, "value '", v.name, "' of layer '", layers[v.producer].name,
                  "' is read by ", c >= 0 && c < n ? "'" + layers[c].name + "'" : std::to_string(c),
                  ", which is not a later layer: layers must be in topological order");
  }
  for (int l : output_layers) TORCH_CHECK(l >= 0 && l < n, "output layer ", l, " does not exist");
}

PartitionGraph make_partition_graph(const ProxyGraph& proxy, const CostModel& costs) {
  TORCH_CHECK(costs.layers.size() == proxy.layers.size(), "the cost model has ", costs.layers.size(),
              " layers but the model has ", proxy.layers.size(), ": it was made for another model; profile again");
  PartitionGraph g;
  for (size_t l = 0; l < proxy.layers.size(); ++l) {
    const LayerCost& c = costs.layers[l];
    g.layers.push_back({proxy.layers[l].name, c.forward_s, c.backward_s, c.activation_bytes, proxy.layers[l].params});
  }
  for (const ProxyParameter& p : proxy.params) {
    PartitionGraph::Param q;
    q.name = p.name;
    q.bytes = p.bytes;
    const bool trainable = p.requires_grad && !p.is_buffer;
    q.state_bytes = trainable ? static_cast<int64_t>(p.bytes * (2 + costs.optimizer_state_factor)) : p.bytes;
    if (trainable) {
      q.numel = 1;
      for (int64_t d : p.shape) q.numel *= d;
    }
    g.params.push_back(q);
  }
  for (const ProxyValue& v : proxy.values) {
    if (v.producer < 0 || proxy.ops[v.producer].param_only) continue;  // data, or recomputed per stage
    const int from = proxy.ops[v.producer].layer;
    std::set<int> to;
    for (int c : v.consumers)
      if (proxy.ops[c].layer != from) to.insert(proxy.ops[c].layer);
    if (to.empty()) continue;
    g.values.push_back({v.name, from, std::vector<int>(to.begin(), to.end()), v.bytes, v.is_tensor});
  }
  std::set<int> outs;
  for (int v : proxy.outputs) {
    const int op = proxy.values[v].producer;
    if (op >= 0 && !proxy.ops[op].param_only) outs.insert(proxy.ops[op].layer);
  }
  g.output_layers.assign(outs.begin(), outs.end());
  g.check();
  return g;
}

int PipelineShape::in_flight(int stage, int num_stages) const {
  TORCH_CHECK(virtual_stages >= 1 && num_stages % virtual_stages == 0, num_stages, " stages do not split into ",
              virtual_stages, " virtual stages per pipeline rank");
  const int ranks = num_stages / virtual_stages;
  const int m = microbatches > 0 ? microbatches : ranks;
  return std::max(1, peak_in_flight(schedule, ranks, m, virtual_stages).at(stage));
}

std::vector<StageEstimate> estimate_stages(const PartitionGraph& graph, const std::vector<int>& stage_of_layer,
                                           const PipelineShape& shape) {
  TORCH_CHECK(stage_of_layer.size() == graph.layers.size(), "an assignment of ", stage_of_layer.size(),
              " layers for a graph of ", graph.layers.size());
  int k = 0;
  for (int s : stage_of_layer) {
    TORCH_CHECK(s >= 0, "a layer without a stage");
    k = std::max(k, s + 1);
  }
  std::vector<StageEstimate> est(k);
  std::vector<std::set<int>> held(k);
  for (int l = 0; l < graph.num_layers(); ++l) {
    const auto& layer = graph.layers[l];
    StageEstimate& e = est[stage_of_layer[l]];
    e.layers.push_back(l);
    e.forward_s += layer.forward_s;
    e.backward_s += layer.backward_s;
    e.activation_bytes += layer.activation_bytes;
    held[stage_of_layer[l]].insert(layer.params.begin(), layer.params.end());
  }
  for (int s = 0; s < k; ++s) {
    for (int p : held[s]) {
      est[s].param_bytes += graph.params[p].bytes;
      est[s].state_bytes += graph.params[p].state_bytes;
    }
    est[s].in_flight = shape.in_flight(s, k);
    est[s].memory_bytes = est[s].state_bytes + est[s].activation_bytes * est[s].in_flight;
  }
  for (const auto& v : graph.values) {
    const int from = stage_of_layer[v.producer];
    std::set<int> to;
    for (int c : v.consumers)
      if (stage_of_layer[c] != from) to.insert(stage_of_layer[c]);
    for (int s : to) {
      est[from].sent_bytes += v.bytes;
      est[s].received_bytes += v.bytes;
    }
  }
  return est;
}

double slowest_stage_s(const std::vector<StageEstimate>& stages) {
  double worst = 0;
  for (const auto& s : stages) worst = std::max(worst, s.time_s());
  return worst;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::abs(bytes) >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

int64_t cut_bytes(const std::vector<StageEstimate>& stages) {
  int64_t total = 0;
  for (const auto& s : stages) total += s.sent_bytes;
  return total;
}

}  // namespace trine
