#include "trine/partitioner/cost_model.h"

#include "trine/common/json_reader.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <sstream>

namespace trine {

CostModel analytic_costs(const ProxyGraph& proxy, const AnalyticOptions& options) {
  TORCH_CHECK(options.flops_per_second > 0, "analytic costs need a positive FLOP rate");
  CostModel costs;
  std::ostringstream src;
  src << "analytic: FLOPs at " << options.flops_per_second << " FLOP/s, backward " << options.backward_factor
      << "x forward";
  costs.source = src.str();
  costs.optimizer_state_factor = options.optimizer_state_factor;
  for (const ProxyLayer& layer : proxy.layers) {
    LayerCost c;
    c.forward_s = layer.flops / options.flops_per_second;
    c.backward_s = options.backward_factor * c.forward_s;
    c.activation_bytes = layer.activation_bytes;
    costs.layers.push_back(c);
  }
  return costs;
}

std::string layer_cost_table(const ProxyGraph& proxy, const CostModel& costs) {
  TORCH_CHECK(costs.layers.size() == proxy.layers.size(), "cost model and model disagree on the number of layers");
  std::ostringstream os;
  char line[256];
  const double mib = 1024.0 * 1024.0;
  std::snprintf(line, sizeof line, "%-20s %9s %9s %10s %10s %10s %10s\n", "layer", "fwd ms", "bwd ms", "param MiB",
                "grad MiB", "optim MiB", "act MiB");
  os << line;
  for (size_t l = 0; l < proxy.layers.size(); ++l) {
    double params = 0, grads = 0;
    for (int p : proxy.layers[l].params) {
      params += static_cast<double>(proxy.params[p].bytes);
      if (proxy.params[p].requires_grad && !proxy.params[p].is_buffer) grads += static_cast<double>(proxy.params[p].bytes);
    }
    const LayerCost& c = costs.layers[l];
    std::snprintf(line, sizeof line, "%-20s %9.3f %9.3f %10.3f %10.3f %10.3f %10.3f\n", proxy.layers[l].name.c_str(),
                  c.forward_s * 1e3, c.backward_s * 1e3, params / mib, grads / mib,
                  grads * costs.optimizer_state_factor / mib, static_cast<double>(c.activation_bytes) / mib);
    os << line;
  }
  os << "costs: " << costs.source << "\n";
  return os.str();
}

nlohmann::json CostModel::to_json() const {
  nlohmann::json layers_json = nlohmann::json::array();
  for (const LayerCost& c : layers)
    layers_json.push_back({{"forward_s", c.forward_s}, {"backward_s", c.backward_s},
                           {"activation_bytes", c.activation_bytes},
                           {"selective_activation_bytes", c.selective_activation_bytes}});
  return {{"source", source}, {"optimizer_state_factor", optimizer_state_factor}, {"layers", layers_json}};
}

CostModel CostModel::from_json(const nlohmann::json& j) {
  JsonObjectReader r(j, "the cost model");
  CostModel c;
  c.source = r.required<std::string>("source");
  c.optimizer_state_factor = r.required<double>("optimizer_state_factor");
  for (auto& l : r.objects("layers")) {
    c.layers.push_back({l.required<double>("forward_s"), l.required<double>("backward_s"),
                        l.required<int64_t>("activation_bytes"), l.get<int64_t>("selective_activation_bytes", -1)});
    l.finish();
  }
  r.finish();
  return c;
}

}  // namespace trine
