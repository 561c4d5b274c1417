#include "trine/schedules/schedule_registry.h"

#include "trine/schedules/pipeline_schedule.h"
#include "trine/schedules/schedule_checker.h"

#include <c10/util/Exception.h>

#include <map>
#include <mutex>
#include <tuple>

namespace trine {

const std::vector<ScheduleSpec>& registered_schedules() {
  static const std::vector<ScheduleSpec> registry{
      {"1f1b", "PipeDream-flush: warm-up forwards, then one forward and one backward in turn; stage s holds "
               "min(p - s, m) microbatches",
       one_f_one_b_schedule},
      {"gpipe", "every forward, then every backward; every stage holds all m microbatches", gpipe_schedule},
      {"pre_recompute_1f1b",
       "1F1B whose drain microbatches keep only their inputs and are recomputed while their gradients travel (Merak)",
       pre_recompute_schedule, true},
      {"last_no_recompute_1f1b",
       "pre_recompute_1f1b, and the last stage keeps everything while stage p-2 recomputes microbatch 0 as its "
       "gradient travels (Merak)",
       last_no_recompute_schedule, true, true},
      {"shifted_critical_path",
       "Merak's shifted critical path: stage p-2 hoists its third forward and recomputes 0 and 1 while their "
       "gradients travel, the last stage keeps everything; p >= 3",
       shifted_critical_path_schedule, true, true},
  };
  return registry;
}

std::vector<std::string> schedule_names() {
  std::vector<std::string> names;
  for (const auto& s : registered_schedules()) names.push_back(s.name);
  return names;
}

const ScheduleSpec& find_schedule(const std::string& name, const std::string& where) {
  for (const auto& s : registered_schedules())
    if (s.name == name) return s;
  std::string known;
  for (const auto& n : schedule_names()) known += (known.empty() ? "\"" : ", \"") + n + "\"";
  TORCH_CHECK(false, where, " '", name, "' is unknown; known schedules: ", known);
}

std::vector<Instruction> stage_schedule(const std::string& name, int stages, int microbatches, int stage) {
  return find_schedule(name).generate(stages, microbatches, stage);
}

std::vector<std::vector<Instruction>> pipeline_schedule(const std::string& name, int stages, int microbatches) {
  const ScheduleSpec& spec = find_schedule(name);
  std::vector<std::vector<Instruction>> out;
  for (int s = 0; s < stages; ++s) out.push_back(spec.generate(stages, microbatches, s));
  return out;
}

const std::vector<int>& peak_in_flight(const std::string& name, int stages, int microbatches) {
  static std::mutex mutex;
  static std::map<std::tuple<std::string, int, int>, std::vector<int>> memo;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(name, stages, microbatches);
  auto it = memo.find(key);
  if (it == memo.end()) {
    const auto result = check_schedule(pipeline_schedule(name, stages, microbatches), microbatches,
                                       StageTopology::chain(stages), SendMode::Buffered);
    it = memo.emplace(key, result.peak_in_flight).first;
  }
  return it->second;
}

}  // namespace trine
