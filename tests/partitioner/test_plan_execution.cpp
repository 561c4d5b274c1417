// Every plan the partitioner writes trains like the unsplit model: for each
// example model, method and stage count, the plan goes through a file, back
// into a stage assignment, and staged execution gives the unsplit model's loss
// and gradients.
#include "trine/partitioner/profiler.h"
#include "trine/partitioner/stage_plan.h"
#include "../support/reference.h"

#include <gtest/gtest.h>

#include <filesystem>

using namespace trine;
using trine::testing::rel_diff;

namespace {

struct Case {
  std::string model;  // gpt | gpt_tied_dropout | skip | branch
  std::string method;
  int stages;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.model << " " << c.method << " k=" << c.stages; }

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.model + "_" + info.param.method + "_" + std::to_string(info.param.stages);
}

ModelSpec spec_of(const std::string& model) {
  ModelSpec s = trine::testing::small_gpt_spec(model == "gpt_tied_dropout", model == "gpt_tied_dropout" ? 0.1 : 0.0);
  if (model == "skip" || model == "branch") {
    s.name = model;
    s.layers = 4;
  }
  s.seed = 3;
  return s;
}

// The first layer of each stage after the first, for an even manual split.
std::vector<std::string> even_starts(const ProxyGraph& proxy, int k) {
  std::vector<std::string> starts;
  const int n = static_cast<int>(proxy.layers.size());
  for (int s = 1; s < k; ++s) starts.push_back(proxy.layers[s * n / k].name);
  return starts;
}

class PlanExecution : public ::testing::TestWithParam<Case> {};

}  // namespace

TEST_P(PlanExecution, TrainsLikeTheUnsplitModel) {
  const Case c = GetParam();
  auto m = make_example_model(spec_of(c.model));
  const TracedModel traced = trace(m.module, m.loss, m.batch(0));
  const ProxyGraph proxy = build_proxy_graph(traced);
  PlanOptions o;
  o.stages = c.stages;
  if (c.method == "manual") o.manual_starts = even_starts(proxy, c.stages);
  // Profiled costs for METIS (what `trine plan --profile` uses), analytic for the rest.
  ProfileOptions po;
  po.warmup = 0;
  po.repeats = 1;
  const CostModel costs = c.method == "metis" ? profile_layers(traced, proxy, m.batch(0), po) : analytic_costs(proxy);
  const std::string path = (std::filesystem::temp_directory_path() / ("trine_plan_" + case_name({c, 0}) + ".json")).string();
  plan_stages(proxy, costs, c.method, o).save(path);
  const StagePlan plan = StagePlan::load(path);
  std::filesystem::remove(path);
  ASSERT_EQ(plan.num_stages(), c.stages);

  SequentialStagedModel staged(traced, proxy, plan.stage_of_layer(proxy));
  SequentialStagedModel whole(traced, proxy, std::vector<int>(proxy.layers.size(), 0));
  for (int64_t step = 0; step < 2; ++step) {
    const RngPolicy rng{RngPolicy::Mode::PerOp, 11, step};
    staged.zero_grad();
    whole.zero_grad();
    const auto batch = m.batch(step);
    const double ls = staged.forward_backward(batch, rng).item<double>();
    const double lw = whole.forward_backward(batch, rng).item<double>();
    staged.reduce_shared_gradients();
    EXPECT_NEAR(ls, lw, 1e-6 * std::abs(lw)) << "step " << step;
    int compared = 0;
    for (const auto& p : proxy.params) {
      if (p.is_buffer || !p.requires_grad) continue;
      const auto gw = whole.gradient(p.name);
      ASSERT_TRUE(gw.defined()) << p.name;
      EXPECT_LE(rel_diff(staged.gradient(p.name), gw), 1e-6) << p.name;
      ++compared;
    }
    EXPECT_GT(compared, 3);
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, PlanExecution,
                         ::testing::ValuesIn([] {
                           std::vector<Case> cases;
                           for (const std::string model : {"gpt", "gpt_tied_dropout", "skip", "branch"})
                             for (const std::string method : {"metis", "dp", "uniform", "parameters", "manual"})
                               for (int k : {2, 4}) cases.push_back({model, method, k});
                           return cases;
                         }()),
                         case_name);
