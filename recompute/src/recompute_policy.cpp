#include "trine/recompute/recompute_policy.h"

#include <c10/util/Exception.h>

namespace trine {

const std::vector<RecomputePolicy>& recompute_policies() {
  static const std::vector<RecomputePolicy> policies{
      {"none", "keep every activation until its backward", true},
      {"full", "keep only each stage's inputs; rerun the stage's forward before its backward", true},
      {"selective", "recompute the attention core only", false},
      {"stage_aware", "recompute more on early stages (Merak's ratio rule)", false},
      {"layers", "recompute the listed layers", false},
  };
  return policies;
}

const RecomputePolicy& find_recompute_policy(const std::string& name, const std::string& where) {
  std::string known;
  for (const auto& p : recompute_policies()) {
    if (p.name == name) {
      TORCH_CHECK(p.implemented, where, " is \"", name, "\", which is not implemented yet; use \"none\" or \"full\"");
      return p;
    }
    known += (known.empty() ? "\"" : ", \"") + p.name + "\"" + (p.implemented ? "" : " (not yet)");
  }
  TORCH_CHECK(false, where, " is \"", name, "\", not a recomputation policy; known: ", known);
}

bool recomputes_whole_stage(const std::string& name) { return find_recompute_policy(name, "recompute.policy").name == "full"; }

}  // namespace trine
