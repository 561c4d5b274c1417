// Partition methods: each decides which pipeline stage runs every layer, behind
// one interface (docs/design.md §5).
//
//   metis       METIS k-way on the layer graph (time and memory as two vertex
//               weights, bytes crossing as edge weights), repaired into an
//               ordered chain and refined (see metis_method.cpp).
//   dp          exact minimum of the slowest stage over contiguous splits of the
//               layer order, under the memory limit; ties go to fewer bytes cut.
//   uniform     contiguous runs of equal layer counts.
//   parameters  contiguous runs of (optimally) equal parameter counts.
//   manual      the layer names where stages 1..k-1 begin (the first stage
//               begins at the first layer; naming it too is allowed).
//
// Every method returns an ordered chain that uses all k stages, or throws with
// a message naming the problem (k larger than the layer count, no split within
// the memory limit, an unknown layer name).
#pragma once
#include "trine/partitioner/partition_graph.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace trine {

struct PlanOptions {
  int stages = 1;
  int64_t memory_limit_bytes = 0;  // per stage; 0: no limit
  PipelineShape pipeline;
  uint64_t seed = 0;                        // METIS's random seed
  std::vector<std::string> manual_starts;   // manual: first layer of each stage
};

class PartitionMethod {
 public:
  virtual ~PartitionMethod() = default;
  virtual std::string name() const = 0;
  // The stage of every layer.
  virtual std::vector<int> assign(const PartitionGraph& graph, const PlanOptions& options) const = 0;
};

// Layers in model order cut into k contiguous runs of equal layer counts (the
// `uniform` method without a graph).
std::vector<int> uniform_assignment(int num_layers, int k);

// Throws naming the known methods when `name` is not one of them.
std::unique_ptr<PartitionMethod> make_partition_method(const std::string& name);
const std::vector<std::string>& partition_method_names();

}  // namespace trine
