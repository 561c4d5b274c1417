// StagePlan: which layers and parameters every pipeline stage holds, what it is
// estimated to cost, and which values it sends and receives. This is what
// `trine plan` writes and training reads (format "trine.stage_plan/1").
//
// A plan is checked when it is made and when it is loaded: at least one stage,
// no empty stage, every layer listed once, every stage within the memory limit
// the plan was made for. Against a model (`stage_of_layer`), it is also checked
// that it names every layer of that model and no other, and that data flows
// only from a stage to later ones. Every error names the layer or stage at fault.
#pragma once
#include "trine/frontend/proxy_graph.h"
#include "trine/partitioner/partition_graph.h"
#include "trine/partitioner/partition_method.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace trine {

struct PlanTransfer {
  std::string value;  // name of the value in the traced graph
  int peer = -1;      // the other stage
  int64_t bytes = 0;  // per microbatch
  std::vector<int64_t> shape;
  std::string dtype;
};

struct PlanStage {
  std::vector<std::string> layers;  // in the model's layer order
  std::vector<std::string> params;  // parameters and buffers held
  double forward_s = 0, backward_s = 0;
  int64_t param_bytes = 0, state_bytes = 0, activation_bytes = 0, memory_bytes = 0;
  int in_flight = 1;
  std::vector<PlanTransfer> sends, receives;
  double time_s() const { return forward_s + backward_s; }
};

class StagePlan {
 public:
  std::string model;        // description of the traced model
  std::string method;       // partition method that made it
  std::string cost_source;  // profile or analytic, and where
  PipelineShape pipeline;
  int64_t memory_limit_bytes = 0;  // 0: none
  int num_layers = 0;              // of the model it was made for
  // Per layer of the model: activation bytes kept per microbatch, and with its
  // attention cores recomputed (-1: not measured), from the costs the plan was
  // made with (the recomputation planner reads them on every rank).
  std::vector<int64_t> layer_activation_bytes, layer_selective_bytes;
  std::vector<PlanStage> stages;

  int num_stages() const { return static_cast<int>(stages.size()); }
  double slowest_stage_s() const;
  double mean_stage_s() const;
  double imbalance() const;  // slowest / mean (1 is perfect)
  int64_t cut_bytes() const;

  // Structural checks (see above); throws naming the stage or layer.
  void check() const;
  // The stage of each of `proxy`'s layers; throws unless the plan fits this model.
  std::vector<int> stage_of_layer(const ProxyGraph& proxy) const;

  // One row per stage, then the imbalance and bytes cut.
  std::string table() const;

  nlohmann::json to_json() const;
  static StagePlan from_json(const nlohmann::json& j);  // checks
  void save(const std::string& path) const;             // atomic: never half a file
  static StagePlan load(const std::string& path);       // checks; errors name the file
};

// The plan of an assignment (already checked to be an ordered chain).
StagePlan make_stage_plan(const ProxyGraph& proxy, const PartitionGraph& graph, const std::vector<int>& stage_of_layer,
                          const PlanOptions& options, const std::string& method, const std::string& cost_source);

// The whole partitioner in one call: checks the options against the model,
// runs the method, and returns the checked plan.
StagePlan plan_stages(const ProxyGraph& proxy, const CostModel& costs, const std::string& method,
                      const PlanOptions& options);

}  // namespace trine
