#include "trine/partitioner/stage_plan.h"

#include "trine/frontend/stage_split.h"
#include "trine/schedules/schedule_registry.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <unordered_map>

namespace trine {

namespace {

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

std::string layer_list(const std::vector<std::string>& layers) {
  std::string all;
  for (const auto& l : layers) all += (all.empty() ? "" : " ") + l;
  if (all.size() <= 36) return all;
  return layers.front() + " " + layers[1] + " ... " + layers.back() + " (" + std::to_string(layers.size()) + ")";
}

}  // namespace

double StagePlan::slowest_stage_s() const {
  double worst = 0;
  for (const auto& s : stages) worst = std::max(worst, s.time_s());
  return worst;
}

double StagePlan::mean_stage_s() const {
  double sum = 0;
  for (const auto& s : stages) sum += s.time_s();
  return stages.empty() ? 0 : sum / static_cast<double>(stages.size());
}

double StagePlan::imbalance() const {
  const double mean = mean_stage_s();
  return mean > 0 ? slowest_stage_s() / mean : 1.0;
}

int64_t StagePlan::cut_bytes() const {
  int64_t total = 0;
  for (const auto& s : stages)
    for (const auto& t : s.sends) total += t.bytes;
  return total;
}

void StagePlan::check() const {
  TORCH_CHECK(!stages.empty(), "the plan has no stages");
  TORCH_CHECK(num_layers >= 1, "the plan is for a model of ", num_layers, " layers");
  TORCH_CHECK(num_stages() <= num_layers, "the plan has ", num_stages(), " stages for ", num_layers,
              " layers: a stage needs at least one layer, so use at most ", num_layers, " stages");
  check_virtual_stages(find_schedule(pipeline.schedule, "the plan's schedule"), pipeline.virtual_stages,
                       "the plan's virtual_stages");
  TORCH_CHECK(num_stages() % pipeline.virtual_stages == 0, "the plan has ", num_stages(), " stages, not a multiple ",
              "of its virtual_stages (", pipeline.virtual_stages, "): every pipeline rank holds that many");
  std::unordered_map<std::string, int> stage_of;
  int listed = 0;
  for (int s = 0; s < num_stages(); ++s) {
    const PlanStage& st = stages[s];
    TORCH_CHECK(!st.layers.empty(), "stage ", s, " has no layers: every stage needs at least one");
    for (const auto& l : st.layers) {
      auto [it, fresh] = stage_of.emplace(l, s);
      TORCH_CHECK(fresh, "layer '", l, "' is listed on stage ", it->second, " and again on stage ", s,
                  ": every layer belongs to exactly one stage");
      ++listed;
    }
    TORCH_CHECK(st.forward_s >= 0 && st.backward_s >= 0, "stage ", s, " has a negative time");
    TORCH_CHECK(st.in_flight >= 1, "stage ", s, " holds ", st.in_flight, " microbatches in flight; at least 1");
    TORCH_CHECK(memory_limit_bytes <= 0 || st.memory_bytes <= memory_limit_bytes, "stage ", s, " needs ",
                format_bytes(st.memory_bytes), " (", format_bytes(st.state_bytes),
                " parameters, gradients and optimizer state + ", st.in_flight, " x ", format_bytes(st.activation_bytes),
                " activations), above the memory limit of ", format_bytes(memory_limit_bytes),
                ": use more stages, a smaller microbatch, or another method");
    for (const auto& t : st.sends)
      TORCH_CHECK(t.peer > s && t.peer < num_stages(), "stage ", s, " sends '", t.value, "' to stage ", t.peer,
                  ": data flows only to later stages");
    for (const auto& t : st.receives)
      TORCH_CHECK(t.peer >= 0 && t.peer < s, "stage ", s, " receives '", t.value, "' from stage ", t.peer,
                  ": data comes only from earlier stages");
  }
  TORCH_CHECK(listed == num_layers, "the plan lists ", listed, " layers but was made for a model of ", num_layers);
}

std::vector<int> StagePlan::stage_of_layer(const ProxyGraph& proxy) const {
  check();
  const int n = static_cast<int>(proxy.layers.size());
  TORCH_CHECK(n == num_layers, "the plan was made for a model of ", num_layers, " layers, but this model (",
              proxy.description, ") has ", n, ": make a plan for this model");
  std::vector<int> out(n, -1);
  for (int s = 0; s < num_stages(); ++s)
    for (const auto& name : stages[s].layers) {
      const int l = proxy.find_layer(name);
      TORCH_CHECK(l >= 0, "stage ", s, " of the plan holds layer '", name, "', which this model does not have");
      out[l] = s;
    }
  for (int l = 0; l < n; ++l)
    TORCH_CHECK(out[l] >= 0, "layer '", proxy.layers[l].name, "' of the model is on no stage of the plan");
  check_stage_assignment(proxy, out);
  return out;
}

std::string StagePlan::table() const {
  std::ostringstream os;
  char line[512];
  std::snprintf(line, sizeof line, "%-5s %-40s %9s %9s %9s %10s %10s %6s %10s %10s\n", "stage", "layers", "fwd ms",
                "bwd ms", "total ms", "state MiB", "mem MiB", "in-fl", "send KiB", "recv KiB");
  os << line;
  for (int s = 0; s < num_stages(); ++s) {
    const PlanStage& st = stages[s];
    int64_t sent = 0, received = 0;
    for (const auto& t : st.sends) sent += t.bytes;
    for (const auto& t : st.receives) received += t.bytes;
    std::snprintf(line, sizeof line, "%-5d %-40s %9.3f %9.3f %9.3f %10.2f %10.2f %6d %10.1f %10.1f\n", s,
                  layer_list(st.layers).c_str(), st.forward_s * 1e3, st.backward_s * 1e3, st.time_s() * 1e3,
                  mib(st.state_bytes), mib(st.memory_bytes), st.in_flight, sent / 1024.0, received / 1024.0);
    os << line;
  }
  std::snprintf(line, sizeof line,
                "method %s; slowest stage %.3f ms, mean %.3f ms, imbalance (slowest / mean) %.3f; "
                "bytes cut per microbatch %.1f KiB\n",
                method.c_str(), slowest_stage_s() * 1e3, mean_stage_s() * 1e3, imbalance(), cut_bytes() / 1024.0);
  os << line;
  const int v = pipeline.virtual_stages, ranks = num_stages() / v;
  if (v > 1) {
    os << "interleaved: each of " << ranks << " pipeline ranks holds " << v << " stages:";
    for (int r = 0; r < ranks; ++r) {
      double time_s = 0, memory = 0;
      os << (r ? ";" : "") << " rank " << r << " stages";
      for (int c = 0; c < v; ++c) {
        const PlanStage& st = stages[c * ranks + r];
        os << (c ? "," : "") << " " << c * ranks + r;
        time_s += st.time_s();
        memory += mib(st.memory_bytes);
      }
      std::snprintf(line, sizeof line, " (%.3f ms, at most %.2f MiB)", time_s * 1e3, memory);
      os << line;
    }
    os << "\n";
  }
  os << "costs: " << cost_source << "\n";
  return os.str();
}

}  // namespace trine
