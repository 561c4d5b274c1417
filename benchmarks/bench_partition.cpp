// Quality of the partition methods: for each model and stage count, every
// method's plan from one shared per-layer profile, with
//   - the slowest stage as the profile estimates it,
//   - the slowest stage as measured by running the plan (all methods' plans
//     interleaved round by round, median per stage),
//   - the bytes cut per microbatch and the time planning took.
// Then the planning time of a 1,000-layer traced model into 16 stages.
// Writes JSON and prints a table.
//
//   build/bin/bench_partition [--threads 1] [--repeats 5] [--out FILE]
#include "bench_timing.h"
#include "trine/common/files.h"
#include "trine/frontend/sequential_staged_model.h"
#include "trine/examples/example_tasks.h"
#include "trine/partitioner/profiler.h"
#include "trine/partitioner/stage_plan.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

using namespace trine;
using json = nlohmann::json;

namespace {

using bench::median;
using bench::seconds;

const std::vector<std::string> kMethods{"metis", "dp", "uniform", "parameters"};

struct Task {
  std::string name;
  ModelSpec spec;
  std::vector<int> stages;
};

// Slowest stage of each plan, measured: all plans run interleaved, `repeats`
// rounds after one warm-up; per stage the median of fwd+bwd.
std::vector<double> measure_plans(const TracedModel& traced, const ProxyGraph& proxy, const SampleBatch& batch,
                                  const std::vector<StagePlan>& plans, int repeats) {
  std::vector<std::unique_ptr<SequentialStagedModel>> models;
  for (const auto& p : plans) models.push_back(std::make_unique<SequentialStagedModel>(traced, proxy, p.stage_of_layer(proxy)));
  std::vector<std::vector<std::vector<double>>> times(plans.size());
  for (size_t i = 0; i < plans.size(); ++i) times[i].resize(plans[i].num_stages());
  for (int r = 0; r <= repeats; ++r)
    for (size_t i = 0; i < plans.size(); ++i) {
      StageMeasurements m;
      models[i]->zero_grad();
      models[i]->forward_backward(batch, RngPolicy{RngPolicy::Mode::PerOp, 0, 0}, &m);
      if (r == 0) continue;
      for (int s = 0; s < plans[i].num_stages(); ++s) times[i][s].push_back(m.forward_s[s] + m.backward_s[s]);
    }
  std::vector<double> slowest;
  for (auto& per_stage : times) {
    double worst = 0;
    for (auto& t : per_stage) worst = std::max(worst, median(t));
    slowest.push_back(worst);
  }
  return slowest;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"partition methods: slowest stage, bytes cut, planning time"};
  int threads = 1, repeats = 5, big_layers = 1000, big_stages = 16;
  std::string out = "bench_partition.json";
  app.add_option("--threads", threads, "intra-op threads for profiling and measuring")->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "timed steps of the profile and of each plan")->check(CLI::PositiveNumber);
  app.add_option("--big-layers", big_layers, "layers of the planning-time model")->check(CLI::Range(3, 100000));
  app.add_option("--big-stages", big_stages, "its stages")->check(CLI::PositiveNumber);
  app.add_option("--out", out, "JSON result file");
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads);

  ModelSpec gpt;
  gpt.hidden = 128;
  gpt.heads = 4;
  gpt.seq_len = 64;
  gpt.vocab = 512;
  gpt.batch = 4;
  ModelSpec gpt12 = gpt, gpt24 = gpt;
  gpt12.layers = 12;
  gpt24.layers = 24;
  ModelSpec branch;
  branch.name = "branch";
  branch.layers = 6;
  branch.hidden = 256;
  branch.batch = 64;
  const std::vector<Task> tasks{{"gpt-12", gpt12, {2, 4, 8}}, {"gpt-24", gpt24, {2, 4, 8}}, {"branch-6", branch, {2, 4, 8}}};

  json results = json::array();
  std::printf("%-9s %2s %-10s %10s %10s %9s %10s %8s\n", "model", "k", "method", "est ms", "meas ms", "imbal",
              "cut KiB", "plan ms");
  double worst_gpt_ratio = 0, worst_branch_ratio = 0;
  for (const Task& task : tasks) {
    auto m = make_example_model(task.spec);
    const SampleBatch batch = m.batch(0);
    const TracedModel traced = trace(m.module, m.loss, batch);
    const ProxyGraph proxy = build_proxy_graph(traced);
    ProfileOptions po;
    po.repeats = repeats;
    const CostModel costs = profile_layers(traced, proxy, batch, po);
    for (int k : task.stages) {
      std::vector<StagePlan> plans;
      std::vector<double> plan_ms;
      for (const auto& method : kMethods) {
        PlanOptions o;
        o.stages = k;
        plan_ms.push_back(1e3 * seconds([&] { plans.push_back(plan_stages(proxy, costs, method, o)); }));
      }
      const auto measured = measure_plans(traced, proxy, batch, plans, repeats);
      for (size_t i = 0; i < plans.size(); ++i) {
        const StagePlan& p = plans[i];
        std::printf("%-9s %2d %-10s %10.3f %10.3f %9.3f %10.1f %8.2f\n", task.name.c_str(), k, kMethods[i].c_str(),
                    p.slowest_stage_s() * 1e3, measured[i] * 1e3, p.imbalance(), p.cut_bytes() / 1024.0, plan_ms[i]);
        results.push_back({{"model", task.name},
                           {"layers", proxy.layers.size()},
                           {"stages", k},
                           {"method", kMethods[i]},
                           {"slowest_stage_estimated_s", p.slowest_stage_s()},
                           {"slowest_stage_measured_s", measured[i]},
                           {"imbalance", p.imbalance()},
                           {"cut_bytes", p.cut_bytes()},
                           {"plan_s", plan_ms[i] / 1e3}});
      }
      const double ratio = plans[0].slowest_stage_s() / plans[1].slowest_stage_s();  // metis / dp
      (task.spec.name == "gpt" ? worst_gpt_ratio : worst_branch_ratio) =
          std::max(task.spec.name == "gpt" ? worst_gpt_ratio : worst_branch_ratio, ratio);
    }
  }

  // Planning time on a big traced model (skip connections: not a chain).
  ModelSpec big;
  big.name = "skip";
  big.layers = big_layers - 2;  // + input and head layers
  big.hidden = 8;
  big.batch = 2;
  auto bm = make_example_model(big);
  TraceOptions quick;
  quick.check = false;
  const TracedModel big_traced = trace(bm.module, bm.loss, bm.batch(0), quick);
  const ProxyGraph big_proxy = build_proxy_graph(big_traced);
  const CostModel big_costs = analytic_costs(big_proxy);
  std::printf("\nplanning %zu layers into %d stages (analytic costs), median of 3:\n", big_proxy.layers.size(),
              big_stages);
  json big_json = json::object();
  for (const auto& method : kMethods) {
    std::vector<double> t;
    double slowest = 0;
    for (int r = 0; r < 3; ++r) {
      PlanOptions o;
      o.stages = big_stages;
      t.push_back(seconds([&] { slowest = plan_stages(big_proxy, big_costs, method, o).slowest_stage_s(); }));
    }
    std::printf("  %-10s %8.1f ms   (estimated slowest stage %.4f ms)\n", method.c_str(), median(t) * 1e3,
                slowest * 1e3);
    big_json[method] = {{"plan_s", median(t)}, {"slowest_stage_estimated_s", slowest}};
  }
  std::printf("\nmetis / dp slowest stage (estimated): GPT worst %.4f (target <= 1.05), branch worst %.4f (target <= 1)\n",
              worst_gpt_ratio, worst_branch_ratio);
  const json doc{{"benchmark", "partition"},
                 {"threads", threads},
                 {"repeats", repeats},
                 {"results", results},
                 {"big_model", {{"layers", big_proxy.layers.size()}, {"stages", big_stages}, {"methods", big_json}}},
                 {"metis_over_dp_gpt_worst", worst_gpt_ratio},
                 {"metis_over_dp_branch_worst", worst_branch_ratio}};
  write_file_atomically(out, doc.dump(2) + "\n");
  std::printf("written to %s\n", out.c_str());
  return 0;
}
