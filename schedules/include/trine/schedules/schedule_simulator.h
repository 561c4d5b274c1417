// Plays a pipeline schedule in time, without a model: every rank runs its
// program (schedules/), each compute instruction taking the time its stage's
// costs say, transfers meeting their peers as check_schedule makes them meet
// (blocking: a send and its receive both complete once both are posted and
// the data has crossed; buffered: a send completes when posted, its receive
// when the data has arrived, the data leaving at the send or, under
// rendezvous, once the receive is posted too). docs/design.md §6a.
//
// Durations of one microbatch on a stage (StageTimes):
//   F and F*  forward;
//   R         forward when the microbatch went through F* (it kept only its
//             inputs), else recompute (what the stage's policy dropped);
//   B         backward, plus whatever is still dropped (forward after F*,
//             recompute after F) when no R came first;
//   a transfer  activation_transfer (one consumer) or gradient_transfer (one
//             producer); between two stages of one rank: 0, through memory;
//   ReduceGrads the gradient sync of the rank's stages (data-parallel and tied
//             all-reduces) starts with the rank's final backward, as the
//             executor's buckets do, and ends `reduce` later, or when that
//             backward ends if later;
//   the step  after every rank's ReduceGrads, one world all-reduce
//             (`step_sync`, the loss and gradient norm), then each rank's
//             optimizer, all at once: the step ends when the slowest one has.
// Ranks that share processors (CPU hosts) slow each other down: with
// `speed`, a rank computes at speed[k - 1] of its own pace while k ranks
// compute at once (waiting costs nothing); empty: every rank has its own
// device. shared_cores_speed(cores, n) is the ideal table for n ranks on
// `cores` cores, min(1, cores / k).
// The play is validated by check_schedule first (matched transfers, no
// deadlock, every microbatch forwarded and backwarded once); its memory
// peaks come with the report.
#pragma once
#include "trine/schedules/instruction.h"
#include "trine/schedules/schedule_checker.h"

#include <string>
#include <vector>

namespace trine {

// One stage's costs per microbatch, in seconds (or any one unit).
struct StageTimes {
  double forward = 1;
  double backward = 2;
  double recompute = 0;            // what a plain F drops (0: it keeps everything)
  double activation_transfer = 0;  // its outputs to one consumer stage
  double gradient_transfer = 0;    // its input gradients to one producer stage
  double reduce = 0;               // gradient sync of its parameters at ReduceGrads
  double optimizer = 0;            // its share of the optimizer step
};

struct SimulationOptions {
  SendMode mode = SendMode::Blocking;
  std::vector<double> speed;  // speed[k-1]: each computing rank's pace while k compute; empty: 1
  double step_sync = 0;  // the world all-reduce before the optimizer step
  // What running one instruction costs its rank beyond its work (dispatch;
  // for a Communicate, posting its transfers, which go out after it).
  double instruction_overhead = 0;
  std::vector<ActivationCosts> memory;  // per stage, for the memory peaks (empty: unit)
  // Real compute instructions vary from one run to the next, and in a
  // pipeline a late one makes its peers wait: with jitter > 0 every compute
  // instruction takes its time times a log-normal factor of mean 1 and this
  // coefficient of variation, drawn from `seed` (one play is one sample).
  double jitter = 0;
  unsigned seed = 1;
  // Buffered sends whose data leaves only once the receive is posted (Gloo
  // over TCP): a receive completes its transfer time after both sides have
  // posted, rather than after the send alone.
  bool rendezvous = false;
  // The executor posts, as each instruction starts, the receives of the next
  // instruction with transfers (activations; gradients of microbatches
  // already forwarded on that stage), so that their data can arrive while it
  // computes.
  bool receives_ahead = false;
};

// One instruction of one rank, from when it started to when the rank moved on.
struct TimelineEvent {
  int rank = 0;
  int stage = -1;          // compute instructions: the plan stage; else -1
  char kind = 'F';         // F forward, C F*, R recompute, B backward, T transfers, G reduce, S sync, O optimizer
  std::string name;        // to_string of the instruction
  double start = 0, end = 0;
  double compute = 0;      // of which computing (the rest waited on peers)
  int step = 0;            // which training step (real runs trace several)
};

struct SimulationReport {
  double makespan = 0;              // the step
  std::vector<double> busy;         // per rank: time spent computing (wall time, slowed by shared cores)
  double bubble = 0;                // 1 - mean(busy) / makespan
  std::vector<TimelineEvent> timeline;
  ScheduleReport memory;            // check_schedule's peaks
};

std::vector<double> shared_cores_speed(double cores, int ranks);

// `program`: one list per pipeline rank (as check_schedule); `times`: one per
// plan stage.
SimulationReport simulate_schedule(const std::vector<std::vector<Instruction>>& program, int microbatches,
                                   const StageTopology& topology, const std::vector<StageTimes>& times,
                                   const SimulationOptions& options = {});

// {"traceEvents": [...]} for chrome://tracing and ui.perfetto.dev: one
// process per rank (named `rank_names[rank]` when given), times in
// microseconds from `scale` (1e6 for seconds).
std::string chrome_trace(const std::vector<TimelineEvent>& timeline, double scale = 1e6,
                         const std::vector<std::string>& rank_names = {});

}  // namespace trine
