// Proves a pipeline schedule without running a model. The schedule is played
// with blocking point-to-point semantics (by default): a transfer completes
// only when its peer has posted the matching one, and a Communicate batch
// completes when all of its transfers have. Checked:
//   - every microbatch is forwarded once (F or F*) and backwarded once per
//     stage, a backward after its forward, a recompute (R) between the two
//     and at most once, ReduceGrads after the last backward and the
//     optimizer step last;
//   - every send has exactly one matching receive (same kind, microbatch and
//     pair of stages), and data dependencies hold: a stage forwards only what
//     it has received, sends only what it has computed;
//   - the play finishes: no set of stages waits on each other (deadlock).
// A Recompute posts its transfers, recomputes, then waits for them.
// Activation memory is counted per stage, between instructions, in the units
// of ActivationCosts: after F a microbatch holds `kept`, after F* `checkpoint`,
// after R `full`, after its backward nothing. What lives only inside one
// instruction (a backward's recomputed segment, gradient buffers) is not
// counted.
// Interleaved schedules give one program per pipeline rank for a topology of
// p·v stages: rank r runs chunk c (instructions and transfers name it) as
// stage c·p + r, one instruction at a time; a transfer between two stages of
// one rank goes through its memory (buffered, whatever the mode).
// Violations throw with the stage, the instruction and what it waits for.
#pragma once
#include "trine/schedules/instruction.h"

#include <vector>

namespace trine {

// Which stage sends activations to which. A chain (s -> s+1) by default;
// pipelines cut from a DAG also send straight to later stages (skip values).
struct StageTopology {
  std::vector<std::vector<int>> consumers;  // stage -> later stages reading its outputs

  static StageTopology chain(int stages);
  int stages() const { return static_cast<int>(consumers.size()); }
  std::vector<int> producers(int stage) const;
};

// Blocking: a send waits for its receive (NCCL, MPI_Ssend; the strict model).
// Buffered: a send completes once posted and its receive finds it later
// (Gloo's sends progress in the background; the executor waits for them at
// the end of the step). Chains are proven blocking; pipelines with skip
// transfers (stage i straight to i+2 or later) need buffered sends under 1F1B.
enum class SendMode { Blocking, Buffered };

// One stage's activation bytes per microbatch.
struct ActivationCosts {
  double full = 1;        // every tensor the backward needs (after R: recomputed whole)
  double kept = 1;        // what a plain forward F keeps under the stage's recompute policy
  double checkpoint = 0;  // what F* keeps: the stage's inputs
};

struct ScheduleReport {
  std::vector<int> peak_in_flight;  // per stage: most microbatches forwarded and not yet backwarded
  std::vector<double> peak_activations;  // per stage: most activation memory held at once (ActivationCosts units)
  std::vector<double> rank_peak_activations;  // per rank: the same for all its stages together
  int rounds = 0;                   // parallel rounds of the blocking play (a rough makespan)
};

// `program`: one list per pipeline rank (per stage without interleaving).
// `costs`: one per stage, or empty for unit costs (peak_activations then
// counts the microbatches held fully at once).
ScheduleReport check_schedule(const std::vector<std::vector<Instruction>>& program, int microbatches,
                              const StageTopology& topology, SendMode mode = SendMode::Blocking,
                              const std::vector<ActivationCosts>& costs = {});

}  // namespace trine
