#include "trine/recompute/memory_model.h"

#include "trine/frontend/attention_cores.h"
#include "trine/schedules/schedule_checker.h"
#include "trine/schedules/schedule_registry.h"
#include "trine/schedules/schedule_registry.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <sstream>

namespace trine {

namespace {

// Bytes of the tensors produced by `ops` and read by another op (or
// returned by the model): what a checkpointed segment of those ops keeps,
// or, for a whole stage, what it sends on.
int64_t leaving_bytes(const ProxyGraph& proxy, const std::set<int>& ops) {
  std::set<int> model_outputs(proxy.outputs.begin(), proxy.outputs.end());
  int64_t bytes = 0;
  for (int o : ops) {
    for (int v : proxy.ops[o].outputs) {
      const ProxyValue& value = proxy.values[v];
      if (!value.is_tensor) continue;
      bool leaves = model_outputs.count(v) > 0;
      for (int c : value.consumers) leaves = leaves || !ops.count(c);
      if (leaves) bytes += value.bytes;
    }
  }
  return bytes;
}

std::set<int> ops_of(const ProxyGraph& proxy, const std::vector<int>& layers) {
  const std::set<int> wanted(layers.begin(), layers.end());
  std::set<int> ops;
  for (size_t o = 0; o < proxy.ops.size(); ++o)
    if (!proxy.ops[o].param_only && wanted.count(proxy.ops[o].layer)) ops.insert(static_cast<int>(o));
  return ops;
}

std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", bytes / (1024.0 * 1024.0));
  return buf;
}

}  // namespace

std::vector<StageActivationMemory> predict_activation_memory(const ProxyGraph& proxy,
                                                             const std::vector<int64_t>& layer_bytes,
                                                             const std::vector<int64_t>& layer_bytes_selective,
                                                             const std::vector<std::vector<int>>& layers_of_stage,
                                                             const std::vector<StageRecompute>& recompute,
                                                             const std::string& schedule, int microbatches,
                                                             const std::string& policy_summary, int virtual_stages) {
  const int p = static_cast<int>(layers_of_stage.size());
  TORCH_CHECK(virtual_stages >= 1 && p % virtual_stages == 0, p, " stages do not split into ", virtual_stages,
              " virtual stages per pipeline rank");
  TORCH_CHECK(layer_bytes.size() == proxy.layers.size(), "bytes for ", layer_bytes.size(), " layers, the model has ",
              proxy.layers.size());
  TORCH_CHECK(static_cast<int>(recompute.size()) == p, "recompute plans for ", recompute.size(), " stages, the plan has ",
              p);
  const auto cores = attention_cores(proxy);
  std::vector<StageActivationMemory> out(p);
  std::vector<ActivationCosts> costs(p);
  for (int s = 0; s < p; ++s) {
    StageActivationMemory& m = out[s];
    std::set<int> recomputed;
    for (const auto& segment : recompute[s].layer_segments) {
      recomputed.insert(segment.begin(), segment.end());
      m.kept += leaving_bytes(proxy, ops_of(proxy, segment));
    }
    for (int l : layers_of_stage[s]) {
      m.whole += layer_bytes[l];
      if (!recomputed.count(l)) m.kept += layer_bytes[l];
    }
    if (recompute[s].attention_cores) {
      std::set<int> measured;  // layers whose selective bytes were measured: used as they are
      for (int l : layers_of_stage[s])
        if (!recomputed.count(l) && l < static_cast<int>(layer_bytes_selective.size()) &&
            layer_bytes_selective[l] >= 0) {
          m.kept += layer_bytes_selective[l] - layer_bytes[l];
          measured.insert(l);
        }
      for (const AttentionCore& core : cores) {
        if (recomputed.count(core.layer) ||
            !std::count(layers_of_stage[s].begin(), layers_of_stage[s].end(), core.layer))
          continue;
        ++m.recomputed_cores;
        if (measured.count(core.layer)) continue;
        // Estimate: the core's op outputs go, the tensors leaving it stay.
        const std::set<int> ops(core.ops.begin(), core.ops.end());
        for (int o : ops) m.kept -= proxy.ops[o].activation_bytes;
        m.kept += leaving_bytes(proxy, ops);
      }
    }
    m.checkpoint = leaving_bytes(proxy, ops_of(proxy, layers_of_stage[s]));
    m.layers = static_cast<int>(layers_of_stage[s].size());
    m.recomputed_layers = static_cast<int>(recomputed.size());
    costs[s] = {static_cast<double>(m.whole), static_cast<double>(m.kept), static_cast<double>(m.checkpoint)};
  }
  const auto report = check_schedule(pipeline_schedule(schedule, p / virtual_stages, microbatches, virtual_stages),
                                     microbatches,
                                     StageTopology::chain(p), SendMode::Buffered, costs);
  for (int s = 0; s < p; ++s) {
    StageActivationMemory& m = out[s];
    m.peak_in_flight = report.peak_in_flight[s];
    m.peak = static_cast<int64_t>(report.peak_activations[s]);
    std::ostringstream why;
    why << m.recomputed_layers << " of " << m.layers << " layers";
    if (m.recomputed_cores) why << " and " << m.recomputed_cores << " attention cores";
    why << " recomputed (" << policy_summary << "); "
        << m.peak_in_flight << " microbatch" << (m.peak_in_flight == 1 ? "" : "es") << " in flight under "
        << schedule;
    m.why = why.str();
  }
  return out;
}

namespace {

std::vector<StageRecompute> fit_memory_limit(int64_t limit, const PipelineRecomputeInputs& in) {
  const int p = static_cast<int>(in.layers_of_stage.size());
  size_t most = 0;
  for (const auto& layers : in.layers_of_stage) most = std::max(most, layers.size());
  std::vector<StageRecompute> chosen(p);
  std::vector<bool> fits(p, false);
  std::vector<int64_t> last_peak(p, 0);
  // A stage's peak depends on its own costs only: try n = 0, 1, ... first
  // layers on every stage at once and keep, per stage, the first n that fits.
  for (size_t n = 0; n <= most; ++n) {
    std::vector<StageRecompute> trial(p);
    for (int s = 0; s < p; ++s) {
      const auto& layers = in.layers_of_stage[s];
      for (size_t k = 0; k < std::min(n, layers.size()); ++k) trial[s].layer_segments.push_back({layers[k]});
    }
    const auto memory = predict_activation_memory(*in.proxy, in.layer_bytes, in.layer_bytes_selective,
                                                  in.layers_of_stage, trial, in.schedule, in.microbatches, "trial",
                                                  in.virtual_stages);
    for (int s = 0; s < p; ++s) {
      last_peak[s] = memory[s].peak;
      if (!fits[s] && memory[s].peak <= limit) {
        fits[s] = true;
        chosen[s] = trial[s];
      }
    }
  }
  for (int s = 0; s < p; ++s)
    TORCH_CHECK(fits[s], "stage ", s, " holds ", last_peak[s], " bytes of activations at its peak under ", in.schedule,
                " even recomputing every layer, more than config.recompute.memory_limit_bytes = ", limit,
                "; raise the limit, use more pipeline stages or fewer microbatches in flight");
  return chosen;
}

}  // namespace

std::vector<StageRecompute> recompute_for_pipeline(const RecomputeSettings& settings,
                                                   const PipelineRecomputeInputs& in) {
  TORCH_CHECK(in.proxy, "recompute_for_pipeline needs the proxy graph");
  const int p = static_cast<int>(in.layers_of_stage.size());
  const ScheduleSpec& schedule = find_schedule(in.schedule);
  std::vector<StageRecompute> out;
  if (settings.policy == "stage_aware" && settings.memory_limit_bytes > 0) {
    out = fit_memory_limit(settings.memory_limit_bytes, in);
  } else {
    std::vector<std::string> names;
    for (const auto& layer : in.proxy->layers) names.push_back(layer.name);
    out = checkpointed_segments(settings, in.layers_of_stage, names,
                                peak_in_flight(schedule.name, p / in.virtual_stages, in.microbatches,
                                               in.virtual_stages));
  }
  // Its backward follows its forward at once: recomputing there only adds work.
  if (schedule.last_stage_keeps_everything && !out.empty()) {
    out.back() = {};
    if (settings.memory_limit_bytes > 0) {
      const auto memory = predict_activation_memory(*in.proxy, in.layer_bytes, in.layer_bytes_selective,
                                                    in.layers_of_stage, out, in.schedule, in.microbatches, "",
                                                    in.virtual_stages);
      TORCH_CHECK(memory.back().peak <= settings.memory_limit_bytes, "the last stage keeps every activation under ",
                  in.schedule, " and then holds ", memory.back().peak, " bytes, more than ",
                  "config.recompute.memory_limit_bytes = ", settings.memory_limit_bytes,
                  "; raise the limit or use 1f1b or pre_recompute_1f1b");
    }
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
