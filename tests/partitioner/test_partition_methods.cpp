// Partition methods on small graphs whose best split is known (or found by
// brute force), and their promises: an ordered chain, every stage used, the
// model's outputs on the last stage, memory limits kept, determinism.
#include "graphs.h"
#include "trine/partitioner/partition_method.h"

#include <gtest/gtest.h>

#include <chrono>
#include <functional>

using namespace trine;
using namespace trine::testing;

namespace {

std::vector<int> run(const std::string& method, const PartitionGraph& g, int k, int64_t limit = 0,
                     std::vector<std::string> starts = {}) {
  PlanOptions o;
  o.stages = k;
  o.memory_limit_bytes = limit;
  o.manual_starts = std::move(starts);
  return make_partition_method(method)->assign(g, o);
}

double slowest(const PartitionGraph& g, const std::vector<int>& a) {
  return slowest_stage_s(estimate_stages(g, a, PipelineShape{}));
}

// Throws unless `a` is an ordered chain over k stages, all used, outputs last.
void expect_pipeline(const PartitionGraph& g, const std::vector<int>& a, int k) {
  ASSERT_EQ(static_cast<int>(a.size()), g.num_layers());
  std::vector<int> used(k, 0);
  for (int s : a) {
    ASSERT_GE(s, 0);
    ASSERT_LT(s, k);
    used[s]++;
  }
  for (int s = 0; s < k; ++s) EXPECT_GT(used[s], 0) << "stage " << s << " is empty";
  for (const auto& v : g.values)
    for (int c : v.consumers) EXPECT_LE(a[v.producer], a[c]) << v.name << " flows backwards";
  for (int l : g.output_layers) EXPECT_EQ(a[l], k - 1) << "output layer " << l << " not on the last stage";
}

// Every assignment of n layers to k stages that is a pipeline (brute force).
void for_each_pipeline(const PartitionGraph& g, int k, const std::function<void(const std::vector<int>&)>& f) {
  const int n = g.num_layers();
  std::vector<int> a(n, 0);
  const auto producers = g.producers();
  std::function<void(int)> go = [&](int l) {
    if (l == n) {
      std::vector<bool> used(k, false);
      for (int s : a) used[s] = true;
      if (std::find(used.begin(), used.end(), false) != used.end()) return;
      for (int o : g.output_layers)
        if (a[o] != k - 1) return;
      f(a);
      return;
    }
    int lo = 0;
    for (int p : producers[l]) lo = std::max(lo, a[p]);
    for (int s = lo; s < k; ++s) {
      a[l] = s;
      go(l + 1);
    }
  };
  go(0);
}

}  // namespace

TEST(PartitionMethods, EqualChainSplitsEvenly) {
  const auto g = chain({1, 1, 1, 1, 1, 1});
  for (const std::string m : {"metis", "dp", "uniform", "parameters"}) {
    const auto a = run(m, g, 3);
    expect_pipeline(g, a, 3);
    if (m != "parameters") {
      EXPECT_DOUBLE_EQ(slowest(g, a), 2.0) << m;
    }
  }
  EXPECT_EQ(run("uniform", g, 3), (std::vector<int>{0, 0, 1, 1, 2, 2}));
}

TEST(PartitionMethods, DpIsolatesAHeavyLayerThatUniformDoesNot) {
  const auto g = chain({5, 1, 1, 1, 1, 1});
  EXPECT_EQ(run("dp", g, 2), (std::vector<int>{0, 1, 1, 1, 1, 1}));
  EXPECT_DOUBLE_EQ(slowest(g, run("dp", g, 2)), 5.0);
  EXPECT_DOUBLE_EQ(slowest(g, run("uniform", g, 2)), 7.0);
  EXPECT_DOUBLE_EQ(slowest(g, run("metis", g, 2)), 5.0);
}

TEST(PartitionMethods, DpIsOptimalOverContiguousSplitsWithAndWithoutMemoryLimit) {
  for (unsigned seed = 0; seed < 20; ++seed) {
    PartitionGraph g = random_dag(9, seed);
    const int k = 3;
    for (int64_t limit : {int64_t{0}, int64_t{70000}}) {
      double best = 1e300;
      // All contiguous splits of the layer order into k runs.
      for (int c1 = 1; c1 < 9; ++c1)
        for (int c2 = c1 + 1; c2 < 9; ++c2) {
          std::vector<int> a(9);
          for (int l = 0; l < 9; ++l) a[l] = l < c1 ? 0 : (l < c2 ? 1 : 2);
          const auto est = estimate_stages(g, a, PipelineShape{});
          bool fits = true;
          for (const auto& e : est) fits = fits && (limit == 0 || e.memory_bytes <= limit);
          if (fits) best = std::min(best, slowest_stage_s(est));
        }
      if (best == 1e300) {
        EXPECT_THROW(run("dp", g, k, limit), c10::Error);
        continue;
      }
      const auto a = run("dp", g, k, limit);
      expect_pipeline(g, a, k);
      EXPECT_NEAR(slowest(g, a), best, 1e-12) << "seed " << seed << " limit " << limit;
      if (limit > 0) {
        for (const auto& e : estimate_stages(g, a, PipelineShape{})) EXPECT_LE(e.memory_bytes, limit);
      }
    }
  }
}

TEST(PartitionMethods, MetisFindsTheInterleavedSplitOfTwoBranches) {
  // r -> a1 -> a2 -> j and r -> b1 -> b2 -> j. In layer order (r a1 a2 b1 b2 j)
  // the best contiguous split is 4; putting one layer of each branch on each
  // stage ({r a1 b1} {a2 b2 j}) gives 3, which only a non-contiguous method finds.
  PartitionGraph g = layers_with_times({0, 2, 2, 1, 1, 0});
  add_value(g, 0, {1, 3});
  add_value(g, 1, {2});
  add_value(g, 2, {5});
  add_value(g, 3, {4});
  add_value(g, 4, {5});
  g.output_layers = {5};
  EXPECT_DOUBLE_EQ(slowest(g, run("dp", g, 2)), 4.0);
  const auto a = run("metis", g, 2);
  expect_pipeline(g, a, 2);
  EXPECT_DOUBLE_EQ(slowest(g, a), 3.0);
}

TEST(PartitionMethods, MetisOnRandomGraphsIsAValidPipelineNearTheOptimum) {
  double worst_ratio = 0;
  for (unsigned seed = 0; seed < 12; ++seed) {
    const PartitionGraph g = random_dag(8, 100 + seed);
    const int k = 3;
    double optimum = 1e300;
    for_each_pipeline(g, k, [&](const std::vector<int>& a) { optimum = std::min(optimum, slowest(g, a)); });
    const auto a = run("metis", g, k);
    expect_pipeline(g, a, k);
    const double got = slowest(g, a);
    EXPECT_GE(got, optimum - 1e-12);
    worst_ratio = std::max(worst_ratio, got / optimum);
  }
  // Not always the optimum (the refinement is local), but close on these graphs.
  EXPECT_LE(worst_ratio, 1.25);
  std::cout << "metis / brute-force optimum, worst over 12 random graphs: " << worst_ratio << "\n";
}

TEST(PartitionMethods, MetisIsDeterministicForASeed) {
  const PartitionGraph g = random_dag(300, 7);
  PlanOptions o;
  o.stages = 8;
  o.seed = 3;
  const auto m = make_partition_method("metis");
  const auto a = m->assign(g, o);
  expect_pipeline(g, a, 8);
  EXPECT_EQ(a, m->assign(g, o));
}

TEST(PartitionMethods, ParametersBalancesParameterCounts) {
  PartitionGraph g = chain({1, 1, 1, 1});
  for (int l = 0; l < 4; ++l) {
    const int64_t numel = l == 0 ? 3000 : 1000;
    g.params.push_back({"p" + std::to_string(l), numel * 4, numel * 16, numel});
    g.layers[l].params = {l};
  }
  EXPECT_EQ(run("parameters", g, 2), (std::vector<int>{0, 1, 1, 1}));
  EXPECT_EQ(run("uniform", g, 2), (std::vector<int>{0, 0, 1, 1}));
}

TEST(PartitionMethods, TiedParameterIsCountedOncePerStage) {
  PartitionGraph g = chain({1, 1, 1});
  g.params.push_back({"emb", 400, 1600, 100});
  g.layers[0].params = {0};
  g.layers[2].params = {0};  // the tied head
  const auto together = estimate_stages(g, {0, 0, 0}, PipelineShape{});
  EXPECT_EQ(together[0].state_bytes, 1600);
  const auto apart = estimate_stages(g, {0, 1, 1}, PipelineShape{});
  EXPECT_EQ(apart[0].state_bytes, 1600);
  EXPECT_EQ(apart[1].state_bytes, 1600);
}

TEST(PartitionMethods, MemoryLimitMovesTheSplitAndAnImpossibleLimitSaysTheBest) {
  // Equal times; layer 0 holds a big parameter. Time alone would split 2+2;
  // with 1F1B stage 0 holds 2 microbatches, stage 1 one.
  PartitionGraph g = chain({1, 1, 1, 1});
  g.params.push_back({"big", 1000, 4000, 250});
  g.layers[0].params = {0};
  for (auto& l : g.layers) l.activation_bytes = 1000;
  EXPECT_EQ(run("dp", g, 2), (std::vector<int>{0, 0, 1, 1}));
  // Stage 0 with layers {0,1}: 4000 + 2*2000 = 8000 > 7000; {0}: 4000 + 2*1000 = 6000.
  EXPECT_EQ(run("dp", g, 2, 7000), (std::vector<int>{0, 1, 1, 1}));
  EXPECT_EQ(run("metis", g, 2, 7000), (std::vector<int>{0, 1, 1, 1}));
  try {
    run("dp", g, 2, 3000);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("memory limit of 2.9 KiB"), std::string::npos) << msg;
    EXPECT_NE(msg.find("least possible peak"), std::string::npos) << msg;
  }
}

TEST(PartitionMethods, OutputLayerStaysOnTheLastStage) {
  // A diamond 0 -> {1, 2} -> 3: whatever the method, layer 3 ends on the last stage.
  PartitionGraph g = layers_with_times({1, 1, 1, 1});
  add_value(g, 0, {1, 2});
  add_value(g, 2, {3});
  add_value(g, 1, {3});
  g.output_layers = {3};
  for (const std::string m : {"metis", "dp", "uniform", "parameters"}) expect_pipeline(g, run(m, g, 3), 3);
}

TEST(PartitionMethods, ManualSplitsWhereToldAndNamesBadLayers) {
  const auto g = chain({1, 1, 1, 1, 1});
  EXPECT_EQ(run("manual", g, 3, 0, {"L2", "L4"}), (std::vector<int>{0, 0, 1, 1, 2}));
  EXPECT_EQ(run("manual", g, 3, 0, {"L0", "L2", "L4"}), (std::vector<int>{0, 0, 1, 1, 2}));
  auto message = [&](std::vector<std::string> starts, int k) {
    try {
      run("manual", g, k, 0, std::move(starts));
    } catch (const c10::Error& e) {
      return std::string(e.what_without_backtrace());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({"L9"}, 2).find("'L9' is not a layer of the model; its layers are: L0 L1"), std::string::npos);
  EXPECT_NE(message({"L3", "L2"}, 3).find("'L2' comes after 'L3'"), std::string::npos);
  EXPECT_NE(message({"L3"}, 3).find("make 2 stages, but 3 stages were asked for"), std::string::npos);
}

TEST(PartitionMethods, UnknownMethodListsTheKnownOnes) {
  try {
    make_partition_method("greedy");
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("'greedy'; the methods are: metis dp uniform parameters manual"),
              std::string::npos);
  }
}

TEST(PartitionMethods, AThousandLayersPlanQuicklyIntoSixteenStages) {
  // Timing is the benchmark's business; this proves the big case works and is valid.
  const PartitionGraph g = random_dag(1000, 11);
  for (const std::string m : {"metis", "dp", "uniform", "parameters"}) expect_pipeline(g, run(m, g, 16), 16);
}
