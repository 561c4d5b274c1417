// Stage-aware recomputation (docs/design.md §9, Merak's rule): under 1F1B,
// stage i of p holds up to p - i microbatches' activations at once, so early
// stages recompute more of their segments and later ones less, keeping the
// activation memory of the microbatches a stage holds beyond one equal to
// stage 0's:
//
//   r_i = 1 - (1 - r0) (p - 1) / (p - 1 - i)   for i <= p - 2 (0 when that is <= 0),
//   r_{p-1} = 0                                 (the last stage holds one microbatch).
//
// Examples: p=4, r0=0.8 -> [0.8, 0.7, 0.4, 0]; p=8, r0=0.9 ->
// [0.9, 0.883, 0.86, 0.825, 0.767, 0.65, 0.3, 0]. Under the shifted critical
// path schedule stage p-2 holds three microbatches and takes stage p-3's ratio
// (p=4, r0=0.8 -> [0.8, 0.7, 0.7, 0]). With one stage there is nothing to
// balance: the ratio is r0.
#pragma once
#include <vector>

namespace trine {

// Per stage, the fraction of its checkpointable segments to recompute.
// Throws unless 1 <= stages, 0 <= first_stage_ratio <= 1, and (for the
// shifted critical path) stages >= 3.
std::vector<double> stage_aware_ratios(int stages, double first_stage_ratio, bool shifted_critical_path = false);

// How many of a stage's `segments` a ratio recomputes: the first
// floor(segments * ratio) in forward order (a ratio a rounding error below
// k / segments still gives k).
// The same rule for any schedule, from the microbatches each stage holds at
// once (the schedule checker's peak_in_flight, f_i): with f_i microbatches,
// all but one of them kept in part, stage i recomputes
//   r_i = 1 - (1 - r0) (f_0 - 1) / (f_i - 1)   (0 when f_i <= 1 or that is <= 0),
// so every stage keeps what stage 0 keeps beyond one microbatch. For 1F1B
// (f_i = p - i) this is the formula above; for the shifted critical path
// (stage p-2 holds 3) it gives stage p-2 stage p-3's ratio; for GPipe (all
// hold m) r0 everywhere. When stage 0 holds one, every stage takes r0.
std::vector<double> stage_aware_ratios_for(const std::vector<int>& in_flight, double first_stage_ratio);

int segments_to_recompute(int segments, double ratio);

}  // namespace trine
