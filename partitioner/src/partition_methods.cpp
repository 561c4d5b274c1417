// The partition methods behind make_partition_method.
#include "trine/partitioner/partition_method.h"

#include "contiguous_split.h"
#include "metis_partition.h"

#include <c10/util/Exception.h>

#include <numeric>
#include <sstream>

namespace trine {

namespace {

std::vector<int> index_order(int n) {
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  return order;
}

// Minimum of the heaviest run over contiguous splits of the layer order.
std::vector<int> contiguous_min_max(const PartitionGraph& g, const PlanOptions& o, std::vector<double> weight) {
  detail::ContiguousSplit split;
  split.graph = &g;
  split.order = index_order(g.num_layers());
  split.weight = std::move(weight);
  split.stages = o.stages;
  split.pipeline = o.pipeline;
  split.memory_limit_bytes = o.memory_limit_bytes;
  return split.solve();
}

class UniformMethod : public PartitionMethod {
 public:
  std::string name() const override { return "uniform"; }
  std::vector<int> assign(const PartitionGraph& g, const PlanOptions& o) const override {
    return uniform_assignment(g.num_layers(), o.stages);
  }
};

class ParametersMethod : public PartitionMethod {
 public:
  std::string name() const override { return "parameters"; }
  std::vector<int> assign(const PartitionGraph& g, const PlanOptions& o) const override {
    std::vector<double> count(g.num_layers(), 0);
    for (int l = 0; l < g.num_layers(); ++l)
      for (int p : g.layers[l].params) count[l] += static_cast<double>(g.params[p].numel);
    return contiguous_min_max(g, o, std::move(count));
  }
};

class DpMethod : public PartitionMethod {
 public:
  std::string name() const override { return "dp"; }
  std::vector<int> assign(const PartitionGraph& g, const PlanOptions& o) const override {
    std::vector<double> time(g.num_layers());
    for (int l = 0; l < g.num_layers(); ++l) time[l] = g.layers[l].time_s();
    return contiguous_min_max(g, o, std::move(time));
  }
};

class ManualMethod : public PartitionMethod {
 public:
  std::string name() const override { return "manual"; }
  std::vector<int> assign(const PartitionGraph& g, const PlanOptions& o) const override {
    std::vector<int> starts;
    for (const std::string& name : o.manual_starts) {
      const int l = g.find_layer(name);
      if (l < 0) {
        std::ostringstream known;
        for (const auto& layer : g.layers) known << " " << layer.name;
        TORCH_CHECK(false, "manual split: '", name, "' is not a layer of the model; its layers are:", known.str());
      }
      TORCH_CHECK(starts.empty() || l > starts.back(), "manual split: stage starts must be distinct layers in model ",
                  "order, but '", name, "' comes after '", g.layers[starts.back()].name, "'");
      starts.push_back(l);
    }
    if (starts.empty() || starts.front() != 0) starts.insert(starts.begin(), 0);
    TORCH_CHECK(static_cast<int>(starts.size()) == o.stages, "manual split: ", o.manual_starts.size(),
                " stage starts make ", starts.size(), " stages, but ", o.stages,
                " stages were asked for; name the first layer of each stage after the first");
    std::vector<int> stage_of(g.num_layers(), 0);
    for (size_t s = 0; s < starts.size(); ++s)
      for (int l = starts[s]; l < g.num_layers(); ++l) stage_of[l] = static_cast<int>(s);
    return stage_of;
  }
};

class MetisMethod : public PartitionMethod {
 public:
  std::string name() const override { return "metis"; }
  std::vector<int> assign(const PartitionGraph& g, const PlanOptions& o) const override {
    return detail::metis_assign(g, o);
  }
};

}  // namespace

std::vector<int> uniform_assignment(int num_layers, int k) { return detail::equal_count_split(num_layers, k); }

const std::vector<std::string>& partition_method_names() {
  static const std::vector<std::string> names{"metis", "dp", "uniform", "parameters", "manual"};
  return names;
}

std::unique_ptr<PartitionMethod> make_partition_method(const std::string& name) {
  if (name == "metis") return std::make_unique<MetisMethod>();
  if (name == "dp") return std::make_unique<DpMethod>();
  if (name == "uniform") return std::make_unique<UniformMethod>();
  if (name == "parameters") return std::make_unique<ParametersMethod>();
  if (name == "manual") return std::make_unique<ManualMethod>();
  std::ostringstream known;
  for (const auto& n : partition_method_names()) known << " " << n;
  TORCH_CHECK(false, "unknown partition method '", name, "'; the methods are:", known.str());
}

}  // namespace trine
