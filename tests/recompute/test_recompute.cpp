// recompute/: the stage-aware ratio rule, how a ratio picks segments, and
// how each policy chooses every stage's checkpointed segments of layers.
#include "trine/recompute/recompute_policy.h"
#include "trine/recompute/stage_aware_ratios.h"

#include <gtest/gtest.h>

#include <c10/util/Exception.h>

#include <string>
#include <vector>

using namespace trine;

namespace {

void expect_ratios(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-3) << "stage " << i;
}

std::string error_of(int stages, double r0, bool shifted) {
  try {
    stage_aware_ratios(stages, r0, shifted);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

}  // namespace

TEST(StageAwareRatios, MatchMeraksWorkedExamples) {
  expect_ratios(stage_aware_ratios(4, 0.8), {0.8, 0.7, 0.4, 0.0});
  expect_ratios(stage_aware_ratios(8, 0.9), {0.9, 0.883, 0.86, 0.825, 0.767, 0.65, 0.3, 0.0});
  expect_ratios(stage_aware_ratios(4, 0.8, /*shifted_critical_path=*/true), {0.8, 0.7, 0.7, 0.0});
  expect_ratios(stage_aware_ratios(1, 0.6), {0.6});
  expect_ratios(stage_aware_ratios(2, 0.5), {0.5, 0.0});
}

TEST(StageAwareRatios, KeepTheMemoryOfExtraMicrobatchesEqualToStageZeros) {
  // Stage i holds p - i microbatches under 1F1B; (p - 1 - i)(1 - r_i) is the
  // kept activation memory of all but one of them, in units of a stage's
  // full activations, and must not depend on i while r_i > 0.
  for (int p : {2, 3, 4, 8, 16})
    for (double r0 : {0.5, 0.8, 0.95, 1.0}) {
      const auto r = stage_aware_ratios(p, r0);
      for (int i = 0; i + 1 < p; ++i) {
        if (r[i] > 0) {
          EXPECT_NEAR((p - 1 - i) * (1 - r[i]), (p - 1) * (1 - r0), 1e-12) << p << " " << r0 << " " << i;
        }
        if (i > 0) {
          EXPECT_LE(r[i], r[i - 1]);
        }
      }
      EXPECT_EQ(r[p - 1], 0.0);
    }
  // A low r0 leaves the later stages with nothing to recompute (never a negative ratio).
  expect_ratios(stage_aware_ratios(4, 0.2), {0.2, 0.0, 0.0, 0.0});
}

TEST(StageAwareRatios, BadInputIsAnErrorNamingIt) {
  EXPECT_NE(error_of(0, 0.5, false).find("at least one stage, got 0"), std::string::npos);
  EXPECT_NE(error_of(4, 1.5, false).find("ratio must be in [0, 1], got 1.5"), std::string::npos);
  EXPECT_NE(error_of(2, 0.5, true).find("shifted critical path schedule needs at least 3 stages, got 2"),
            std::string::npos);
}

TEST(SegmentsToRecompute, FloorOfSegmentsTimesRatioInForwardOrder) {
  EXPECT_EQ(segments_to_recompute(10, 0.7), 7);
  EXPECT_EQ(segments_to_recompute(100, 0.29), 29);  // 0.29 * 100 is a hair below 29 in doubles
  EXPECT_EQ(segments_to_recompute(3, 0.7), 2);
  EXPECT_EQ(segments_to_recompute(4, 0.0), 0);
  EXPECT_EQ(segments_to_recompute(4, 1.0), 4);
  EXPECT_EQ(segments_to_recompute(0, 0.5), 0);
  EXPECT_THROW(segments_to_recompute(4, -0.1), c10::Error);
}

// The rule from in-flight counts equals Merak's formula where they agree:
// 1F1B holds p - i on stage i; the shifted critical path holds 3 on stage p-2
// (both measured by the schedule checker, tests/schedules).
TEST(StageAwareRatios, FromInFlightCountsMatchTheFormulaAndTheShiftedVariant) {
  expect_ratios(stage_aware_ratios_for({4, 3, 2, 1}, 0.8), stage_aware_ratios(4, 0.8));
  expect_ratios(stage_aware_ratios_for({8, 7, 6, 5, 4, 3, 2, 1}, 0.9), stage_aware_ratios(8, 0.9));
  expect_ratios(stage_aware_ratios_for({4, 3, 3, 1}, 0.8), stage_aware_ratios(4, 0.8, true));
  expect_ratios(stage_aware_ratios_for({8, 8, 8}, 0.6), {0.6, 0.6, 0.6});  // GPipe: all hold m
  expect_ratios(stage_aware_ratios_for({1, 1}, 0.6), {0.6, 0.6});          // one microbatch each
  expect_ratios(stage_aware_ratios_for({2, 2, 2, 1}, 0.5), {0.5, 0.5, 0.5, 0.0});  // 1F1B, m = 2
}

namespace {

std::string settings_error(const RecomputeSettings& s) {
  try {
    check_recompute_settings(s, "config.recompute");
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

}  // namespace

// Policies become per-stage segments of layers: full in groups of `every`,
// the named layers, stage-aware's first floor(n_i r_i) layers.
TEST(RecomputePolicy, PoliciesChooseEachStagesSegments) {
  const std::vector<std::vector<int>> stages = {{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}};
  std::vector<std::string> names;
  for (int l = 0; l < 16; ++l) names.push_back("blocks." + std::to_string(l));
  const std::vector<int> one_f_one_b = {4, 3, 2, 1};
  RecomputeSettings s;
  for (const auto& stage : checkpointed_segments(s, stages, names, one_f_one_b)) {
    EXPECT_TRUE(stage.layer_segments.empty());
    EXPECT_FALSE(stage.attention_cores);
  }
  s.policy = "full";
  EXPECT_EQ(checkpointed_segments(s, stages, names, one_f_one_b)[1].layer_segments, (StageSegments{{4}, {5}, {6}, {7}}));
  s.every = 3;
  EXPECT_EQ(checkpointed_segments(s, stages, names, one_f_one_b)[2].layer_segments, (StageSegments{{8, 9, 10}, {11}}));
  s = {};
  s.policy = "selective";
  for (const auto& stage : checkpointed_segments(s, stages, names, one_f_one_b)) {
    EXPECT_TRUE(stage.layer_segments.empty());
    EXPECT_TRUE(stage.attention_cores);
  }
  s = {};
  s.policy = "layers";
  s.layers = {"blocks.1", "blocks.14", "blocks.3"};
  const auto listed = checkpointed_segments(s, stages, names, one_f_one_b);
  EXPECT_EQ(listed[0].layer_segments, (StageSegments{{1}, {3}}));
  EXPECT_TRUE(listed[1].layer_segments.empty());
  EXPECT_EQ(listed[3].layer_segments, (StageSegments{{14}}));
  s.layers = {"blocks.99"};
  try {
    checkpointed_segments(s, stages, names, one_f_one_b);
    ADD_FAILURE() << "an unknown layer was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("names 'blocks.99', which is not a layer of this model"),
              std::string::npos);
  }
  s = {};
  s.policy = "stage_aware";
  s.ratio = 0.8;  // ratios 0.8, 0.7, 0.4, 0 of 4 layers: 3, 2, 1, 0
  const auto aware = checkpointed_segments(s, stages, names, one_f_one_b);
  EXPECT_EQ(aware[0].layer_segments, (StageSegments{{0}, {1}, {2}}));
  EXPECT_EQ(aware[1].layer_segments, (StageSegments{{4}, {5}}));
  EXPECT_EQ(aware[2].layer_segments, (StageSegments{{8}}));
  EXPECT_TRUE(aware[3].layer_segments.empty());
  // The shifted critical path's stage p-2 holds 3: it recomputes as stage p-3.
  EXPECT_EQ(checkpointed_segments(s, stages, names, {4, 3, 3, 1})[2].layer_segments, (StageSegments{{8}, {9}}));
}

TEST(RecomputePolicy, SettingsThatDoNotFitAreErrorsNamingTheKey) {
  RecomputeSettings s;
  s.every = 2;
  EXPECT_NE(settings_error(s).find("config.recompute.every is read only by the \"full\" policy"), std::string::npos);
  s = {};
  s.policy = "layers";
  EXPECT_NE(settings_error(s).find("needs config.recompute.layers"), std::string::npos);
  s = {};
  s.policy = "stage_aware";
  EXPECT_NE(settings_error(s).find("needs config.recompute.ratio in (0, 1]"), std::string::npos);
  s.ratio = 0.5;
  EXPECT_EQ(settings_error(s), "");
  s.memory_limit_bytes = 1 << 20;
  EXPECT_NE(settings_error(s).find("are two ways to choose stage_aware's layers: give one"), std::string::npos);
  s.ratio = 0;
  EXPECT_EQ(settings_error(s), "");
  s.policy = "full";
  EXPECT_NE(settings_error(s).find("config.recompute.memory_limit_bytes is read only by the \"stage_aware\" policy"),
            std::string::npos);
  s = {};
  s.policy = "everything";
  EXPECT_NE(settings_error(s).find("not a recomputation policy; known: \"none\", \"full\", \"layers\", \"stage_aware\", \"selective\""),
            std::string::npos);
}
