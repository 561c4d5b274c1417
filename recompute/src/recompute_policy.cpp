#include "trine/recompute/recompute_policy.h"

#include "trine/recompute/stage_aware_ratios.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <map>

namespace trine {

const std::vector<RecomputePolicy>& recompute_policies() {
  static const std::vector<RecomputePolicy> policies{
      {"none", "keep every activation until its backward", true},
      {"full", "every layer keeps only its input and is recomputed before its backward (segments of `every` layers)",
       true},
      {"layers", "recompute the layers listed in `layers`", true},
      {"stage_aware", "early stages recompute more layers than late ones (Merak's ratio rule from `ratio`)", true},
      {"selective", "recompute every layer's attention core (scores, mask, softmax, dropout, up to the product with v)",
       true},
  };
  return policies;
}

const RecomputePolicy& find_recompute_policy(const std::string& name, const std::string& where) {
  std::string known, implemented;
  for (const auto& p : recompute_policies()) {
    known += (known.empty() ? "\"" : ", \"") + p.name + "\"" + (p.implemented ? "" : " (not yet)");
    if (p.implemented) implemented += (implemented.empty() ? "\"" : ", \"") + p.name + "\"";
  }
  for (const auto& p : recompute_policies())
    if (p.name == name) {
      TORCH_CHECK(p.implemented, where, " is \"", name, "\", which is not implemented yet; use one of ", implemented);
      return p;
    }
  TORCH_CHECK(false, where, " is \"", name, "\", not a recomputation policy; known: ", known);
}

void check_recompute_settings(const RecomputeSettings& s, const std::string& where) {
  find_recompute_policy(s.policy, where + ".policy");
  TORCH_CHECK(s.every >= 1, where, ".every must be at least 1 (layers per recomputed segment), got ", s.every);
  TORCH_CHECK(s.every == 1 || s.policy == "full", where, ".every is read only by the \"full\" policy; the policy is \"",
              s.policy, "\"");
  TORCH_CHECK(s.layers.empty() || s.policy == "layers", where, ".layers is read only by the \"layers\" policy; the "
              "policy is \"", s.policy, "\"");
  TORCH_CHECK(s.policy != "layers" || !s.layers.empty(), where, ".policy \"layers\" needs ", where,
              ".layers: the names of the layers to recompute (`trine plan` lists them)");
  TORCH_CHECK(s.ratio == 0 || s.policy == "stage_aware", where, ".ratio is read only by the \"stage_aware\" policy; "
              "the policy is \"", s.policy, "\"");
  TORCH_CHECK(s.memory_limit_bytes >= 0, where, ".memory_limit_bytes cannot be negative");
  TORCH_CHECK(s.memory_limit_bytes == 0 || s.policy == "stage_aware", where, ".memory_limit_bytes is read only by "
              "the \"stage_aware\" policy; the policy is \"", s.policy, "\"");
  TORCH_CHECK(s.policy != "stage_aware" || s.memory_limit_bytes > 0 || (s.ratio > 0 && s.ratio <= 1), where,
              ".policy \"stage_aware\" needs ", where, ".ratio in (0, 1] (the share of the first stage's layers to "
              "recompute; got ", s.ratio, ") or ", where, ".memory_limit_bytes (each stage's activation budget)");
  TORCH_CHECK(s.ratio == 0 || s.memory_limit_bytes == 0, where, ".ratio and ", where,
              ".memory_limit_bytes are two ways to choose stage_aware's layers: give one");
}

namespace {

StageSegments every_k(const std::vector<int>& layers, int k) {
  StageSegments out;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (i % static_cast<size_t>(k) == 0) out.emplace_back();
    out.back().push_back(layers[i]);
  }
  return out;
}

StageSegments each_of(const std::vector<int>& layers) { return every_k(layers, 1); }

}  // namespace

std::vector<StageRecompute> checkpointed_segments(const RecomputeSettings& s,
                                                 const std::vector<std::vector<int>>& layers_of_stage,
                                                 const std::vector<std::string>& layer_names,
                                                 const std::vector<int>& in_flight) {
  check_recompute_settings(s, "config.recompute");
  const int p = static_cast<int>(layers_of_stage.size());
  std::vector<StageRecompute> out(p);
  if (s.policy == "selective") {
    for (auto& stage : out) stage.attention_cores = true;
  } else if (s.policy == "full") {
    for (int st = 0; st < p; ++st) out[st].layer_segments = every_k(layers_of_stage[st], s.every);
  } else if (s.policy == "layers") {
    std::map<std::string, int> id;
    for (size_t l = 0; l < layer_names.size(); ++l) id[layer_names[l]] = static_cast<int>(l);
    std::vector<bool> wanted(layer_names.size(), false);
    for (const auto& name : s.layers) {
      auto it = id.find(name);
      if (it == id.end()) {
        std::string known;
        for (const auto& n : layer_names) known += (known.empty() ? "" : ", ") + n;
        TORCH_CHECK(false, "config.recompute.layers names '", name, "', which is not a layer of this model; its layers: ",
                    known);
      }
      wanted[it->second] = true;
    }
    for (int st = 0; st < p; ++st) {
      std::vector<int> chosen;
      for (int l : layers_of_stage[st])
        if (wanted[l]) chosen.push_back(l);
      out[st].layer_segments = each_of(chosen);
    }
  } else if (s.policy == "stage_aware") {
    TORCH_CHECK(s.memory_limit_bytes == 0, "config.recompute.memory_limit_bytes needs the memory model: "
                "use recompute_for_pipeline (memory_model.h)");
    TORCH_CHECK(static_cast<int>(in_flight.size()) == p, "in-flight counts for ", in_flight.size(),
                " stages, the pipeline has ", p);
    const auto ratios = stage_aware_ratios_for(in_flight, s.ratio);
    for (int st = 0; st < p; ++st) {
      const auto& layers = layers_of_stage[st];
      const int n = segments_to_recompute(static_cast<int>(layers.size()), ratios[st]);
      out[st].layer_segments = each_of(std::vector<int>(layers.begin(), layers.begin() + n));
    }
  }
  return out;
}

}  // namespace trine
