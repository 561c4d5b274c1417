// StagePlan <-> JSON ("trine.stage_plan/1"). Reading is strict (common's
// JsonObjectReader): a plan may be edited by hand, so unknown keys and wrong
// types are errors that say where.
#include "trine/partitioner/stage_plan.h"

#include "trine/common/files.h"
#include "trine/common/json_reader.h"
#include "trine/schedules/schedule_registry.h"

#include <c10/util/Exception.h>


namespace trine {

using json = nlohmann::json;

namespace {

constexpr const char* kFormat = "trine.stage_plan/1";

json transfers_to_json(const std::vector<PlanTransfer>& ts, const char* peer_key) {
  json out = json::array();
  for (const auto& t : ts)
    out.push_back({{"value", t.value}, {peer_key, t.peer}, {"bytes", t.bytes}, {"shape", t.shape}, {"dtype", t.dtype}});
  return out;
}

std::vector<PlanTransfer> transfers_from_json(JsonObjectReader& stage, const char* key, const char* peer_key) {
  std::vector<PlanTransfer> out;
  TORCH_CHECK(stage.has(key), stage.path(), " has no '", key, "', which is required");
  for (auto& t : stage.objects(key)) {
    out.push_back({t.required<std::string>("value"), t.required<int>(peer_key), t.required<int64_t>("bytes"),
                   t.required<std::vector<int64_t>>("shape"), t.required<std::string>("dtype")});
    t.finish();
  }
  return out;
}

}  // namespace

json StagePlan::to_json() const {
  json st = json::array();
  for (const auto& s : stages)
    st.push_back({{"layers", s.layers},
                  {"params", s.params},
                  {"forward_s", s.forward_s},
                  {"backward_s", s.backward_s},
                  {"param_bytes", s.param_bytes},
                  {"state_bytes", s.state_bytes},
                  {"activation_bytes", s.activation_bytes},
                  {"in_flight", s.in_flight},
                  {"memory_bytes", s.memory_bytes},
                  {"sends", transfers_to_json(s.sends, "to")},
                  {"receives", transfers_to_json(s.receives, "from")}});
  return {{"format", kFormat},
          {"model", model},
          {"method", method},
          {"cost_source", cost_source},
          {"schedule", pipeline.schedule},
          {"microbatches", pipeline.microbatches},
          {"virtual_stages", pipeline.virtual_stages},
          {"memory_limit_bytes", memory_limit_bytes},
          {"num_layers", num_layers},
          {"layer_activation_bytes", layer_activation_bytes},
          {"layer_selective_bytes", layer_selective_bytes},
          {"stages", st},
          // For readers; recomputed from the stages, ignored when loading.
          {"summary",
           {{"slowest_stage_s", slowest_stage_s()},
            {"mean_stage_s", mean_stage_s()},
            {"imbalance", imbalance()},
            {"cut_bytes", cut_bytes()}}}};
}

StagePlan StagePlan::from_json(const json& j) {
  JsonObjectReader r(j, "the plan");
  const auto format = r.required<std::string>("format");
  TORCH_CHECK(format == kFormat, "not a trine stage plan: format is '", format, "', expected '", kFormat, "'");
  StagePlan p;
  p.model = r.required<std::string>("model");
  p.method = r.required<std::string>("method");
  p.cost_source = r.required<std::string>("cost_source");
  p.pipeline.schedule = find_schedule(r.required<std::string>("schedule")).name;
  p.pipeline.microbatches = r.required<int>("microbatches");
  p.pipeline.virtual_stages = r.get("virtual_stages", 1);
  p.memory_limit_bytes = r.required<int64_t>("memory_limit_bytes");
  p.num_layers = r.required<int>("num_layers");
  p.layer_activation_bytes = r.get("layer_activation_bytes", std::vector<int64_t>{});
  p.layer_selective_bytes = r.get("layer_selective_bytes", std::vector<int64_t>{});
  r.object("summary");  // for readers; recomputed from the stages
  TORCH_CHECK(r.has("stages"), "the plan has no 'stages', which is required");
  auto stages = r.objects("stages");
  for (size_t s = 0; s < stages.size(); ++s) {
    JsonObjectReader& sj = stages[s];
    PlanStage st;
    st.layers = sj.required<std::vector<std::string>>("layers");
    st.params = sj.required<std::vector<std::string>>("params");
    st.forward_s = sj.required<double>("forward_s");
    st.backward_s = sj.required<double>("backward_s");
    st.param_bytes = sj.required<int64_t>("param_bytes");
    st.state_bytes = sj.required<int64_t>("state_bytes");
    st.activation_bytes = sj.required<int64_t>("activation_bytes");
    st.in_flight = sj.required<int>("in_flight");
    st.memory_bytes = sj.required<int64_t>("memory_bytes");
    st.sends = transfers_from_json(sj, "sends", "to");
    st.receives = transfers_from_json(sj, "receives", "from");
    sj.finish();
    p.stages.push_back(std::move(st));
  }
  r.finish();
  p.check();
  return p;
}

void StagePlan::save(const std::string& path) const { write_file_atomically(path, to_json().dump(2) + "\n"); }

StagePlan StagePlan::load(const std::string& path) {
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, "stage plan '", path, "' is not valid JSON: ", e.what());
  }
  try {
    return from_json(j);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "stage plan '", path, "': ", e.what_without_backtrace());
  }
}

}  // namespace trine
