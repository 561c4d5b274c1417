// recompute/: the stage-aware ratio rule and how a ratio picks segments.
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
        if (r[i] > 0) EXPECT_NEAR((p - 1 - i) * (1 - r[i]), (p - 1) * (1 - r0), 1e-12) << p << " " << r0 << " " << i;
        if (i > 0) EXPECT_LE(r[i], r[i - 1]);
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
