// Interleaved 1F1B: every rank runs v model chunks (rank r: stages r, r+p,
// ...). Proven with blocking sends for p <= 16, v <= 4, m <= 64 (multiples
// of p); streams, in-flight counts and errors checked.
#include "../support/error_of.h"
#include "trine/schedules/pipeline_schedule.h"
#include "trine/schedules/schedule_checker.h"
#include "trine/schedules/schedule_registry.h"

#include <gtest/gtest.h>

namespace trine {
namespace {

using testing::error_of;

TEST(InterleavedSchedule, ProvenWithBlockingSendsUpTo16RanksAnd64Microbatches) {
  for (int p = 2; p <= 16; ++p)
    for (int v = 2; v <= 4; ++v)
      for (int m = p; m <= 64; m += p) {
        SCOPED_TRACE("p=" + std::to_string(p) + " v=" + std::to_string(v) + " m=" + std::to_string(m));
        const auto program = pipeline_schedule("interleaved_1f1b", p, m, v);
        ASSERT_EQ(program.size(), static_cast<size_t>(p));
        const auto r = check_schedule(program, m, StageTopology::chain(p * v));
        ASSERT_EQ(r.peak_in_flight.size(), static_cast<size_t>(p * v));
        ASSERT_EQ(r.rank_peak_activations.size(), static_cast<size_t>(p));
        // Rank 0 holds its warm-up forwards plus one, spread over its chunks;
        // the last stage holds one microbatch at a time, as in 1F1B.
        const int units = m * v;
        const double rank0 = std::min(units, 2 * (p - 1) + (v - 1) * p + 1);
        ASSERT_EQ(r.rank_peak_activations[0], rank0);
        ASSERT_EQ(r.peak_in_flight[p * v - 1], 1);
        for (int s = 0; s < p * v; ++s) ASSERT_LE(r.peak_in_flight[s], m);
      }
}

TEST(InterleavedSchedule, StreamsNameTheirChunks) {
  // p=2, v=2, m=2: rank 0 holds stages 0 and 2, rank 1 stages 1 and 3.
  EXPECT_EQ(to_string(interleaved_one_f_one_b_schedule(2, 2, 0, 2)),
            "F0 [sA0] F1 [sA1 rA0@1] F0@1 [sA0@1 rA1@1] F1@1 [sA1@1 rG0@1] B0@1 [sG0@1 rG1@1] B1@1 [sG1@1 rG0] "
            "B0 [rG1] B1 reduce step");
  // Rank 1 warms up with both chunk-0 forwards, then alternates; its
  // chunk 1 (the last stage) backwards each microbatch right after its forward.
  EXPECT_EQ(to_string(interleaved_one_f_one_b_schedule(2, 2, 1, 2)),
            "[rA0] F0 [sA0 rA1] F1 [sA1 rA0@1] F0@1 B0@1 [sG0@1 rA1@1] F1@1 B1@1 [sG1@1 rG0] B0 [sG0 rG1] B1 [sG1] "
            "reduce step");
  EXPECT_EQ(peak_in_flight("interleaved_1f1b", 2, 4, 2), (std::vector<int>{4, 3, 2, 1}));
}

TEST(InterleavedSchedule, PreconditionsAreErrors) {
  EXPECT_NE(error_of([] { pipeline_schedule("interleaved_1f1b", 4, 6, 2); }).find("multiple of the pipeline ranks"),
            std::string::npos);
  EXPECT_NE(error_of([] { pipeline_schedule("interleaved_1f1b", 4, 8, 1); }).find("virtual_stages = 1"),
            std::string::npos);
  EXPECT_NE(error_of([] { pipeline_schedule("interleaved_1f1b", 1, 8, 2); }).find("at least 2 pipeline ranks"),
            std::string::npos);
  EXPECT_NE(error_of([] { pipeline_schedule("1f1b", 4, 8, 2); }).find("runs one model chunk per pipeline rank"),
            std::string::npos);
}

TEST(InterleavedSchedule, CheckerRefusesChunksARankDoesNotHold) {
  auto program = pipeline_schedule("interleaved_1f1b", 2, 2, 2);
  for (auto& ins : program[0])
    if (ins.op == Instruction::Op::Forward) ins.chunk = 2;
  EXPECT_NE(error_of([&] { check_schedule(program, 2, StageTopology::chain(4)); }).find("no such model chunk"),
            std::string::npos);
  EXPECT_NE(error_of([&] { check_schedule(program, 2, StageTopology::chain(3)); }).find("same number of stages"),
            std::string::npos);
}

}  // namespace
}  // namespace trine
