// Pipeline schedules and their checker: every GPipe and 1F1B schedule for
// p <= 16 and m <= 64 is proven, on chains and on pipelines with skip values;
// broken schedules are caught with a message that says what went wrong.
#include "trine/schedules/pipeline_schedule.h"
#include "trine/schedules/schedule_checker.h"
#include "trine/schedules/schedule_registry.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace trine {
namespace {

using Kind = Transfer::Kind;

std::string check_error(const std::vector<std::vector<Instruction>>& program, int m,
                        const StageTopology& topo) {
  try {
    check_schedule(program, m, topo);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

TEST(Schedules, EveryChainScheduleUpTo16StagesAnd64MicrobatchesIsProven) {
  for (int p = 1; p <= 16; ++p) {
    for (int m = 1; m <= 64; ++m) {
      const auto topo = StageTopology::chain(p);
      const auto gpipe = check_schedule(pipeline_schedule("gpipe", p, m), m, topo);
      const auto ofob = check_schedule(pipeline_schedule("1f1b", p, m), m, topo);
      for (int s = 0; s < p; ++s) {
        ASSERT_EQ(gpipe.peak_in_flight[s], m) << "gpipe p=" << p << " m=" << m << " stage " << s;
        ASSERT_EQ(ofob.peak_in_flight[s], std::min(p - s, m)) << "1f1b p=" << p << " m=" << m << " stage " << s;
      }
    }
  }
}

TEST(Schedules, OneFOneBStreamsHaveTheExpectedShape) {
  // p=4, m=6, stage 1: two warm-up forwards, steady 1F1B with paired transfers, drain.
  EXPECT_EQ(to_string(one_f_one_b_schedule(4, 6, 1)),
            "[rA0] F0 [sA0] [rA1] F1 [sA1] [rA2] F2 [sA2 rG0] B0 [sG0 rA3] F3 [sA3 rG1] B1 [sG1 rA4] F4 "
            "[sA4 rG2] B2 [sG2 rA5] F5 [sA5 rG3] B3 [sG3] [rG4] B4 [sG4] [rG5] B5 [sG5] reduce step");
  EXPECT_EQ(to_string(one_f_one_b_schedule(3, 2, 2)), "[rA0] F0 B0 [sG0 rA1] F1 B1 [sG1] reduce step");
  EXPECT_EQ(to_string(gpipe_schedule(2, 2, 0)), "F0 [sA0] F1 [sA1] [rG0] B0 [rG1] B1 reduce step");
  EXPECT_EQ(to_string(one_f_one_b_schedule(1, 2, 0)), "F0 B0 F1 B1 reduce step");
}

// Every pipeline of up to 5 stages whose stages also send straight to later
// stages (a chain plus any set of skip edges) is proven with buffered sends,
// as the executor runs them over Gloo, and GPipe also with blocking sends.
// (1F1B with blocking sends does deadlock there: see the next test.)
TEST(Schedules, SchedulesWithSkipTransfersAreProven) {
  for (int p = 3; p <= 5; ++p) {
    std::vector<std::pair<int, int>> skips;
    for (int a = 0; a < p; ++a)
      for (int b = a + 2; b < p; ++b) skips.emplace_back(a, b);
    for (unsigned mask = 0; mask < (1u << skips.size()); ++mask) {
      auto topo = StageTopology::chain(p);
      for (size_t e = 0; e < skips.size(); ++e)
        if (mask & (1u << e)) topo.consumers[skips[e].first].push_back(skips[e].second);
      for (int m : {1, 2, 3, 5, 8, 13}) {
        for (std::string kind : {"gpipe", "1f1b"}) {
          SCOPED_TRACE(kind + " p=" + std::to_string(p) + " m=" + std::to_string(m) +
                       " skip mask " + std::to_string(mask));
          const auto r = check_schedule(pipeline_schedule(kind, p, m), m, topo, SendMode::Buffered);
          // GPipe needs no buffering even with skip transfers (what the
          // runtime suggests when 1F1B cannot run a plan under NCCL).
          if (kind == "gpipe") {
            EXPECT_NO_THROW(check_schedule(pipeline_schedule(kind, p, m), m, topo));
          }
          if (kind == "1f1b") {
            for (int s = 0; s < p; ++s) EXPECT_EQ(r.peak_in_flight[s], std::min(p - s, m));
          }
        }
      }
    }
  }
}

TEST(Schedules, SkipTransfersDeadlockOneFOneBWithBlockingSends) {
  auto topo = StageTopology::chain(4);
  topo.consumers[0].push_back(3);
  const auto program = pipeline_schedule("1f1b", 4, 4);
  const auto msg = check_error(program, 4, topo);
  EXPECT_NE(msg.find("deadlocks under blocking"), std::string::npos) << msg;
  EXPECT_NO_THROW(check_schedule(program, 4, topo, SendMode::Buffered));
}

TEST(Schedules, UnbatchedSendsBeforeReceivesDeadlock) {
  // Stage 0 waits for gradient 0 before it sends activation 1, while stage 1
  // waits for activation 1 before its backward of 0: the classic cycle that
  // batching the two transfers removes.
  std::vector<std::vector<Instruction>> cyclic = {
      {Instruction::forward(0), Instruction::communicate({{Kind::SendAct, 0}}), Instruction::forward(1),
       Instruction::communicate({{Kind::RecvGrad, 0}}), Instruction::communicate({{Kind::SendAct, 1}}),
       Instruction::backward(0), Instruction::communicate({{Kind::RecvGrad, 1}}), Instruction::backward(1),
       Instruction::reduce_grads(), Instruction::optimizer_step()},
      {Instruction::communicate({{Kind::RecvAct, 0}}), Instruction::forward(0),
       Instruction::communicate({{Kind::RecvAct, 1}}), Instruction::backward(0),
       Instruction::communicate({{Kind::SendGrad, 0}}), Instruction::forward(1), Instruction::backward(1),
       Instruction::communicate({{Kind::SendGrad, 1}}), Instruction::reduce_grads(), Instruction::optimizer_step()}};
  const auto msg = check_error(cyclic, 2, StageTopology::chain(2));
  EXPECT_NE(msg.find("deadlocks"), std::string::npos) << msg;
  EXPECT_NE(msg.find("stage 0 receives the gradient of microbatch 0 from stage 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("stage 1 receives the activation of microbatch 1 from stage 0"), std::string::npos) << msg;
}

TEST(Schedules, CheckerNamesBrokenSchedules) {
  const auto topo = StageTopology::chain(2);
  auto missing_recv = pipeline_schedule("gpipe", 2, 2);
  missing_recv[1].erase(missing_recv[1].begin());  // stage 1 never receives activation 0
  EXPECT_NE(check_error(missing_recv, 2, topo).find("activation of microbatch 0 from stage 0 to stage 1 is sent 1 "
                                                    "time(s) and received 0"),
            std::string::npos);

  auto twice = pipeline_schedule("gpipe", 1, 2);
  twice[0][1] = Instruction::forward(0);
  EXPECT_NE(check_error(twice, 2, StageTopology::chain(1)).find("microbatch 0 is forwarded twice"), std::string::npos);

  std::vector<std::vector<Instruction>> early = {
      {Instruction::backward(0), Instruction::forward(0), Instruction::reduce_grads(), Instruction::optimizer_step()}};
  EXPECT_NE(check_error(early, 1, StageTopology::chain(1)).find("backward of microbatch 0 before its forward"),
            std::string::npos);

  auto no_backward = pipeline_schedule("gpipe", 1, 2);
  no_backward[0].erase(no_backward[0].begin() + 3);  // drop B1
  EXPECT_NE(check_error(no_backward, 2, StageTopology::chain(1)).find("before the backward of microbatch 1"),
            std::string::npos);

  EXPECT_THROW(one_f_one_b_schedule(2, 0, 0), c10::Error);
  EXPECT_THROW(gpipe_schedule(2, 4, 2), c10::Error);
  EXPECT_THROW(find_schedule("zero-bubble"), c10::Error);
}

// The registry is the one list of schedules: names, summaries, generators,
// and the in-flight counts the partitioner uses come from the checker.
TEST(Schedules, RegistryNamesEveryScheduleOnceAndMeasuresItsMemory) {
  EXPECT_EQ(schedule_names(), (std::vector<std::string>{"1f1b", "gpipe", "interleaved_1f1b", "pre_recompute_1f1b",
                                                     "last_no_recompute_1f1b",
                                                     "shifted_critical_path"}));
  for (const auto& spec : registered_schedules()) EXPECT_FALSE(spec.summary.empty()) << spec.name;
  EXPECT_EQ(peak_in_flight("1f1b", 4, 8), (std::vector<int>{4, 3, 2, 1}));
  EXPECT_EQ(peak_in_flight("gpipe", 4, 8), (std::vector<int>{8, 8, 8, 8}));
  EXPECT_EQ(peak_in_flight("1f1b", 4, 2), (std::vector<int>{2, 2, 2, 1}));
  std::string err;
  try {
    find_schedule("zero-bubble");
  } catch (const c10::Error& e) {
    err = e.what_without_backtrace();
  }
  EXPECT_NE(err.find("schedule 'zero-bubble' is unknown; known schedules: \"1f1b\", \"gpipe\""), std::string::npos)
      << err;
}

}  // namespace
}  // namespace trine
