#include "trine/recompute/stage_aware_ratios.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace trine {

std::vector<double> stage_aware_ratios(int stages, double first_stage_ratio, bool shifted_critical_path) {
  TORCH_CHECK(stages >= 1, "stage-aware recomputation needs at least one stage, got ", stages);
  TORCH_CHECK(first_stage_ratio >= 0 && first_stage_ratio <= 1,
              "the first stage's recompute ratio must be in [0, 1], got ", first_stage_ratio);
  TORCH_CHECK(!shifted_critical_path || stages >= 3, "the shifted critical path schedule needs at least 3 stages, got ",
              stages, " (use 1f1b with stage-aware recomputation)");
  if (stages == 1) return {first_stage_ratio};
  const int p = stages;
  std::vector<double> ratios(p, 0.0);
  for (int i = 0; i + 1 < p; ++i) {
    const double r = 1.0 - (1.0 - first_stage_ratio) * (p - 1) / (p - 1 - i);
    ratios[i] = r > 0 ? r : 0.0;
  }
  if (shifted_critical_path) ratios[p - 2] = ratios[p - 3];
  return ratios;
}

std::vector<double> stage_aware_ratios_for(const std::vector<int>& in_flight, double first_stage_ratio) {
  TORCH_CHECK(!in_flight.empty(), "stage-aware recomputation needs at least one stage");
  TORCH_CHECK(first_stage_ratio >= 0 && first_stage_ratio <= 1,
              "the first stage's recompute ratio must be in [0, 1], got ", first_stage_ratio);
  const int f0 = in_flight.front();
  std::vector<double> ratios(in_flight.size(), first_stage_ratio);
  if (f0 <= 1) return ratios;
  for (size_t i = 0; i < in_flight.size(); ++i) {
    const double r = in_flight[i] <= 1 ? 0.0 : 1.0 - (1.0 - first_stage_ratio) * (f0 - 1) / (in_flight[i] - 1);
    ratios[i] = std::min(1.0, std::max(0.0, r));
  }
  return ratios;
}

int segments_to_recompute(int segments, double ratio) {
  TORCH_CHECK(segments >= 0, "a stage has ", segments, " segments");
  TORCH_CHECK(ratio >= 0 && ratio <= 1, "a recompute ratio must be in [0, 1], got ", ratio);
  return static_cast<int>(std::floor(segments * ratio + 1e-9));
}

}  // namespace trine
