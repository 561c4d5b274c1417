// Sub-microbatches: Merak's sub-pipelined tensor parallelism
// (docs/design.md §5a). Each microbatch runs as `parts` equal blocks of its
// rows, each through its own copy of the stage graph, on threads that take
// turns (frontend/turns.h) so that one part's tp all-reduce travels while
// another part computes, in forward and in backward. Every part reads only
// its own rows and its own values (a residual is its part's own, by
// construction: the parts share no activations), so a microbatch's loss is
// its parts' mean and training equals running the microbatch whole.
//
// The parts' graphs come from the model traced a second time at 1/parts of
// the rows and cut into the same stages; this rewrite makes part `index`
// draw what the whole microbatch would:
//   - every dropout (aten::dropout of a whole value, trine_tp::dropout of a
//     split one) draws the whole microbatch's mask, seeded like the whole
//     stage's, and applies its block of rows (values that do not depend on
//     the rows draw their whole mask, as the whole stage does);
//   - per-shard dropout (trine_tp::shard_dropout) draws a stream of its own
//     per rank and part (not one process's masks, as without parts).
// It refuses what a part cannot compute from its own rows: BatchNorm in
// training (statistics over the whole microbatch) and random ops other than
// dropout.
#pragma once
#include "trine/frontend/stage_split.h"
#include "trine/frontend/traced_model.h"

namespace trine {

// Whether the model can run in `parts` parts: `part` is `whole` traced again
// at 1/parts of the rows. Throws, naming the op, when the two graphs differ
// op for op (the model's graph depends on the batch size), or the model holds
// what a part cannot compute from its own rows (BatchNorm in training,
// random ops other than dropout).
void check_sub_microbatch_model(const TracedModel& whole, const TracedModel& part, int parts);

// Rewrites `part` for part `index` of `parts`. `whole` is the same stage cut
// from the model traced at the microbatch's rows; both are already rewritten
// for the same tp rank (stage_sharding.h), or neither; their models passed
// check_sub_microbatch_model.
void make_sub_microbatch_stage(StageProgram& part, const StageProgram& whole, int index, int parts);

}  // namespace trine
