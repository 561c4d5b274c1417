#include "trine/schedules/schedule_registry.h"

#include "trine/schedules/pipeline_schedule.h"
#include "trine/schedules/schedule_checker.h"

#include <c10/util/Exception.h>

#include <map>
#include <mutex>
#include <tuple>

namespace trine {

namespace {

// A schedule of one chunk per rank, as a generator (check_virtual_stages has
// refused any other v before it runs).
template <std::vector<Instruction> (*Generate)(int, int, int)>
std::vector<Instruction> one_chunk(int ranks, int microbatches, int rank, int /*virtual_stages*/) {
  return Generate(ranks, microbatches, rank);
}

}  // namespace

const std::vector<ScheduleSpec>& registered_schedules() {
  static const std::vector<ScheduleSpec> registry{
      {"1f1b", "PipeDream-flush: warm-up forwards, then one forward and one backward in turn; stage s holds "
               "min(p - s, m) microbatches",
       one_chunk<one_f_one_b_schedule>},
      {"gpipe", "every forward, then every backward; every stage holds all m microbatches", one_chunk<gpipe_schedule>},
      {"interleaved_1f1b",
       "1F1B over virtual_stages model chunks per rank (rank r holds stages r, r+p, ...): bubble (p-1)/(v m), v "
       "times the transfers; m a multiple of p (Megatron)",
       interleaved_one_f_one_b_schedule, false, false, true},
      {"pre_recompute_1f1b",
       "1F1B whose drain microbatches keep only their inputs and are recomputed while their gradients travel (Merak)",
       one_chunk<pre_recompute_schedule>, true},
      {"last_no_recompute_1f1b",
       "pre_recompute_1f1b, and the last stage keeps everything while stage p-2 recomputes microbatch 0 as its "
       "gradient travels (Merak)",
       one_chunk<last_no_recompute_schedule>, true, true},
      {"shifted_critical_path",
       "Merak's shifted critical path: stage p-2 hoists its third forward and recomputes 0 and 1 while their "
       "gradients travel, the last stage keeps everything; p >= 3",
       one_chunk<shifted_critical_path_schedule>, true, true},
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

void check_virtual_stages(const ScheduleSpec& spec, int virtual_stages, const std::string& where) {
  if (spec.interleaved) {
    TORCH_CHECK(virtual_stages >= 2, where, " = ", virtual_stages, ": schedule '", spec.name, "' runs at least 2 model ",
                "chunks per pipeline rank; set it to 2 or more, or use \"1f1b\"");
  } else {
    TORCH_CHECK(virtual_stages == 1, where, " = ", virtual_stages, ": schedule '", spec.name, "' runs one model chunk ",
                "per pipeline rank; use \"interleaved_1f1b\" for more, or set it to 1");
  }
}

std::vector<Instruction> stage_schedule(const std::string& name, int ranks, int microbatches, int rank,
                                        int virtual_stages) {
  const ScheduleSpec& spec = find_schedule(name);
  check_virtual_stages(spec, virtual_stages);
  return spec.generate(ranks, microbatches, rank, virtual_stages);
}

std::vector<std::vector<Instruction>> pipeline_schedule(const std::string& name, int ranks, int microbatches,
                                                        int virtual_stages) {
  const ScheduleSpec& spec = find_schedule(name);
  check_virtual_stages(spec, virtual_stages);
  std::vector<std::vector<Instruction>> out;
  for (int r = 0; r < ranks; ++r) out.push_back(spec.generate(ranks, microbatches, r, virtual_stages));
  return out;
}

const std::vector<int>& peak_in_flight(const std::string& name, int ranks, int microbatches, int virtual_stages) {
  static std::mutex mutex;
  static std::map<std::tuple<std::string, int, int, int>, std::vector<int>> memo;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(name, ranks, microbatches, virtual_stages);
  auto it = memo.find(key);
  if (it == memo.end()) {
    const auto result = check_schedule(pipeline_schedule(name, ranks, microbatches, virtual_stages), microbatches,
                                       StageTopology::chain(ranks * virtual_stages), SendMode::Buffered);
    it = memo.emplace(key, result.peak_in_flight).first;
  }
  return it->second;
}

}  // namespace trine
