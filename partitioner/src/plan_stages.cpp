#include "trine/frontend/stage_split.h"
#include "trine/partitioner/stage_plan.h"

#include <c10/util/Exception.h>

#include <set>
#include <unordered_map>

namespace trine {

StagePlan make_stage_plan(const ProxyGraph& proxy, const PartitionGraph& graph, const std::vector<int>& stage_of_layer,
                          const PlanOptions& options, const std::string& method, const std::string& cost_source) {
  const int k = check_stage_assignment(proxy, stage_of_layer);
  const auto est = estimate_stages(graph, stage_of_layer, options.pipeline);
  StagePlan plan;
  plan.model = proxy.description;
  plan.method = method;
  plan.cost_source = cost_source;
  plan.pipeline = options.pipeline;
  plan.memory_limit_bytes = options.memory_limit_bytes;
  plan.num_layers = graph.num_layers();
  plan.stages.resize(k);
  for (int s = 0; s < k; ++s) {
    PlanStage& st = plan.stages[s];
    const StageEstimate& e = est[s];
    std::set<int> params;
    for (int l : e.layers) {
      st.layers.push_back(graph.layers[l].name);
      params.insert(graph.layers[l].params.begin(), graph.layers[l].params.end());
    }
    for (int p : params) st.params.push_back(graph.params[p].name);
    st.forward_s = e.forward_s;
    st.backward_s = e.backward_s;
    st.param_bytes = e.param_bytes;
    st.state_bytes = e.state_bytes;
    st.activation_bytes = e.activation_bytes;
    st.in_flight = e.in_flight;
    st.memory_bytes = e.memory_bytes;
  }
  std::unordered_map<std::string, int> value_id;
  for (size_t v = 0; v < proxy.values.size(); ++v) value_id.emplace(proxy.values[v].name, static_cast<int>(v));
  for (const auto& v : graph.values) {
    const int from = stage_of_layer[v.producer];
    std::set<int> to;
    for (int c : v.consumers)
      if (stage_of_layer[c] != from) to.insert(stage_of_layer[c]);
    if (to.empty()) continue;
    TORCH_CHECK(v.is_tensor, "value '", v.name, "' of layer '", graph.layers[v.producer].name,
                "' is not a tensor and cannot cross from stage ", from, " to stage ", *to.begin(),
                "; keep its producer and readers on one stage");
    PlanTransfer t{v.name, -1, v.bytes, {}, ""};
    if (auto it = value_id.find(v.name); it != value_id.end()) {
      t.shape = proxy.values[it->second].shape;
      t.dtype = proxy.values[it->second].dtype;
    }
    for (int s : to) {
      t.peer = s;
      plan.stages[from].sends.push_back(t);
      t.peer = from;
      plan.stages[s].receives.push_back(t);
      t.peer = -1;
    }
  }
  plan.check();
  return plan;
}

StagePlan plan_stages(const ProxyGraph& proxy, const CostModel& costs, const std::string& method,
                      const PlanOptions& options) {
  const PartitionGraph graph = make_partition_graph(proxy, costs);
  const int n = graph.num_layers();
  TORCH_CHECK(options.stages >= 1, "the number of stages must be at least 1, not ", options.stages);
  TORCH_CHECK(options.stages <= n, options.stages, " stages asked for, but the model (", proxy.description,
              ") has only ", n, " layers and each stage needs at least one: use at most ", n, " stages");
  TORCH_CHECK(options.memory_limit_bytes >= 0, "the memory limit cannot be negative");
  TORCH_CHECK(options.pipeline.microbatches >= 0, "the number of microbatches cannot be negative");
  TORCH_CHECK(method == "manual" || options.manual_starts.empty(), "stage starts were given, but method '", method,
              "' does not take them; use the manual method");
  const auto stage_of = make_partition_method(method)->assign(graph, options);
  StagePlan plan = make_stage_plan(proxy, graph, stage_of, options, method, costs.source);
  for (const LayerCost& c : costs.layers) {
    plan.layer_activation_bytes.push_back(c.activation_bytes);
    plan.layer_selective_bytes.push_back(c.selective_activation_bytes);
  }
  return plan;
}

}  // namespace trine
