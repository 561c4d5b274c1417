// Step prediction and the layout planner (runtime/step_prediction.h,
// runtime/layout_planner.h): the collective formulas and machine tables, the
// GPT cost formulas, how stage work becomes simulator times, shared cores
// slowing replicas, and the planner's ranking under a memory limit.
#include "../support/reference.h"
#include "trine/frontend/trace.h"
#include "trine/partitioner/cost_model.h"
#include "trine/runtime/layout_planner.h"
#include "trine/runtime/step_prediction.h"

#include <gtest/gtest.h>

#include <set>

namespace trine {
namespace {

TEST(StepPrediction, RingAllReduceTakesTwoNMinusOneStepsOfOneNthEach) {
  const Link link{1e-5, 1e9};
  EXPECT_DOUBLE_EQ(ring_allreduce_seconds(1e6, 1, link), 0);
  EXPECT_NEAR(ring_allreduce_seconds(1e6, 4, link), 6 * 1e-5 + 1.5 * 1e6 / 1e9, 1e-15);
  MachineDescription m;
  m.devices_per_node = 8;
  m.intra_node = {1e-6, 1e11};
  m.inter_node = {1e-5, 1e10};
  // Within a node: the intra-node link; spanning two: the network's.
  EXPECT_NEAR(m.allreduce(1e8, 8, 8), ring_allreduce_seconds(1e8, 8, m.intra_node), 1e-12);
  EXPECT_NEAR(m.allreduce(1e8, 2, 16), ring_allreduce_seconds(1e8, 2, m.inter_node), 1e-12);
}

TEST(StepPrediction, MeasuredTablesAreInterpolatedAndExtended) {
  MachineDescription m;
  m.shared_speed = {1, 0.9, 0.6};
  EXPECT_DOUBLE_EQ(m.pace(1), 1);
  EXPECT_DOUBLE_EQ(m.pace(2), 0.9);
  EXPECT_NEAR(m.pace(2.5), 0.75, 1e-12);
  EXPECT_NEAR(m.pace(6), 0.6 * 3 / 6, 1e-12);  // beyond the table: the last pace shared further
  m.shared_speed.clear();
  m.cores = 2;
  EXPECT_DOUBLE_EQ(m.pace(1), 1);
  EXPECT_DOUBLE_EQ(m.pace(4), 0.5);
  m.allreduce_seconds = {{0, 1e-4}, {1e6, 1e-3}};
  EXPECT_NEAR(m.allreduce(5e5, 2, 2), 5.5e-4, 1e-12);
  EXPECT_NEAR(m.allreduce(5e5, 3, 3), 2 * 5.5e-4, 1e-12);  // n ranks: n - 1 times two ranks' time
  EXPECT_NEAR(m.allreduce(2e6, 2, 2), 1.9e-3, 1e-12);      // extended along the last segment
}

TEST(StepPrediction, MachineDescriptionsAreReadStrictly) {
  const auto m = MachineDescription::from_json(
      nlohmann::json::parse(R"({"name": "x", "cores": 2, "shared_speed": [1, 0.5], "buffered_sends": true,
        "intra_node": {"latency_s": 1e-4, "bytes_per_s": 2e9}, "allreduce_bytes": [4, 1024],
        "allreduce_seconds": [1e-4, 2e-4]})"),
      "host.json");
  EXPECT_EQ(m.name, "x");
  EXPECT_DOUBLE_EQ(m.intra_node.bytes_per_s, 2e9);
  EXPECT_EQ(m.allreduce_seconds.size(), 2u);
  auto error_of = [](const char* text) {
    try {
      MachineDescription::from_json(nlohmann::json::parse(text), "host.json");
    } catch (const c10::Error& e) {
      return std::string(e.what_without_backtrace());
    }
    return std::string();
  };
  EXPECT_NE(error_of(R"({"core": 2})").find("unknown key 'core' in host.json"), std::string::npos);
  EXPECT_NE(error_of(R"({"intra_node": {"bytes_per_s": 0}})").find("bytes_per_s > 0"), std::string::npos);
  EXPECT_NE(error_of(R"({"allreduce_bytes": [4], "allreduce_seconds": []})").find("as long"), std::string::npos);
  EXPECT_THROW(MachineDescription::named("tpu"), c10::Error);
}

TEST(StepPrediction, GptWorkFollowsTheTransformerFormulas) {
  const GptShape gpt{8, 1024, 16, 512, 32000};
  const MachineDescription a100 = MachineDescription::named("a100");
  const Layout layout{2, 4, 2, 1, 8, "1f1b"};
  RecomputeSettings full;
  full.policy = "full";
  const auto work = gpt_stage_work(gpt, 2, layout, a100, full);
  ASSERT_EQ(work.size(), 4u);
  const double b = 2, s = 512, h = 1024, v = 32000;
  const double block = 24 * b * s * h * h + 4 * b * s * s * h;
  EXPECT_NEAR(work[0].forward_s, 2 * block / 2 / a100.flops_per_second, 1e-12);
  EXPECT_NEAR(work[3].forward_s, (2 * block + 2 * b * s * h * v) / 2 / a100.flops_per_second, 1e-12);
  EXPECT_NEAR(work[1].backward_s, 2 * work[1].forward_s, 1e-15);
  EXPECT_NEAR(work[1].recompute_s, work[1].forward_s, 1e-15);  // full: the whole forward again
  EXPECT_DOUBLE_EQ(work[0].input_bytes, 0);
  EXPECT_DOUBLE_EQ(work[0].output_bytes, 2 * b * s * h);
  EXPECT_EQ(work[1].tp_allreduces, 4);  // two per block
  EXPECT_EQ(gpt.parameters(), 8 * (12 * 1024 * 1024 + 13 * 1024) + 32000 * 1024 + 512 * 1024 + 2 * 1024);
}

TEST(StepPrediction, StageTimesAddCommunicationAndKeepTheLastStageWhole) {
  std::vector<StageWork> work(3);
  for (auto& w : work) {
    w.forward_s = 1, w.backward_s = 2, w.recompute_s = 1;
    w.output_bytes = w.input_bytes = 1e6;
    w.gradient_bytes = 4e6;
    w.tp_allreduces = 2, w.tp_allreduce_bytes = 2e6;
  }
  MachineDescription m;
  m.devices_per_node = 100;
  m.intra_node = {1e-3, 1e9};
  const Layout scp{2, 3, 2, 1, 6, "shifted_critical_path"};
  const auto t = stage_times(work, scp, m);
  const double tp = 2 * ring_allreduce_seconds(1e6, 2, m.intra_node);
  EXPECT_NEAR(t[0].forward, 1 + tp, 1e-12);
  EXPECT_NEAR(t[0].backward, 2 + tp, 1e-12);
  EXPECT_NEAR(t[0].recompute, 1 + tp, 1e-12);
  EXPECT_DOUBLE_EQ(t[2].recompute, 0);  // the shifted critical path's last stage keeps everything
  EXPECT_NEAR(t[1].activation_transfer, 1e-3 + 1e-3, 1e-12);
  EXPECT_NEAR(t[1].reduce, ring_allreduce_seconds(4e6, 2, m.intra_node), 1e-12);
  const Layout ofob{2, 3, 2, 1, 6, "1f1b"};
  EXPECT_GT(stage_times(work, ofob, m)[2].recompute, 0);  // 1F1B recomputes on every stage
}

TEST(StepPrediction, ReplicasSharingCoresSlowEachOtherDown) {
  std::vector<StageWork> work(2);
  for (auto& w : work) w.forward_s = 0.01, w.backward_s = 0.02;
  MachineDescription alone;
  alone.buffered_sends = true;
  MachineDescription shared = alone;
  shared.cores = 2;
  const Layout one{1, 2, 1, 1, 8, "1f1b"}, two{2, 2, 1, 1, 8, "1f1b"};
  const double t_alone = simulate_layout(work, one, alone).makespan;
  EXPECT_NEAR(t_alone, 9 * 0.03, 1e-9);
  // One replica on two cores: no slowdown; two: about twice as slow.
  EXPECT_NEAR(simulate_layout(work, one, shared).makespan, t_alone, 1e-9);
  const double t_two = simulate_layout(work, two, shared).makespan;
  EXPECT_GT(t_two, 1.6 * t_alone);
  EXPECT_LT(t_two, 2.05 * t_alone);
  // Profiled under the same load as the run: back to the plain pace.
  EXPECT_LT(simulate_layout(work, two, shared, /*profiled_processes=*/4).makespan, 1.3 * t_alone);
}

TEST(StepPrediction, CommunicationCostsCpuOnlyOnSharedCores) {
  MachineDescription m;
  m.transfer_cpu_s = 1e-3;
  m.transfer_cpu_s_per_byte = 1e-9;
  m.allreduce_cpu_seconds = {{0, 2e-4}, {1e6, 2e-3}};
  EXPECT_DOUBLE_EQ(m.transfer_cpu(0), 0);  // nothing sent: no message
  EXPECT_NEAR(m.transfer_cpu(1e6), 2e-3, 1e-15);
  EXPECT_DOUBLE_EQ(m.allreduce_cpu(1e6, 1), 0);
  EXPECT_NEAR(m.allreduce_cpu(5e5, 2), 1.1e-3, 1e-15);
  EXPECT_NEAR(m.allreduce_cpu(5e5, 4), 1.5 * 1.1e-3, 1e-15);  // 2(n-1)/n of the bytes
  // One microbatch through two stages (no jitter, transfers free on the
  // wire): each stage's forward and backward carry one transfer's CPU, the
  // optimizer step the all-reduce's; the step ends after both optimizers.
  std::vector<StageWork> work(2);
  for (auto& w : work) w.forward_s = 0.01, w.backward_s = 0.02, w.gradient_bytes = 5e5;
  work[0].output_bytes = work[1].input_bytes = 1e6;
  m.buffered_sends = true;
  m.intra_node = {0, 1e15};
  const Layout layout{2, 2, 1, 1, 1, "gpipe"};
  const double device = simulate_layout(work, layout, m).makespan;
  MachineDescription shared = m;
  shared.shared_speed = {1, 1, 1, 1};
  const double host = simulate_layout(work, layout, shared).makespan;
  EXPECT_NEAR(host - device, 4 * m.transfer_cpu(1e6) + m.allreduce_cpu(5e5, 2), 1e-9);
  // Measured under a load that halved the pace: the CPU seconds count double.
  shared.shared_speed = {0.5, 0.5, 0.5, 0.5};
  EXPECT_NEAR(simulate_layout(work, layout, shared, /*profiled_processes=*/4).makespan - device,
              2 * (4 * m.transfer_cpu(1e6) + m.allreduce_cpu(5e5, 2)), 1e-9);
  const auto read = MachineDescription::from_json(
      nlohmann::json::parse(R"({"transfer_cpu_s": 1e-5, "transfer_cpu_s_per_byte": 3e-10,
        "allreduce_bytes": [4, 1024], "allreduce_seconds": [1e-4, 2e-4], "allreduce_cpu_seconds": [1e-5, 3e-5]})"),
      "host.json");
  EXPECT_DOUBLE_EQ(read.transfer_cpu_s_per_byte, 3e-10);
  EXPECT_EQ(read.allreduce_cpu_seconds.size(), 2u);
  EXPECT_THROW(MachineDescription::from_json(nlohmann::json::parse(
                   R"({"allreduce_bytes": [4], "allreduce_seconds": [1], "allreduce_cpu_seconds": [1, 2]})"),
                                             "host.json"),
               c10::Error);
  EXPECT_THROW(MachineDescription::from_json(nlohmann::json::parse(R"({"transfer_cpu_s": -1})"), "host.json"),
               c10::Error);
}

TEST(StepPrediction, ReplicasThatVaryWaitForTheSlowestOne) {
  std::vector<StageWork> work(2);
  for (auto& w : work) w.forward_s = 0.01, w.backward_s = 0.02, w.jitter = 0.2;
  MachineDescription m;
  m.buffered_sends = true;
  const double one = simulate_layout(work, Layout{1, 2, 1, 1, 8, "1f1b"}, m).makespan;
  const double four = simulate_layout(work, Layout{4, 2, 1, 1, 8, "1f1b"}, m).makespan;
  // Gradients are free here: only the wait for the slowest replica differs.
  EXPECT_GT(four, one * 1.01);
  work[0].jitter = work[1].jitter = 0;
  EXPECT_NEAR(simulate_layout(work, Layout{4, 2, 1, 1, 8, "1f1b"}, m).makespan, 9 * 0.03, 1e-9);
}

class Planner : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    ModelSpec spec = testing::small_gpt_spec();
    spec.layers = 4;
    spec.batch = 4;
    model_ = std::make_unique<ExampleModel>(make_example_model(spec));
    traced_ = trace(model_->module, model_->loss, model_->batch(0));
    proxy_ = build_proxy_graph(traced_);
    AnalyticOptions a;
    a.flops_per_second = 1e9;
    profiles_ = {{4, analytic_costs(proxy_, a)}};
    options_.world = 4;
    options_.global_batch = 16;
    options_.machine = MachineDescription::this_host();
    options_.machine.cores = 2;
  }
  std::unique_ptr<ExampleModel> model_;
  TracedModel traced_;
  ProxyGraph proxy_;
  std::vector<LayerProfile> profiles_;
  PlannerOptions options_;
};

TEST_F(Planner, RanksEveryLayoutOfTheWorldFastestFirst) {
  const auto ranked = plan_layouts(traced_, proxy_, profiles_, options_);
  ASSERT_GT(ranked.size(), 20u);
  std::set<std::string> layouts;
  for (const auto& c : ranked) {
    EXPECT_EQ(c.layout.dp * c.layout.pp * c.layout.tp, 4) << c.describe();
    EXPECT_EQ(16 % (c.layout.dp * c.layout.microbatches), 0) << c.describe();
    EXPECT_TRUE(c.fits);
    EXPECT_GT(c.step_s, 0);
    EXPECT_LE(ranked.front().step_s, c.step_s * 1.002) << c.describe();
    layouts.insert(std::to_string(c.layout.dp) + "x" + std::to_string(c.layout.pp) + "x" +
                   std::to_string(c.layout.tp));
  }
  // dp x pp x tp: 4x1x1, 2x2x1, 1x4x1, 2x1x2, 1x2x2, 1x1x4.
  EXPECT_EQ(layouts.size(), 6u);
  const std::string table = layout_table(ranked, 16, 5);
  EXPECT_NE(table.find("best"), std::string::npos);
  EXPECT_NE(table.find(ranked[0].describe()), std::string::npos);
}

TEST_F(Planner, AMemoryLimitRulesOutLayoutsThatDoNotFit) {
  const auto free = plan_layouts(traced_, proxy_, profiles_, options_);
  int64_t least = free.front().memory_bytes;
  for (const auto& c : free) least = std::min(least, c.memory_bytes);
  ASSERT_LT(least, free.front().memory_bytes) << "the fastest layout is also the smallest; the test needs another";
  options_.memory_per_device = least;
  const auto limited = plan_layouts(traced_, proxy_, profiles_, options_);
  EXPECT_TRUE(limited.front().fits);
  EXPECT_LE(limited.front().memory_bytes, least);
  for (size_t i = 1; i < limited.size(); ++i)
    if (limited[i].fits) EXPECT_TRUE(limited[i - 1].fits);  // every fitting layout ranks first
  options_.memory_per_device = least / 4;
  const auto none = plan_layouts(traced_, proxy_, profiles_, options_);
  EXPECT_FALSE(none.front().fits);
  EXPECT_NE(layout_table(none, 16, 3).find("does not fit"), std::string::npos);
}

TEST_F(Planner, LayerTimesFollowTheLineThroughTwoProfiles) {
  CostModel small = profiles_[0].costs, big = profiles_[0].costs;
  for (auto& l : small.layers) l.forward_s = 1, l.backward_s = 2, l.activation_bytes = 100;
  for (auto& l : big.layers) l.forward_s = 3, l.backward_s = 4, l.activation_bytes = 400;
  const CostModel at = costs_at_rows({{1, small}, {4, big}}, 2.5);
  EXPECT_DOUBLE_EQ(at.layers[0].forward_s, 2);   // 1 + (3 - 1) / 3 x 1.5
  EXPECT_DOUBLE_EQ(at.layers[0].backward_s, 3);
  EXPECT_EQ(at.layers[0].activation_bytes, 250);  // proportional to the rows
  const CostModel one = costs_at_rows({{4, big}}, 2);
  EXPECT_DOUBLE_EQ(one.layers[0].forward_s, 1.5);
}

}  // namespace
}  // namespace trine
