// StagePlan: what a plan holds, JSON round trips, and every check on creation
// and on load naming the stage or layer at fault.
#include "trine/common/files.h"
#include "trine/partitioner/stage_plan.h"
#include "../support/reference.h"

#include <gtest/gtest.h>

#include <filesystem>

using namespace trine;
using json = nlohmann::json;

namespace {

struct Fixture {
  TracedModel traced;
  ProxyGraph proxy;
  CostModel costs;
};

Fixture gpt(bool tied = false) {
  auto m = make_example_model(trine::testing::small_gpt_spec(tied));
  Fixture f;
  f.traced = trace(m.module, m.loss, m.batch(0));
  f.proxy = build_proxy_graph(f.traced);
  f.costs = analytic_costs(f.proxy);
  return f;
}

StagePlan plan_of(const Fixture& f, const std::string& method, int k) {
  PlanOptions o;
  o.stages = k;
  return plan_stages(f.proxy, f.costs, method, o);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "no error";
}

#define EXPECT_ERROR(stmt, text)                                   \
  do {                                                             \
    const std::string msg_ = error_of([&] { stmt; });              \
    EXPECT_NE(msg_.find(text), std::string::npos) << msg_;         \
  } while (0)

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("trine_test_" + name)).string();
}

}  // namespace

TEST(StagePlan, HoldsLayersParamsCostsAndTransfers) {
  const Fixture f = gpt(/*tied=*/true);
  const StagePlan plan = plan_of(f, "uniform", 3);
  ASSERT_EQ(plan.num_stages(), 3);
  EXPECT_EQ(plan.num_layers, static_cast<int>(f.proxy.layers.size()));
  int listed = 0;
  for (const auto& s : plan.stages) listed += static_cast<int>(s.layers.size());
  EXPECT_EQ(listed, plan.num_layers);
  // Tied embedding: held by the first stage and by the stage of the head.
  EXPECT_NE(std::find(plan.stages[0].params.begin(), plan.stages[0].params.end(), "tok_emb.weight"),
            plan.stages[0].params.end());
  EXPECT_NE(std::find(plan.stages[2].params.begin(), plan.stages[2].params.end(), "tok_emb.weight"),
            plan.stages[2].params.end());
  // Every send has its receive, and the activation between stages is [batch, seq, hidden] floats.
  for (int s = 0; s < 3; ++s)
    for (const auto& t : plan.stages[s].sends) {
      const auto& rec = plan.stages[t.peer].receives;
      EXPECT_TRUE(std::any_of(rec.begin(), rec.end(), [&](const PlanTransfer& r) { return r.value == t.value && r.peer == s; }));
    }
  ASSERT_FALSE(plan.stages[0].sends.empty());
  EXPECT_EQ(plan.stages[0].sends[0].shape, (std::vector<int64_t>{2, 8, 32}));
  EXPECT_EQ(plan.stages[0].sends[0].bytes, 2 * 8 * 32 * 4);
  EXPECT_GE(plan.imbalance(), 1.0);
  EXPECT_NEAR(plan.slowest_stage_s() / plan.mean_stage_s(), plan.imbalance(), 1e-12);
  EXPECT_NE(plan.table().find("imbalance (slowest / mean)"), std::string::npos);
}

TEST(StagePlan, RoundTripsThroughAFile) {
  const Fixture f = gpt();
  const StagePlan plan = plan_of(f, "metis", 2);
  const std::string path = temp_path("plan.json");
  plan.save(path);
  const StagePlan back = StagePlan::load(path);
  EXPECT_EQ(back.to_json(), plan.to_json());
  EXPECT_EQ(back.stage_of_layer(f.proxy), plan.stage_of_layer(f.proxy));
  // Nothing but the plan itself is left beside it.
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::temp_directory_path()))
    EXPECT_EQ(e.path().filename().string().find("trine_test_plan.json."), std::string::npos) << e.path();
  std::filesystem::remove(path);
}

TEST(StagePlan, LoadRejectsBrokenPlansSayingWhere) {
  const Fixture f = gpt();
  const json good = plan_of(f, "uniform", 3).to_json();
  auto load = [](const json& j) { StagePlan::from_json(j); };
  {
    json j = good;
    j["stages"][1]["layers"].push_back(j["stages"][0]["layers"][0]);
    EXPECT_ERROR(load(j), "layer 'tok_emb' is listed on stage 0 and again on stage 1");
  }
  {
    json j = good;
    j["stages"][2]["layers"] = json::array();
    EXPECT_ERROR(load(j), "stage 2 has no layers");
  }
  {
    json j = good;
    j["stages"][0]["bogus"] = 1;
    EXPECT_ERROR(load(j), "unknown key 'bogus' in the plan.stages[0]");
  }
  {
    json j = good;
    j["num_layers"] = "many";
    EXPECT_ERROR(load(j), "the plan.num_layers must be an integer, got a string");
  }
  {
    json j = good;
    j["format"] = "something/2";
    EXPECT_ERROR(load(j), "not a trine stage plan");
  }
  {
    json j = good;  // 3 stages
    j["virtual_stages"] = 2;
    EXPECT_ERROR(load(j), "the plan's virtual_stages = 2: schedule '1f1b' runs one model chunk per pipeline rank");
    j["schedule"] = "interleaved_1f1b";
    EXPECT_ERROR(load(j), "the plan has 3 stages, not a multiple of its virtual_stages (2)");
  }
  {
    json j = good;
    j["memory_limit_bytes"] = 1000;
    EXPECT_ERROR(load(j), "above the memory limit of 1000 B");
  }
  {
    json j = good;
    j["stages"][0]["layers"].erase(0);
    EXPECT_ERROR(load(j), "the plan lists");
  }
  {
    json j = good;
    j["stages"] = json::array({j["stages"][0], j["stages"][1], j["stages"][2], j["stages"][2]});
    EXPECT_ERROR(load(j), "listed on stage 2 and again on stage 3");
  }
  const std::string path = temp_path("broken.json");
  write_file_atomically(path, "{\"format\": ");
  EXPECT_ERROR(StagePlan::load(path), "is not valid JSON");
  std::filesystem::remove(path);
}

TEST(StagePlan, AgainstAModelChecksNamesCountsAndOrder) {
  const Fixture f = gpt();
  const StagePlan plan = plan_of(f, "uniform", 3);
  {
    StagePlan p = plan;
    std::swap(p.stages[0].layers, p.stages[2].layers);  // data would flow backwards
    EXPECT_ERROR(p.stage_of_layer(f.proxy), "data must flow from a stage to itself or a later one");
  }
  {
    StagePlan p = plan;
    p.stages[1].layers[0] = "blocks.9";
    EXPECT_ERROR(p.stage_of_layer(f.proxy), "stage 1 of the plan holds layer 'blocks.9', which this model does not have");
  }
  {
    auto m = make_example_model(trine::testing::small_gpt_spec());
    ModelSpec bigger = trine::testing::small_gpt_spec();
    bigger.layers = 3;
    auto m3 = make_example_model(bigger);
    const TracedModel t3 = trace(m3.module, m3.loss, m3.batch(0));
    EXPECT_ERROR(plan.stage_of_layer(build_proxy_graph(t3)), "make a plan for this model");
  }
}

TEST(StagePlan, PlanningChecksTheOptions) {
  const Fixture f = gpt();
  const int n = static_cast<int>(f.proxy.layers.size());
  EXPECT_ERROR(plan_of(f, "dp", n + 1), "has only " + std::to_string(n) + " layers");
  EXPECT_ERROR(plan_of(f, "dp", 0), "at least 1");
  EXPECT_ERROR(plan_of(f, "magic", 2), "unknown partition method 'magic'");
  PlanOptions o;
  o.stages = 2;
  o.memory_limit_bytes = 1024;
  EXPECT_ERROR(plan_stages(f.proxy, f.costs, "dp", o), "memory limit of 1.0 KiB");
  EXPECT_ERROR(plan_stages(f.proxy, f.costs, "uniform", o), "above the memory limit of 1.0 KiB");
}
