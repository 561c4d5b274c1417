// The recomputation policies a config can name (`recompute.policy`,
// docs/config.md), defined once here and looked up by the config check and
// the trainer. Implemented so far: `none` (every stage keeps its forward's
// activations) and `full` (every stage keeps only its inputs and reruns its
// whole forward before the backward; docs/design.md §4a). The others of
// issue 12 (`selective`, `stage_aware`, `layers`) are named so that a config
// using them gets a clear "not implemented yet" instead of "unknown".
#pragma once
#include <string>
#include <vector>

namespace trine {

struct RecomputePolicy {
  std::string name;
  std::string summary;  // one line, for messages and docs
  bool implemented = false;
};

const std::vector<RecomputePolicy>& recompute_policies();

// Throws naming the known policies (and which are implemented) unless `name`
// is an implemented one; `where` names the config key in the message.
const RecomputePolicy& find_recompute_policy(const std::string& name, const std::string& where);

// Whether the policy reruns every stage's whole forward (keeps only its inputs).
bool recomputes_whole_stage(const std::string& name);

}  // namespace trine
