// The names of the memory manager's policies, defined once
// (config key memory.policy, the benchmark's columns).
#include "trine/recompute/memory_manager.h"

namespace trine {

namespace {

struct Named {
  MemoryPolicy policy;
  const char* name;
};
constexpr Named kPolicies[] = {
    {MemoryPolicy::Swap, "swap"},
    {MemoryPolicy::Recompute, "recompute"},
    {MemoryPolicy::Combined, "combined"},
};

}  // namespace

std::vector<std::string> memory_policy_names() {
  std::vector<std::string> names;
  for (const Named& n : kPolicies) names.emplace_back(n.name);
  return names;
}

MemoryPolicy memory_policy_named(const std::string& name, const std::string& key) {
  for (const Named& n : kPolicies)
    if (name == n.name) return n.policy;
  std::string known;
  for (const Named& n : kPolicies) known += (known.empty() ? "" : ", ") + std::string(n.name);
  TORCH_CHECK(false, key, " is '", name, "', which is not a memory policy; use one of: ", known);
}

const char* memory_policy_name(MemoryPolicy policy) {
  for (const Named& n : kPolicies)
    if (policy == n.policy) return n.name;
  TORCH_INTERNAL_ASSERT(false, "a memory policy without a name");
}

}  // namespace trine
