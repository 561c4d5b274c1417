#include "trine/runtime/layout_planner.h"

#include "trine/partitioner/stage_plan.h"
#include "trine/recompute/memory_model.h"
#include "trine/schedules/schedule_registry.h"
#include "trine/tensor_parallel/sharding_analysis.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <sstream>

namespace trine {

namespace {

// The tp layouts the model allows: tp -> its analysis, or why not.
struct TensorParallelOption {
  std::optional<ShardingAnalysis> analysis;
  std::string refused;
};

TensorParallelOption tensor_parallel_option(const TracedModel& model, int tp) {
  TensorParallelOption o;
  if (tp == 1) return o;
  try {
    ShardingAnalysis a = analyze_sharding(model, tp);
    check_tensor_parallel_layout(a, "tp", "tensor_parallel.replicate");
    o.analysis = std::move(a);
  } catch (const c10::Error& e) {
    o.refused = e.what_without_backtrace();
  }
  return o;
}

double largest_peer(const std::vector<PlanTransfer>& transfers) {
  std::map<int, double> per_peer;
  for (const auto& t : transfers) per_peer[t.peer] += static_cast<double>(t.bytes);
  double most = 0;
  for (const auto& [peer, bytes] : per_peer) most = std::max(most, bytes);
  return most;
}

struct CandidateSpec {
  Layout layout;
  RecomputeSettings recompute;
};

class Evaluator {
 public:
  Evaluator(const ProxyGraph& proxy, const std::vector<LayerProfile>& profiles, const PlannerOptions& o)
      : proxy_(proxy), profiles_(profiles), o_(o) {}
  LayoutCandidate evaluate(const CandidateSpec& spec, const TensorParallelOption& tp) const;

 private:
  const ProxyGraph& proxy_;
  const std::vector<LayerProfile>& profiles_;
  const PlannerOptions& o_;
};

LayoutCandidate Evaluator::evaluate(const CandidateSpec& spec, const TensorParallelOption& tp_option) const {
  const Layout& L = spec.layout;
  LayoutCandidate c{L, spec.recompute};
  const int stages = L.pp * L.virtual_stages;
  const double rows = static_cast<double>(o_.global_batch) / (L.dp * L.microbatches);
  // Transfers were counted at the largest profile's rows.
  int64_t profiled_rows = 0;
  for (const auto& p : profiles_) profiled_rows = std::max(profiled_rows, p.rows);
  const double scale = rows / static_cast<double>(profiled_rows);
  const CostModel costs = costs_at_rows(profiles_, rows);
  PlanOptions po;
  po.stages = stages;
  po.pipeline = {L.schedule, L.microbatches, L.virtual_stages};
  const StagePlan plan = plan_stages(proxy_, costs, stages == 1 ? "uniform" : "dp", po);
  const std::vector<int> stage_of_layer = plan.stage_of_layer(proxy_);
  std::vector<std::vector<int>> layers_of_stage(stages);
  for (size_t l = 0; l < stage_of_layer.size(); ++l) layers_of_stage[stage_of_layer[l]].push_back(static_cast<int>(l));
  PipelineRecomputeInputs in;
  in.proxy = &proxy_;
  for (const LayerCost& l : costs.layers) {
    in.layer_bytes.push_back(l.activation_bytes);
    in.layer_bytes_selective.push_back(l.selective_activation_bytes);
  }
  in.layers_of_stage = layers_of_stage;
  in.schedule = L.schedule;
  in.microbatches = L.microbatches;
  in.virtual_stages = L.virtual_stages;
  const std::vector<StageRecompute> recompute = recompute_for_pipeline(spec.recompute, in);
  const auto activations = predict_activation_memory(proxy_, in.layer_bytes, in.layer_bytes_selective,
                                                     layers_of_stage, recompute, L.schedule, L.microbatches,
                                                     spec.recompute.policy, L.virtual_stages);
  const double tp = L.tp;
  std::vector<std::pair<int, double>> tp_allreduces(stages, {0, 0.0});
  if (tp_option.analysis) tp_allreduces = tensor_parallel_allreduces(*tp_option.analysis, plan);
  std::vector<StageWork> work(stages);
  std::vector<double> rank_memory(L.pp, 0), rank_compute(L.pp, 0), rank_recompute(L.pp, 0), rank_tp(L.pp, 0);
  for (int s = 0; s < stages; ++s) {
    StageWork& w = work[s];
    std::set<int> redone;
    for (const auto& segment : recompute[s].layer_segments) redone.insert(segment.begin(), segment.end());
    for (int l : layers_of_stage[s]) {
      w.forward_s += costs.layers[l].forward_s / tp;
      w.backward_s += costs.layers[l].backward_s / tp;
      if (redone.count(l)) w.recompute_s += costs.layers[l].forward_s / tp;
    }
    const PlanStage& ps = plan.stages[s];
    w.output_bytes = largest_peer(ps.sends) * scale / tp;
    w.input_bytes = largest_peer(ps.receives) * scale / tp;
    w.gradient_bytes = static_cast<double>(ps.param_bytes) / tp;
    // AdamW reads parameter, gradient and two moments and writes three: 7x the parameter bytes.
    if (o_.machine.memory_bytes_per_second > 0)
      w.optimizer_s = 7 * static_cast<double>(ps.param_bytes) / tp / o_.machine.memory_bytes_per_second;
    w.tp_allreduces = tp_allreduces[s].first;
    w.tp_allreduce_bytes = tp_allreduces[s].second * scale;
    const int r = s % L.pp;
    rank_memory[r] += (static_cast<double>(ps.param_bytes) * (2 + o_.optimizer_state_factor) +
                       static_cast<double>(activations[s].peak)) / tp;
    rank_compute[r] += L.microbatches * (w.forward_s + w.backward_s);
    rank_recompute[r] += L.microbatches * w.recompute_s;
    if (w.tp_allreduces > 0 && L.tp > 1)
      rank_tp[r] += L.microbatches * 2 * w.tp_allreduces *
                    o_.machine.allreduce(w.tp_allreduce_bytes / w.tp_allreduces, L.tp, L.tp);
  }
  const SimulationReport report = simulate_layout(work, L, o_.machine);
  c.step_s = report.makespan;
  c.bubble = report.bubble;
  c.compute_s = *std::max_element(rank_compute.begin(), rank_compute.end());
  c.recompute_s = *std::max_element(rank_recompute.begin(), rank_recompute.end());
  c.tp_comm_s = *std::max_element(rank_tp.begin(), rank_tp.end());
  c.memory_bytes = static_cast<int64_t>(*std::max_element(rank_memory.begin(), rank_memory.end()));
  if (o_.memory_per_device > 0 && c.memory_bytes > o_.memory_per_device) {
    c.fits = false;
    c.note = "needs " + std::to_string(c.memory_bytes) + " B on its fullest device";
  }
  return c;
}

std::vector<RecomputeSettings> recompute_choices(const ScheduleSpec& spec, int pp, double ratio) {
  std::vector<RecomputeSettings> out;
  RecomputeSettings s;
  if (!spec.needs_recompute) out.push_back(s);  // none
  s.policy = "full";
  out.push_back(s);
  if (pp > 1) {
    s.policy = "stage_aware";
    s.ratio = ratio;
    out.push_back(s);
  }
  return out;
}

bool schedule_fits(const std::string& schedule, int pp, int m, int v) {
  try {
    pipeline_schedule(schedule, pp, m, v);
    return true;
  } catch (const c10::Error&) {
    return false;
  }
}

}  // namespace

CostModel costs_at_rows(const std::vector<LayerProfile>& profiles, double rows) {
  TORCH_CHECK(profiles.size() == 1 || profiles.size() == 2, "layer costs at one or two microbatch sizes");
  const LayerProfile& big = profiles.size() == 2 && profiles[1].rows > profiles[0].rows ? profiles[1] : profiles[0];
  const LayerProfile& small = &big == &profiles[0] ? profiles.back() : profiles[0];
  const bool line = profiles.size() == 2 && big.rows != small.rows;
  TORCH_CHECK(!line || big.costs.layers.size() == small.costs.layers.size(), "the two profiles cover different layers");
  CostModel out = big.costs;
  const double share = rows / static_cast<double>(big.rows);
  auto at = [&](double t_small, double t_big) {
    if (!line) return t_big * share;
    const double slope = (t_big - t_small) / static_cast<double>(big.rows - small.rows);
    // Never below proportional scaling from the small profile's per-row cost ...
    return std::max(t_small + slope * (rows - static_cast<double>(small.rows)),
                    t_small * rows / static_cast<double>(small.rows) * 0.5);
  };
  for (size_t l = 0; l < out.layers.size(); ++l) {
    LayerCost& c = out.layers[l];
    const LayerCost& s = line ? small.costs.layers[l] : c;
    c.forward_s = at(s.forward_s, c.forward_s);
    c.backward_s = at(s.backward_s, c.backward_s);
    c.activation_bytes = static_cast<int64_t>(c.activation_bytes * share);
    if (c.selective_activation_bytes >= 0)
      c.selective_activation_bytes = static_cast<int64_t>(c.selective_activation_bytes * share);
  }
  return out;
}

std::string LayoutCandidate::describe() const {
  std::ostringstream os;
  os << "dp " << layout.dp << " x pp " << layout.pp << " x tp " << layout.tp;
  if (layout.virtual_stages > 1) os << " (v " << layout.virtual_stages << ")";
  os << ", m " << layout.microbatches << ", " << layout.schedule << ", recompute " << recompute.policy;
  if (recompute.policy == "stage_aware") os << " r0 " << recompute.ratio;
  return os.str();
}

std::vector<LayoutCandidate> plan_layouts(const TracedModel& model, const ProxyGraph& proxy,
                                          const std::vector<LayerProfile>& profiles, const PlannerOptions& o) {
  TORCH_CHECK(o.world >= 1 && o.global_batch >= 1, "the planner needs world >= 1 and a global batch");
  TORCH_CHECK(!profiles.empty(), "the planner needs a profile of the layers");
  for (const auto& p : profiles)
    TORCH_CHECK(p.rows >= 1 && p.costs.layers.size() == proxy.layers.size(), "layer costs for ",
                p.costs.layers.size(), " layers at ", p.rows, " rows; the model has ", proxy.layers.size());
  const int layers = static_cast<int>(proxy.layers.size());
  Evaluator evaluator(proxy, profiles, o);
  std::vector<LayoutCandidate> out;
  std::set<std::string> refused;
  for (int tp = 1; tp <= o.world; ++tp) {
    if (o.world % tp) continue;
    const TensorParallelOption tp_option = tensor_parallel_option(model, tp);
    if (tp > 1 && !tp_option.analysis) {
      refused.insert("tp " + std::to_string(tp) + ": " + tp_option.refused.substr(0, 200));
      continue;
    }
    for (int pp = 1; pp * tp <= o.world; ++pp) {
      if ((o.world / tp) % pp) continue;
      const int dp = o.world / tp / pp;
      for (const ScheduleSpec& spec : registered_schedules()) {
        const int v = spec.interleaved ? 2 : 1;
        if ((pp == 1 && spec.name != "1f1b") || pp * v > layers) continue;
        for (int m = pp; m <= o.max_microbatches; m *= 2) {
          if (o.global_batch % (static_cast<int64_t>(dp) * m) || !schedule_fits(spec.name, pp, m, v)) continue;
          for (const RecomputeSettings& r : recompute_choices(spec, pp, o.recompute_ratio)) {
            CandidateSpec c{Layout{dp, pp, tp, v, m, spec.name}, r};
            try {
              out.push_back(evaluator.evaluate(c, tp_option));
            } catch (const c10::Error& e) {
              refused.insert(std::string(e.what_without_backtrace()).substr(0, 200));
            }
          }
        }
      }
    }
  }
  if (out.empty()) {
    std::string why;
    for (const auto& r : refused) why += "\n  " + r;
    TORCH_CHECK(false, "no layout of ", o.world, " ranks can train this model with a global batch of ",
                o.global_batch, ":", why.empty() ? " no dp x pp x tp divides the batch" : why);
  }
  // Fitting first, then by step time in steps of 0.2% (closer is a tie the
  // simulation cannot tell apart), then by memory.
  auto bucket = [](double step_s) { return static_cast<int64_t>(std::floor(std::log(step_s) / std::log(1.002))); };
  std::stable_sort(out.begin(), out.end(), [&](const LayoutCandidate& a, const LayoutCandidate& b) {
    if (a.fits != b.fits) return a.fits;
    if (bucket(a.step_s) != bucket(b.step_s)) return a.step_s < b.step_s;
    return a.memory_bytes < b.memory_bytes;
  });
  return out;
}

std::string layout_table(const std::vector<LayoutCandidate>& ranked, int64_t global_batch, int rows) {
  std::ostringstream os;
  char line[512];
  std::snprintf(line, sizeof line, "%-4s %-70s %9s %10s %10s  %s\n", "#", "layout", "step ms", "samples/s",
                "mem MiB", "against the best");
  os << line;
  const LayoutCandidate& best = ranked.front();
  for (int i = 0; i < std::min<int>(rows, ranked.size()); ++i) {
    const LayoutCandidate& c = ranked[i];
    std::string why;
    if (!c.fits) {
      why = "does not fit: " + c.note;
    } else if (i == 0) {
      why = "best";
    } else if (c.step_s <= best.step_s * 1.01) {
      why = "within 1% (more memory or a tie)";
    } else {
      // The largest of what it spends beyond the best, per rank.
      const std::vector<std::pair<double, std::string>> extra = {
          {c.step_s * c.bubble - best.step_s * best.bubble, "bubble"},
          {c.recompute_s - best.recompute_s, "recompute"},
          {c.tp_comm_s - best.tp_comm_s, "tp all-reduces"},
          {c.compute_s - best.compute_s, "compute per rank"}};
      const auto worst = *std::max_element(extra.begin(), extra.end());
      std::snprintf(line, sizeof line, "+%.1f%%: %s +%.1f ms", 100 * (c.step_s / best.step_s - 1),
                    worst.second.c_str(), 1e3 * worst.first);
      why = line;
    }
    std::snprintf(line, sizeof line, "%-4d %-70s %9.1f %10.1f %10.1f  %s\n", i + 1, c.describe().c_str(),
                  1e3 * c.step_s, c.samples_per_s(global_batch), c.memory_bytes / 1048576.0, why.c_str());
    os << line;
  }
  return os.str();
}

}  // namespace trine
