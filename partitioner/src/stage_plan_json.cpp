// StagePlan <-> JSON ("trine.stage_plan/1"). Reading is strict: a plan may be
// edited by hand, so unknown keys and wrong types are errors that say where.
#include "trine/partitioner/stage_plan.h"

#include "trine/frontend/atomic_file.h"

#include <c10/util/Exception.h>

#include <set>

namespace trine {

using json = nlohmann::json;

namespace {

constexpr const char* kFormat = "trine.stage_plan/1";

const char* schedule_name(PipelineShape::Schedule s) { return s == PipelineShape::Schedule::GPipe ? "gpipe" : "1f1b"; }

json transfers_to_json(const std::vector<PlanTransfer>& ts, const char* peer_key) {
  json out = json::array();
  for (const auto& t : ts)
    out.push_back({{"value", t.value}, {peer_key, t.peer}, {"bytes", t.bytes}, {"shape", t.shape}, {"dtype", t.dtype}});
  return out;
}

// Reads `key` of object `obj` as T, or fails saying where and what was expected.
template <typename T>
T field(const json& obj, const char* key, const std::string& where) {
  TORCH_CHECK(obj.contains(key), "stage plan: ", where, " has no '", key, "'");
  try {
    return obj.at(key).get<T>();
  } catch (const json::exception&) {
    TORCH_CHECK(false, "stage plan: '", key, "' in ", where, " has the wrong type (", obj.at(key).type_name(), ")");
  }
}

void only_keys(const json& obj, const std::set<std::string>& keys, const std::string& where) {
  TORCH_CHECK(obj.is_object(), "stage plan: ", where, " must be a JSON object");
  for (const auto& [key, value] : obj.items())
    TORCH_CHECK(keys.count(key), "stage plan: unknown key '", key, "' in ", where);
}

std::vector<PlanTransfer> transfers_from_json(const json& arr, const char* peer_key, const std::string& where) {
  TORCH_CHECK(arr.is_array(), "stage plan: ", where, " must be an array");
  std::vector<PlanTransfer> out;
  for (size_t i = 0; i < arr.size(); ++i) {
    const std::string at = where + "[" + std::to_string(i) + "]";
    only_keys(arr[i], {"value", peer_key, "bytes", "shape", "dtype"}, at);
    out.push_back({field<std::string>(arr[i], "value", at), field<int>(arr[i], peer_key, at),
                   field<int64_t>(arr[i], "bytes", at), field<std::vector<int64_t>>(arr[i], "shape", at),
                   field<std::string>(arr[i], "dtype", at)});
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
          {"schedule", schedule_name(pipeline.schedule)},
          {"microbatches", pipeline.microbatches},
          {"memory_limit_bytes", memory_limit_bytes},
          {"num_layers", num_layers},
          {"stages", st},
          // For readers; recomputed from the stages, ignored when loading.
          {"summary",
           {{"slowest_stage_s", slowest_stage_s()},
            {"mean_stage_s", mean_stage_s()},
            {"imbalance", imbalance()},
            {"cut_bytes", cut_bytes()}}}};
}

StagePlan StagePlan::from_json(const json& j) {
  only_keys(j, {"format", "model", "method", "cost_source", "schedule", "microbatches", "memory_limit_bytes",
                "num_layers", "stages", "summary"},
            "the plan");
  const auto format = field<std::string>(j, "format", "the plan");
  TORCH_CHECK(format == kFormat, "not a trine stage plan: format is '", format, "', expected '", kFormat, "'");
  StagePlan p;
  p.model = field<std::string>(j, "model", "the plan");
  p.method = field<std::string>(j, "method", "the plan");
  p.cost_source = field<std::string>(j, "cost_source", "the plan");
  const auto schedule = field<std::string>(j, "schedule", "the plan");
  TORCH_CHECK(schedule == "1f1b" || schedule == "gpipe", "stage plan: schedule '", schedule,
              "' is not one of 1f1b, gpipe");
  p.pipeline.schedule = schedule == "gpipe" ? PipelineShape::Schedule::GPipe : PipelineShape::Schedule::OneFOneB;
  p.pipeline.microbatches = field<int>(j, "microbatches", "the plan");
  p.memory_limit_bytes = field<int64_t>(j, "memory_limit_bytes", "the plan");
  p.num_layers = field<int>(j, "num_layers", "the plan");
  const json& stages_json = j.at("stages");
  TORCH_CHECK(stages_json.is_array(), "stage plan: 'stages' must be an array");
  for (size_t s = 0; s < stages_json.size(); ++s) {
    const json& sj = stages_json[s];
    const std::string where = "stage " + std::to_string(s);
    only_keys(sj, {"layers", "params", "forward_s", "backward_s", "param_bytes", "state_bytes", "activation_bytes",
                   "in_flight", "memory_bytes", "sends", "receives"},
              where);
    PlanStage st;
    st.layers = field<std::vector<std::string>>(sj, "layers", where);
    st.params = field<std::vector<std::string>>(sj, "params", where);
    st.forward_s = field<double>(sj, "forward_s", where);
    st.backward_s = field<double>(sj, "backward_s", where);
    st.param_bytes = field<int64_t>(sj, "param_bytes", where);
    st.state_bytes = field<int64_t>(sj, "state_bytes", where);
    st.activation_bytes = field<int64_t>(sj, "activation_bytes", where);
    st.in_flight = field<int>(sj, "in_flight", where);
    st.memory_bytes = field<int64_t>(sj, "memory_bytes", where);
    TORCH_CHECK(sj.contains("sends") && sj.contains("receives"), "stage plan: ", where, " needs 'sends' and 'receives'");
    st.sends = transfers_from_json(sj.at("sends"), "to", where + " sends");
    st.receives = transfers_from_json(sj.at("receives"), "from", where + " receives");
    p.stages.push_back(std::move(st));
  }
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
