#include "trine/runtime/tensor_parallel_report.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <sstream>

namespace trine {

std::string tensor_parallel_memory_table(const StagePlan& plan, const std::vector<ShardedStageBytes>& stage_bytes) {
  TORCH_INTERNAL_ASSERT(static_cast<int>(stage_bytes.size()) == plan.num_stages(), "tp bytes for ",
                        stage_bytes.size(), " stages, the plan has ", plan.num_stages());
  auto mib = [](double bytes) { return bytes / (1024.0 * 1024.0); };
  auto share = [](int64_t part, int64_t whole) { return whole > 0 ? static_cast<double>(part) / whole : 1.0; };
  std::ostringstream os;
  char line[256];
  std::snprintf(line, sizeof line, "%-5s %18s %18s %16s %14s\n", "stage", "params MiB/rank", "activ. MiB/rank",
                "state MiB/rank", "mem MiB/rank");
  os << "memory per tp rank (of the whole stage's, scaled by what the rank holds):\n" << line;
  for (size_t s = 0; s < stage_bytes.size(); ++s) {
    const ShardedStageBytes& b = stage_bytes[s];
    const PlanStage& st = plan.stages[s];
    const double state = st.state_bytes * share(b.parameters, b.whole_parameters);
    const double activations = (st.memory_bytes - st.state_bytes) * share(b.activations, b.whole_activations);
    std::snprintf(line, sizeof line, "%-5zu %8.2f of %7.2f %8.2f of %7.2f %16.2f %14.2f\n", s, mib(b.parameters),
                  mib(b.whole_parameters), mib(b.activations), mib(b.whole_activations), mib(state),
                  mib(state + activations));
    os << line;
  }
  return os.str();
}

}  // namespace trine
