// The graph every partition method works on: the model's layers with their
// costs, the parameters they hold, and the values flowing between them. Built
// from a ProxyGraph and a CostModel, or by hand (tests, synthetic graphs).
//
// Layers are numbered in a topological order: every value goes from a layer to
// later layers only. A stage assignment gives every layer a stage; it is a
// pipeline (an ordered chain) when every value goes to the same or a later
// stage. A value read by several layers of one stage is sent to that stage
// once, straight from its producer (never relayed through stages in between).
#pragma once
#include "trine/frontend/proxy_graph.h"
#include "trine/partitioner/cost_model.h"

#include <string>
#include <vector>

namespace trine {

struct PartitionGraph {
  struct Layer {
    std::string name;
    double forward_s = 0, backward_s = 0;
    int64_t activation_bytes = 0;  // kept per microbatch in flight
    std::vector<int> params;       // parameters (and buffers) the layer reads
    double time_s() const { return forward_s + backward_s; }
  };
  struct Param {
    std::string name;
    int64_t bytes = 0;        // the tensor itself
    int64_t state_bytes = 0;  // tensor + gradient + optimizer state (buffers: tensor only)
    int64_t numel = 0;        // trainable elements (0 for buffers)
  };
  struct Value {  // an activation that leaves its layer
    std::string name;
    int producer = -1;           // layer
    std::vector<int> consumers;  // distinct later layers, ascending
    int64_t bytes = 0;
    bool is_tensor = true;       // non-tensor values cannot cross stages
  };
  std::vector<Layer> layers;
  std::vector<Param> params;
  std::vector<Value> values;
  std::vector<int> output_layers;  // layers computing the model's outputs: they go on the last stage

  int num_layers() const { return static_cast<int>(layers.size()); }
  // Layers whose outputs `layer` reads / that read `layer`'s outputs (distinct, ascending).
  std::vector<std::vector<int>> producers() const;
  std::vector<std::vector<int>> consumers() const;
  int find_layer(const std::string& name) const;  // -1 if absent
  // Throws unless values flow forward, indices are in range and names unique.
  void check() const;
};

PartitionGraph make_partition_graph(const ProxyGraph& proxy, const CostModel& costs);

// How a plan will run: decides how many microbatches each stage holds at once.
struct PipelineShape {
  std::string schedule = "1f1b";  // a name from schedules/schedule_registry.h
  int microbatches = 0;           // 0: unknown, taken as the number of pipeline ranks
  int virtual_stages = 1;         // stages per pipeline rank (interleaved schedules)
  // Microbatches stage `stage` of `num_stages` holds at once: the schedule's
  // own peak, as the schedule checker measures it (1F1B: min(k - s, m); GPipe: m).
  int in_flight(int stage, int num_stages) const;
};

// What an assignment costs each stage.
struct StageEstimate {
  std::vector<int> layers;
  double forward_s = 0, backward_s = 0;
  int64_t param_bytes = 0;       // distinct parameters and buffers held
  int64_t state_bytes = 0;       // those + gradients + optimizer state
  int64_t activation_bytes = 0;  // per microbatch
  int in_flight = 1;
  int64_t memory_bytes = 0;      // state + activations x in flight
  int64_t sent_bytes = 0, received_bytes = 0;  // per microbatch, forward direction
  double time_s() const { return forward_s + backward_s; }
};

std::vector<StageEstimate> estimate_stages(const PartitionGraph& graph, const std::vector<int>& stage_of_layer,
                                           const PipelineShape& shape);
double slowest_stage_s(const std::vector<StageEstimate>& stages);
// "512 B", "3.1 KiB", "2.0 GiB": sizes in messages and tables.
std::string format_bytes(double bytes);
int64_t cut_bytes(const std::vector<StageEstimate>& stages);  // total sent per microbatch

}  // namespace trine
