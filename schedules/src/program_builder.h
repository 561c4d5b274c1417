// Internal to schedules/: builds one stage's instruction list, and the 1F1B
// pattern that several schedules share (docs/design.md §6).
#pragma once
#include "trine/schedules/instruction.h"

#include <vector>

namespace trine {

void check_pipeline_shape(int stages, int microbatches, int stage);

// Builds one stage's list; transfers a stage cannot have (the first stage
// receives no activations and sends no gradients, the last the reverse) are
// left out, and transfers added back to back share one Communicate batch.
class ProgramBuilder {
 public:
  // Pipeline rank `rank` of `ranks`, holding `chunks` model chunks (one
  // without interleaving: then ranks are stages).
  ProgramBuilder(int ranks, int rank, int chunks = 1);

  ProgramBuilder& transfer(Transfer::Kind kind, int mb, int chunk = 0);
  ProgramBuilder& compute(Instruction i);
  // R of `mb` overlapping the receive of its gradient ("R5+rG5").
  ProgramBuilder& recompute_while_receiving_grad(int mb);
  // Ends a batch: the next transfer starts a new one.
  ProgramBuilder& flush();
  // Appends ReduceGrads and OptimizerStep.
  std::vector<Instruction> finish();

 private:
  bool possible(Transfer::Kind kind, int chunk = 0) const;
  int ranks_, rank_, chunks_;
  bool open_ = false;
  std::vector<Instruction> program_;
};

// How a stage runs the 1F1B pattern.
struct OneFOneBVariant {
  // Per microbatch: forwarded with F* and recomputed by an R that overlaps
  // the receive of its gradient, just before its backward.
  std::vector<bool> checkpointed;
  // The first this many steady steps end with their gradient sent on its
  // own instead of batched with the next activation's receive.
  int unbatched_steps = 0;
};

// Warm-up forwards 0 .. warmup-1, each with its own transfers.
void one_f_one_b_warmup(ProgramBuilder& b, int warmup, const OneFOneBVariant& v);
// From the point where `next_forward` is the next microbatch to forward and
// `next_backward` the next to backward: forward and backward in turn (the
// activation sent batched with the gradient received, the gradient sent
// batched with the next activation received), then the remaining backwards.
// A batch the caller left open takes the first activation receive.
void one_f_one_b_steady_and_drain(ProgramBuilder& b, int microbatches, int next_forward, int next_backward,
                                  const OneFOneBVariant& v);

}  // namespace trine
