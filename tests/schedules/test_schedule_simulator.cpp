// The timed play of schedules (schedule_simulator.h): Merak's unit-cost
// makespans, the 1F1B bubble formula, transfer costs under blocking and
// buffered sends (and rendezvous), ranks sharing cores, the gradient sync's
// overlap, and jitter.
#include "trine/schedules/schedule_registry.h"
#include "trine/schedules/schedule_simulator.h"

#include <gtest/gtest.h>

namespace trine {
namespace {

// F = 1, B = 2, R = 1 (a recomputing stage drops its whole forward), free transfers.
std::vector<StageTimes> unit_times(int stages, bool recompute, bool last_keeps) {
  std::vector<StageTimes> times(stages);
  for (int s = 0; s < stages; ++s) times[s].recompute = recompute && !(last_keeps && s == stages - 1) ? 1 : 0;
  return times;
}

double unit_makespan(const std::string& schedule, int p, int m, bool recompute) {
  const ScheduleSpec& spec = find_schedule(schedule);
  return simulate_schedule(pipeline_schedule(schedule, p, m), m, StageTopology::chain(p),
                           unit_times(p, recompute, spec.last_stage_keeps_everything))
      .makespan;
}

TEST(ScheduleSimulator, ReproducesMeraksUnitCostMakespans) {
  // ../shared/schedules/README.md: 1F1B recomputing everywhere, pre-recompute,
  // last stage no recompute, shifted critical path.
  EXPECT_DOUBLE_EQ(unit_makespan("1f1b", 4, 8, true), 44);
  EXPECT_DOUBLE_EQ(unit_makespan("pre_recompute_1f1b", 4, 8, true), 41);
  EXPECT_DOUBLE_EQ(unit_makespan("last_no_recompute_1f1b", 4, 8, true), 39);
  EXPECT_DOUBLE_EQ(unit_makespan("shifted_critical_path", 4, 8, true), 38);
  EXPECT_DOUBLE_EQ(unit_makespan("1f1b", 8, 16, true), 92);
  EXPECT_DOUBLE_EQ(unit_makespan("pre_recompute_1f1b", 8, 16, true), 85);
  EXPECT_DOUBLE_EQ(unit_makespan("last_no_recompute_1f1b", 8, 16, true), 83);
  EXPECT_DOUBLE_EQ(unit_makespan("shifted_critical_path", 8, 16, true), 82);
}

TEST(ScheduleSimulator, OneFOneBAndGPipeHaveTheTextbookBubble) {
  for (int p : {2, 4, 8})
    for (int m : {p, 2 * p, 4 * p})
      for (const char* schedule : {"1f1b", "gpipe"}) {
        const auto r = simulate_schedule(pipeline_schedule(schedule, p, m), m, StageTopology::chain(p),
                                         unit_times(p, false, false));
        EXPECT_DOUBLE_EQ(r.makespan, 3.0 * (m + p - 1)) << schedule << " p=" << p << " m=" << m;
        EXPECT_NEAR(r.bubble, (p - 1.0) / (m + p - 1), 1e-12) << schedule << " p=" << p << " m=" << m;
        for (double busy : r.busy) EXPECT_DOUBLE_EQ(busy, 3.0 * m);
      }
}

TEST(ScheduleSimulator, InterleavingShrinksTheBubbleByTheChunkCount) {
  // v chunks of a stage's work each: F = 1/v, B = 2/v; bubble (p-1)/(v m) of the ideal 3m.
  const int p = 4, m = 8, v = 2;
  std::vector<StageTimes> times(p * v);
  for (auto& t : times) t.forward = 1.0 / v, t.backward = 2.0 / v;
  const auto r = simulate_schedule(pipeline_schedule("interleaved_1f1b", p, m, v), m, StageTopology::chain(p * v),
                                   times);
  EXPECT_NEAR(r.makespan, 3.0 * m + 3.0 * (p - 1) / v, 1e-9);
}

TEST(ScheduleSimulator, TransfersCostTheirTimeBlockingOrBuffered) {
  // Two stages, one microbatch: F0, activation over, F1 B1, gradient back, B0.
  std::vector<StageTimes> times(2);
  times[0].activation_transfer = 0.5;
  times[1].gradient_transfer = 0.25;
  for (SendMode mode : {SendMode::Blocking, SendMode::Buffered}) {
    SimulationOptions o;
    o.mode = mode;
    const auto r = simulate_schedule(pipeline_schedule("1f1b", 2, 1), 1, StageTopology::chain(2), times, o);
    EXPECT_DOUBLE_EQ(r.makespan, 1 + 0.5 + 1 + 2 + 0.25 + 2);
  }
  // Blocking: a sender waits for its receiver. GPipe, m = 2: stage 0's second
  // send cannot complete before stage 1 posts the receive after its first forward.
  times[0].forward = 0.1;
  times[0].activation_transfer = 0;
  times[1].gradient_transfer = 0;
  SimulationOptions blocking;
  const auto b = simulate_schedule(pipeline_schedule("gpipe", 2, 2), 2, StageTopology::chain(2), times, blocking);
  SimulationOptions buffered;
  buffered.mode = SendMode::Buffered;
  const auto u = simulate_schedule(pipeline_schedule("gpipe", 2, 2), 2, StageTopology::chain(2), times, buffered);
  EXPECT_DOUBLE_EQ(u.makespan, b.makespan);  // the critical path is stage 1's either way
  double blocked_send_end = 0, buffered_send_end = 0;
  for (const auto& e : b.timeline)
    if (e.rank == 0 && e.name == "[sA1]") blocked_send_end = e.end;
  for (const auto& e : u.timeline)
    if (e.rank == 0 && e.name == "[sA1]") buffered_send_end = e.end;
  EXPECT_DOUBLE_EQ(blocked_send_end, 1.1);  // stage 1 posts rA1 after F0 (0.1 .. 1.1)
  EXPECT_DOUBLE_EQ(buffered_send_end, 0.2);
}

TEST(ScheduleSimulator, RanksSharingCoresSlowDownWhileTheyComputeTogether) {
  // GPipe p = 2, m = 2 on one core: one core is always busy, 12 units of work.
  SimulationOptions o;
  o.speed = shared_cores_speed(1, 2);
  const auto r = simulate_schedule(pipeline_schedule("gpipe", 2, 2), 2, StageTopology::chain(2),
                                   unit_times(2, false, false), o);
  EXPECT_DOUBLE_EQ(r.makespan, 12);
  o.speed = shared_cores_speed(2, 2);
  EXPECT_DOUBLE_EQ(simulate_schedule(pipeline_schedule("gpipe", 2, 2), 2, StageTopology::chain(2),
                                     unit_times(2, false, false), o)
                       .makespan,
                   9);
}

TEST(ScheduleSimulator, GradientSyncOverlapsTheFinalBackwardThenTheStepSynchronises) {
  std::vector<StageTimes> times(1);
  times[0].optimizer = 0.25;
  SimulationOptions o;
  o.step_sync = 0.5;
  // F0 B0 F1 B1: the final backward starts at 4 and ends at 6.
  times[0].reduce = 1.5;  // hidden behind it
  EXPECT_DOUBLE_EQ(simulate_schedule(pipeline_schedule("1f1b", 1, 2), 2, StageTopology::chain(1), times, o).makespan,
                   6 + 0.5 + 0.25);
  times[0].reduce = 3;  // one unit sticks out
  EXPECT_DOUBLE_EQ(simulate_schedule(pipeline_schedule("1f1b", 1, 2), 2, StageTopology::chain(1), times, o).makespan,
                   7 + 0.5 + 0.25);
}

TEST(ScheduleSimulator, ReportsMemoryPeaksAndATraceOfEveryInstruction) {
  const int p = 4, m = 8;
  const auto r = simulate_schedule(pipeline_schedule("1f1b", p, m), m, StageTopology::chain(p),
                                   unit_times(p, false, false));
  EXPECT_EQ(r.memory.peak_in_flight, (std::vector<int>{4, 3, 2, 1}));
  size_t instructions = 0;
  for (int s = 0; s < p; ++s) instructions += stage_schedule("1f1b", p, m, s).size();
  EXPECT_EQ(r.timeline.size(), instructions);
  const std::string trace = chrome_trace(r.timeline);
  EXPECT_NE(trace.find("\"traceEvents\""), std::string::npos);
  EXPECT_NE(trace.find("\"name\": \"B7\""), std::string::npos);
}

TEST(ScheduleSimulator, RendezvousSendsLeaveOnceTheReceiveIsPosted) {
  // GPipe, p = 2, m = 2; stage 1's forward (3) outlasts stage 0's (1), so it
  // posts its receive of A1 at 4.5, long after A1 was sent at 2.
  std::vector<StageTimes> times(2);
  times[0].forward = 1;
  times[1].forward = 3;
  times[0].activation_transfer = 0.5;
  SimulationOptions o;
  o.mode = SendMode::Buffered;
  const auto program = pipeline_schedule("gpipe", 2, 2);
  const double buffered = simulate_schedule(program, 2, StageTopology::chain(2), times, o).makespan;
  o.rendezvous = true;
  const double rendezvous = simulate_schedule(program, 2, StageTopology::chain(2), times, o).makespan;
  // A0 arrives at 1.5 either way; A1 at 2.5 (buffered, waiting for the
  // receive at 4.5) or at 4.5 + 0.5 (rendezvous).
  EXPECT_DOUBLE_EQ(rendezvous - buffered, 0.5);
  // Posted ahead (as stage 1 starts its first instruction), the receive of
  // A1 is waiting when A1 is sent: it arrives at 2.5 again.
  o.receives_ahead = true;
  EXPECT_DOUBLE_EQ(simulate_schedule(program, 2, StageTopology::chain(2), times, o).makespan, buffered);
}

TEST(ScheduleSimulator, ReceivesAheadKeepEveryScheduleValidAndNeverSlower) {
  std::vector<StageTimes> times(4);
  for (auto& t : times) t.activation_transfer = t.gradient_transfer = 0.3, t.recompute = 0.5;
  for (const std::string name : {"1f1b", "gpipe", "interleaved_1f1b", "shifted_critical_path"}) {
    const int v = name == "interleaved_1f1b" ? 2 : 1;
    const auto program = pipeline_schedule(name, 4 / v, 8, v);
    SimulationOptions o;
    o.mode = SendMode::Buffered;
    o.rendezvous = true;
    const double late = simulate_schedule(program, 8, StageTopology::chain(4), times, o).makespan;
    o.receives_ahead = true;
    const double ahead = simulate_schedule(program, 8, StageTopology::chain(4), times, o).makespan;
    EXPECT_LE(ahead, late + 1e-12) << name;
    EXPECT_GT(ahead, 0) << name;
  }
}

TEST(ScheduleSimulator, JitterVariesInstructionsAroundTheirMeanAndDelaysThePipeline) {
  const auto program = pipeline_schedule("1f1b", 2, 8);
  const std::vector<StageTimes> times(2);  // F = 1, B = 2
  SimulationOptions o;
  const double still = simulate_schedule(program, 8, StageTopology::chain(2), times, o).makespan;
  o.jitter = 0.2;
  double sum = 0;
  for (unsigned seed = 1; seed <= 40; ++seed) {
    o.seed = seed;
    const double one = simulate_schedule(program, 8, StageTopology::chain(2), times, o).makespan;
    EXPECT_EQ(one, simulate_schedule(program, 8, StageTopology::chain(2), times, o).makespan) << "seeded";
    sum += one;
  }
  // Mean-1 factors leave the work alone, but waiting on the later of two
  // peers costs: the mean step is longer than the still one, not by much.
  EXPECT_GT(sum / 40, still * 1.01);
  EXPECT_LT(sum / 40, still * 1.25);
}

TEST(ScheduleSimulator, RejectsTimesThatDoNotFitTheTopology) {
  std::vector<StageTimes> times(3);
  EXPECT_THROW(simulate_schedule(pipeline_schedule("1f1b", 2, 2), 2, StageTopology::chain(2), times), c10::Error);
  times.resize(2);
  times[1].backward = -1;
  EXPECT_THROW(simulate_schedule(pipeline_schedule("1f1b", 2, 2), 2, StageTopology::chain(2), times), c10::Error);
}

}  // namespace
}  // namespace trine
