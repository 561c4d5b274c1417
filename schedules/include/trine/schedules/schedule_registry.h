// The one vocabulary of pipeline schedules: every schedule is registered here
// once, by name, with a one-line summary and its generator. The config
// reader, the plan JSON, the command line's --schedule choices and help, the
// partitioner's memory estimate and the executor all take schedules from this
// registry. Adding a schedule is a generator file plus one registry line
// (docs/design.md §6).
#pragma once
#include "trine/schedules/instruction.h"

#include <string>
#include <vector>

namespace trine {

// (stages p, microbatches m, stage s) -> that stage's instructions for one step.
using ScheduleGenerator = std::vector<Instruction> (*)(int stages, int microbatches, int stage);

struct ScheduleSpec {
  std::string name;     // as configs and plans spell it: "1f1b"
  std::string summary;  // one line, for help texts and docs
  ScheduleGenerator generate = nullptr;
  // The schedule moves recomputation into idle time (F*, R): without a
  // recompute policy there is nothing to move and it only adds work.
  bool needs_recompute = false;
  // The last stage keeps its forwards whole whatever the recompute policy:
  // its backward follows its forward at once, so recomputing there only
  // lengthens the critical path.
  bool last_stage_keeps_everything = false;
};

// Every registered schedule, the default first.
const std::vector<ScheduleSpec>& registered_schedules();
// Throws naming the known schedules when `name` is not one of them; `where`
// names where it came from ("config.schedule").
const ScheduleSpec& find_schedule(const std::string& name, const std::string& where = "schedule");
std::vector<std::string> schedule_names();

std::vector<Instruction> stage_schedule(const std::string& name, int stages, int microbatches, int stage);
std::vector<std::vector<Instruction>> pipeline_schedule(const std::string& name, int stages, int microbatches);

// Per stage, the most microbatches whose activations the stage holds at once,
// as the checker measures it on a chain of `stages` (what the partitioner's
// memory estimate multiplies activations by). Memoised.
const std::vector<int>& peak_in_flight(const std::string& name, int stages, int microbatches);

}  // namespace trine
