// What each layer of a model costs, the input of every partition method
// (docs/design.md §5): time of its forward and backward on the device that
// will train it, and the activation memory one microbatch keeps on it until
// its backward. Parameter memory is not per layer (a tied weight is held once
// per stage, not once per layer): the partition graph adds it per stage.
//
// Two sources: `profile_layers` (profiler.h) measures on this device;
// `analytic_costs` derives both from the proxy graph's FLOPs and bytes when no
// profile is wanted (times are then estimates at an assumed FLOP rate).
#pragma once
#include "trine/frontend/proxy_graph.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace trine {

struct LayerCost {
  double forward_s = 0;
  double backward_s = 0;
  int64_t activation_bytes = 0;  // kept per microbatch until its backward
  // The same with the layer's attention cores recomputed (selective
  // recomputation); -1: not measured (then estimated from the proxy graph).
  int64_t selective_activation_bytes = -1;
  double time_s() const { return forward_s + backward_s; }
};

struct CostModel {
  std::string source;             // "profile: ..." or "analytic: ...", for people reading a plan
  std::vector<LayerCost> layers;  // one per ProxyGraph layer, in order
  // Optimizer state per trainable parameter byte: AdamW keeps two moments (2),
  // SGD with momentum one (1), plain SGD none (0).
  double optimizer_state_factor = 2;

  nlohmann::json to_json() const;
  static CostModel from_json(const nlohmann::json& j);
};

struct AnalyticOptions {
  double flops_per_second = 1e11;  // assumed sustained rate of the device
  double backward_factor = 2;      // backward FLOPs per forward FLOP (input and weight gradients)
  double optimizer_state_factor = 2;
};

// Forward time = layer FLOPs / rate; backward = factor x forward; activations =
// the bytes of the new tensors the layer's ops output (an upper bound on what
// autograd keeps).
CostModel analytic_costs(const ProxyGraph& proxy, const AnalyticOptions& options = {});

// One row per layer: forward and backward time, and its memory: parameters,
// gradients, optimizer state (of the parameters it reads; a tied parameter
// shows in each layer reading it) and activations kept per microbatch.
std::string layer_cost_table(const ProxyGraph& proxy, const CostModel& costs);

}  // namespace trine
