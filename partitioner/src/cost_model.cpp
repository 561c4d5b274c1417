#include "trine/partitioner/cost_model.h"

#include <c10/util/Exception.h>

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

nlohmann::json CostModel::to_json() const {
  nlohmann::json layers_json = nlohmann::json::array();
  for (const LayerCost& c : layers)
    layers_json.push_back({{"forward_s", c.forward_s}, {"backward_s", c.backward_s},
                           {"activation_bytes", c.activation_bytes}});
  return {{"source", source}, {"optimizer_state_factor", optimizer_state_factor}, {"layers", layers_json}};
}

CostModel CostModel::from_json(const nlohmann::json& j) {
  CostModel c;
  try {
    c.source = j.at("source").get<std::string>();
    c.optimizer_state_factor = j.at("optimizer_state_factor").get<double>();
    for (const auto& l : j.at("layers"))
      c.layers.push_back({l.at("forward_s").get<double>(), l.at("backward_s").get<double>(),
                          l.at("activation_bytes").get<int64_t>()});
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, "malformed cost model JSON: ", e.what());
  }
  return c;
}

}  // namespace trine
