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

// (pipeline ranks p, microbatches m, rank r, virtual stages v) -> that rank's
// instructions for one step. Without interleaving v is 1 and rank r runs
// plan stage r; with it, rank r runs stages r, r+p, ..., r+(v-1)p.
using ScheduleGenerator = std::vector<Instruction> (*)(int ranks, int microbatches, int rank, int virtual_stages);

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
  // Runs virtual_stages >= 2 model chunks per rank; every other schedule runs 1.
  bool interleaved = false;
};

// Every registered schedule, the default first.
const std::vector<ScheduleSpec>& registered_schedules();
// Throws naming the known schedules when `name` is not one of them; `where`
// names where it came from ("config.schedule").
const ScheduleSpec& find_schedule(const std::string& name, const std::string& where = "schedule");
std::vector<std::string> schedule_names();

// Throws naming `where` unless `virtual_stages` suits the schedule: >= 2 for
// an interleaved one, 1 for every other.
void check_virtual_stages(const ScheduleSpec& spec, int virtual_stages, const std::string& where = "virtual_stages");

// One pipeline rank's program, and every rank's (p programs; the plan has
// p·v stages).
std::vector<Instruction> stage_schedule(const std::string& name, int ranks, int microbatches, int rank,
                                        int virtual_stages = 1);
std::vector<std::vector<Instruction>> pipeline_schedule(const std::string& name, int ranks, int microbatches,
                                                        int virtual_stages = 1);

// Per plan stage (p·v of them), the most microbatches whose activations the
// stage holds at once, as the checker measures it on a chain (what the
// partitioner's memory estimate multiplies activations by). Memoised.
const std::vector<int>& peak_in_flight(const std::string& name, int ranks, int microbatches, int virtual_stages = 1);

}  // namespace trine
