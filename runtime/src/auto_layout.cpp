#include "auto_layout.h"

#include "trine/frontend/proxy_graph.h"
#include "trine/partitioner/profiler.h"
#include "trine/runtime/layout_planner.h"
#include "trine/runtime/optimizer.h"

#include <nlohmann/json.hpp>

#include <cstdio>

namespace trine {

namespace {

SampleBatch first_rows(const SampleBatch& b, int64_t rows) {
  SampleBatch out = b;
  for (auto* list : {&out.inputs, &out.targets})
    for (auto& t : *list) t = t.slice(0, 0, rows);
  return out;
}

// Rank 0: the ranking, printed, and the winner as JSON.
nlohmann::json plan_on_rank_0(const TrainConfig& config, const SampleBatch& sample,
                              const std::function<TracedModel(const SampleBatch&)>& trace_rows, int world) {
  const int64_t sample_rows = sample.inputs.at(0).size(0);
  PlannerOptions o;
  o.world = world;
  o.global_batch = config.global_batch > 0 ? config.global_batch : sample_rows;
  o.memory_per_device = config.partition.memory_limit_bytes;
  o.optimizer_state_factor = optimizer_state_factor(config.optimizer);
  const int64_t rows = std::max<int64_t>(1, std::min(sample_rows, o.global_batch / world));
  ProfileOptions p;
  p.threads = 1;
  std::vector<LayerProfile> profiles;
  TracedModel traced;
  for (int64_t r : {std::max<int64_t>(1, rows / 4), rows}) {
    if (!profiles.empty() && r == profiles.back().rows) continue;
    const SampleBatch part = first_rows(sample, r);
    traced = trace_rows(part);
    profiles.push_back({r, profile_layers(traced, build_proxy_graph(traced), part, p)});
  }
  const auto ranked = plan_layouts(traced, build_proxy_graph(traced), profiles, o);
  std::printf("trine: parallel \"auto\": %zu layouts of %d ranks for a global batch of %lld, ranked by simulated "
              "step time:\n%s",
              ranked.size(), world, static_cast<long long>(o.global_batch),
              layout_table(ranked, o.global_batch, 8).c_str());
  std::fflush(stdout);
  const LayoutCandidate& best = ranked.front();
  TORCH_CHECK(best.fits, "parallel \"auto\": no layout of ", world, " ranks fits config.partition.memory_limit_bytes (",
              o.memory_per_device, " bytes per device); the smallest needs ", best.memory_bytes,
              ": raise the limit, launch more ranks, or shrink the batch");
  std::printf("trine: parallel \"auto\" chose %s\n", best.describe().c_str());
  std::fflush(stdout);
  return {{"dp", best.layout.dp},
          {"pp", best.layout.pp},
          {"tp", best.layout.tp},
          {"virtual_stages", best.layout.virtual_stages},
          {"microbatches", best.layout.microbatches},
          {"schedule", best.layout.schedule},
          {"recompute", best.recompute.policy},
          {"ratio", best.recompute.ratio}};
}

}  // namespace

TrainConfig choose_layout(const TrainConfig& config, const SampleBatch& sample,
                          const std::function<TracedModel(const SampleBatch&)>& trace_rows, c10d::Store& store,
                          int rank, int world_size) {
  if (rank == 0) {
    std::string published;
    try {
      published = "layout:" + plan_on_rank_0(config, sample, trace_rows, world_size).dump();
    } catch (const c10::Error& e) {
      published = std::string("error:") + e.what_without_backtrace();
    } catch (const std::exception& e) {
      published = std::string("error:") + e.what();
    }
    store.set("auto_layout", std::vector<uint8_t>(published.begin(), published.end()));
  }
  const auto bytes = store.get("auto_layout");
  const std::string text(bytes.begin(), bytes.end());
  TORCH_CHECK(text.rfind("layout:", 0) == 0, "choosing the layout failed on rank 0: ", text.substr(6));
  const auto j = nlohmann::json::parse(text.substr(7));
  TrainConfig out = config;
  out.parallel.auto_layout = false;
  out.parallel.dp = j["dp"];
  out.parallel.pp = j["pp"];
  out.parallel.tp = j["tp"];
  out.virtual_stages = j["virtual_stages"];
  out.microbatches = j["microbatches"];
  out.schedule = j["schedule"];
  out.recompute.policy = j["recompute"];
  out.recompute.ratio = j["ratio"];
  out.check();
  return out;
}

}  // namespace trine
