#include "trine/recompute/memory_model.h"

#include "trine/schedules/schedule_checker.h"
#include "trine/schedules/schedule_registry.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <set>
#include <sstream>

namespace trine {

namespace {

// Bytes of the tensors produced by ops of `layers` and read by an op of
// another layer (or returned by the model): what a checkpointed segment of
// those layers keeps, or, for a whole stage, what it sends on.
int64_t leaving_bytes(const ProxyGraph& proxy, const std::set<int>& layers) {
  std::set<int> model_outputs(proxy.outputs.begin(), proxy.outputs.end());
  int64_t bytes = 0;
  for (const ProxyOp& op : proxy.ops) {
    if (op.param_only || !layers.count(op.layer)) continue;
    for (int v : op.outputs) {
      const ProxyValue& value = proxy.values[v];
      if (!value.is_tensor) continue;
      bool leaves = model_outputs.count(v) > 0;
      for (int c : value.consumers) leaves = leaves || !layers.count(proxy.ops[c].layer);
      if (leaves) bytes += value.bytes;
    }
  }
  return bytes;
}

std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", bytes / (1024.0 * 1024.0));
  return buf;
}

}  // namespace

std::vector<StageActivationMemory> predict_activation_memory(const ProxyGraph& proxy,
                                                             const std::vector<int64_t>& layer_bytes,
                                                             const std::vector<std::vector<int>>& layers_of_stage,
                                                             const std::vector<StageSegments>& segments,
                                                             const std::string& schedule, int microbatches,
                                                             const std::string& policy_summary) {
  const int p = static_cast<int>(layers_of_stage.size());
  TORCH_CHECK(layer_bytes.size() == proxy.layers.size(), "bytes for ", layer_bytes.size(), " layers, the model has ",
              proxy.layers.size());
  TORCH_CHECK(static_cast<int>(segments.size()) == p, "segments for ", segments.size(), " stages, the plan has ", p);
  std::vector<StageActivationMemory> out(p);
  std::vector<ActivationCosts> costs(p);
  for (int s = 0; s < p; ++s) {
    StageActivationMemory& m = out[s];
    std::set<int> recomputed;
    for (const auto& segment : segments[s]) {
      recomputed.insert(segment.begin(), segment.end());
      m.kept += leaving_bytes(proxy, std::set<int>(segment.begin(), segment.end()));
    }
    for (int l : layers_of_stage[s]) {
      m.whole += layer_bytes[l];
      if (!recomputed.count(l)) m.kept += layer_bytes[l];
    }
    m.checkpoint = leaving_bytes(proxy, std::set<int>(layers_of_stage[s].begin(), layers_of_stage[s].end()));
    m.layers = static_cast<int>(layers_of_stage[s].size());
    m.recomputed_layers = static_cast<int>(recomputed.size());
    costs[s] = {static_cast<double>(m.whole), static_cast<double>(m.kept), static_cast<double>(m.checkpoint)};
  }
  const auto report = check_schedule(pipeline_schedule(schedule, p, microbatches), microbatches,
                                     StageTopology::chain(p), SendMode::Buffered, costs);
  for (int s = 0; s < p; ++s) {
    StageActivationMemory& m = out[s];
    m.peak_in_flight = report.peak_in_flight[s];
    m.peak = static_cast<int64_t>(report.peak_activations[s]);
    std::ostringstream why;
    why << m.recomputed_layers << " of " << m.layers << " layers recomputed (" << policy_summary << "); "
        << m.peak_in_flight << " microbatch" << (m.peak_in_flight == 1 ? "" : "es") << " in flight under "
        << schedule;
    m.why = why.str();
  }
  return out;
}

std::string activation_memory_table(const std::vector<StageActivationMemory>& stages) {
  std::ostringstream os;
  os << "stage  whole MiB   kept MiB    F* MiB  in-fl   peak MiB  what it keeps and why\n";
  for (size_t s = 0; s < stages.size(); ++s) {
    const auto& m = stages[s];
    char line[160];
    std::snprintf(line, sizeof line, "%-5zu %10s %10s %9s %6d %10s  ", s, mib(m.whole).c_str(), mib(m.kept).c_str(),
                  mib(m.checkpoint).c_str(), m.peak_in_flight, mib(m.peak).c_str());
    os << line << m.why << "\n";
  }
  return os.str();
}

}  // namespace trine
