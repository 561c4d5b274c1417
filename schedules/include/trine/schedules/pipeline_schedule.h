// Pipeline schedules as pure functions: (stages p, microbatches m, stage s) ->
// that stage's instruction list for one training step. Each is registered by
// name in schedule_registry.h, where the rest of trine finds it.
//
//   GPipe: every forward, then every backward. Stage s holds m microbatches.
//   1F1B (PipeDream-flush): p-s-1 warm-up forwards, then one forward and one
//     backward in turn, then the remaining backwards. Same bubble as GPipe,
//     (p-1)/(m+p-1), but stage s holds at most min(p-s, m) microbatches.
//
//   Interleaved 1F1B (Megatron's virtual pipeline): each of p ranks holds v
//     model chunks (rank r: plan stages r, r+p, ...); bubble (p-1)/(v·m).
//     Instructions and transfers name the chunk they run on.
//
// Merak's variants for recomputation (p stages, m >= p microbatches):
//   pre_recompute: 1F1B where each stage s < p-1 forwards its last p-s-1
//     microbatches (those backwarded in the drain) by F*, and recomputes each
//     by an R issued before waiting for its gradient.
//   last_no_recompute: as pre_recompute on stages s < p-2; stage p-2 forwards
//     microbatch 0 by F* and recomputes it after forwarding microbatch 1.
//   shifted_critical_path (p >= 3): stage p-2 forwards microbatches 0 and 1 by
//     F*, hoists its third forward before the first backward and recomputes
//     0 and 1 while their gradients travel; stage p-3 also forwards
//     microbatch 0 by F*. The last stage never recomputes.
//
// Transfers that happen back to back are emitted as one Communicate batch
// (send activation + receive gradient, send gradient + receive activation), as
// Megatron pairs them: with blocking point-to-point, two neighbours that both
// sent first would otherwise wait on each other forever.
#pragma once
#include "trine/schedules/instruction.h"

#include <string>
#include <vector>

namespace trine {

// Throws unless p >= 1, m >= 1 and 0 <= stage < p.
std::vector<Instruction> gpipe_schedule(int stages, int microbatches, int stage);
std::vector<Instruction> one_f_one_b_schedule(int stages, int microbatches, int stage);
// Each also throws when the schedule's preconditions (stages, m >= p) fail.
std::vector<Instruction> pre_recompute_schedule(int stages, int microbatches, int stage);
std::vector<Instruction> last_no_recompute_schedule(int stages, int microbatches, int stage);
std::vector<Instruction> shifted_critical_path_schedule(int stages, int microbatches, int stage);
// Pipeline rank `rank` of `ranks`, `chunks` (v >= 2) model chunks each; m a
// multiple of p.
std::vector<Instruction> interleaved_one_f_one_b_schedule(int ranks, int microbatches, int rank, int chunks);

}  // namespace trine
