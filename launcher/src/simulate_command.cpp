// `trine simulate`: plays a schedule in time without a model
// (schedules/schedule_simulator.h) and prints the step's makespan, bubble,
// per-rank busy time, memory peaks and a timeline.
//
//   --unit: F = 1, B = 2, R = 1 time unit, free transfers, blocking
//   rendezvous (the setting of Merak's published makespans); a recomputing
//   stage's R reruns the share of its forward the policy drops.
//   --times FILE: per-stage times from a JSON file
//   {"stages": [{"forward": s, "backward": s, "recompute": s,
//   "activation_transfer": s, "gradient_transfer": s, "reduce": s,
//   "optimizer": s}, ...]} (missing keys 0; forward and backward required).
//   --gpt NAME --machine a100|h100|FILE: a GPT's analytic costs on a machine
//   description (runtime/step_prediction.h), with --dp and --tp: the 3D
//   layout's step and samples/s.
#include "commands.h"

#include "trine/common/files.h"
#include "trine/recompute/stage_aware_ratios.h"
#include "trine/runtime/step_prediction.h"
#include "trine/schedules/schedule_registry.h"
#include "trine/schedules/schedule_simulator.h"

#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>

namespace trine::cli {

namespace {

// The share of each stage's forward a plain F drops under `policy`.
std::vector<double> dropped_share(const SimulateArgs& a) {
  const ScheduleSpec& spec = find_schedule(a.schedule, "--schedule");
  const int stages = a.stages * a.virtual_stages;
  std::vector<double> share(stages, 0);
  if (a.recompute == "full") {
    for (int s = 0; s < stages; ++s) share[s] = spec.last_stage_keeps_everything && s == stages - 1 ? 0 : 1;
  } else if (a.recompute == "stage_aware") {
    share = stage_aware_ratios_for(peak_in_flight(a.schedule, a.stages, a.microbatches, a.virtual_stages),
                                   a.recompute_ratio);
  } else {
    TORCH_CHECK(a.recompute == "none", "--recompute '", a.recompute, "': choose none, full or stage_aware");
  }
  return share;
}

std::vector<StageTimes> unit_times(const SimulateArgs& a) {
  const std::vector<double> share = dropped_share(a);
  std::vector<StageTimes> times(share.size());
  for (size_t s = 0; s < share.size(); ++s) {
    times[s].forward = 1.0 / a.virtual_stages;
    times[s].backward = 2.0 / a.virtual_stages;
    times[s].recompute = share[s] / a.virtual_stages;
  }
  return times;
}

std::vector<StageTimes> times_from_file(const std::string& path, int stages) {
  std::vector<StageTimes> times = stage_times_from_json(nlohmann::json::parse(read_file(path)), path);
  TORCH_CHECK(static_cast<int>(times.size()) == stages, path, ": \"stages\" lists ", times.size(), " stages, need ",
              stages, " (--stages x --virtual-stages)");
  return times;
}

// One row per rank, one character per time unit: F forward, f F*, R
// recompute, B backward (two units), . idle. Only for unit costs.
std::string unit_timeline(const SimulationReport& r, int ranks) {
  const int width = static_cast<int>(std::lround(r.makespan));
  std::vector<std::string> rows(ranks, std::string(width, '.'));
  for (const TimelineEvent& e : r.timeline) {
    if (e.compute <= 0) continue;
    const char mark = e.kind == 'C' ? 'f' : e.kind;
    const int from = static_cast<int>(std::lround(e.start));
    const int to = std::min(width, static_cast<int>(std::lround(e.start + e.compute)));
    for (int t = from; t < to; ++t) rows[e.rank][t] = mark;
  }
  std::ostringstream os;
  for (int k = 0; k < ranks; ++k) os << "  rank " << k << " |" << rows[k] << "|\n";
  return os.str();
}

// GPT shapes with the parameter counts of Merak's models (Megatron-style
// layers x hidden; vocabulary 50257, sequence 1024).
const std::map<std::string, GptShape>& gpt_presets() {
  static const std::map<std::string, GptShape> presets{
      {"gpt-1.5b", {48, 1600, 25, 1024, 50257}},
      {"gpt-2.5b", {54, 1920, 20, 1024, 50257}},
      {"gpt-8.3b", {72, 3072, 32, 1024, 50257}},
      {"gpt-20b", {44, 6144, 48, 1024, 50257}},
  };
  return presets;
}

MachineDescription machine_of(const std::string& name) {
  if (name == "a100" || name == "h100") return MachineDescription::named(name);
  if (name == "this-host") return MachineDescription::this_host();
  return MachineDescription::from_json(nlohmann::json::parse(read_file(name)), name);
}

int run_gpt_simulation(const SimulateArgs& a) {
  auto it = gpt_presets().find(a.gpt);
  std::string names;
  for (const auto& [n, g] : gpt_presets()) names += (names.empty() ? "" : ", ") + n;
  TORCH_CHECK(it != gpt_presets().end(), "--gpt '", a.gpt, "' is not a known model; use one of ", names);
  const MachineDescription machine = machine_of(a.machine);
  const Layout layout{a.dp, a.stages, a.tp, a.virtual_stages, a.microbatches, a.schedule};
  RecomputeSettings recompute;
  recompute.policy = a.recompute;
  recompute.ratio = a.recompute_ratio;
  const auto work = gpt_stage_work(it->second, a.microbatch_rows, layout, machine, recompute);
  const SimulationReport r = simulate_layout(work, layout, machine);
  const double samples = static_cast<double>(a.dp) * a.microbatches * a.microbatch_rows;
  std::printf("%s (%.2fB parameters) on %d x %s: dp %d, pp %d, tp %d, %s, recompute %s, %d microbatches of %lld\n",
              a.gpt.c_str(), it->second.parameters() / 1e9, a.dp * a.stages * a.tp, machine.name.c_str(), a.dp,
              a.stages, a.tp, a.schedule.c_str(), a.recompute.c_str(), a.microbatches,
              static_cast<long long>(a.microbatch_rows));
  std::printf("makespan %g\n", r.makespan);
  std::printf("bubble %.4f\n", r.bubble);
  std::printf("samples/s %.2f\n", samples / r.makespan);
  if (a.json)
    std::cout << "json: "
              << nlohmann::json{{"model", a.gpt}, {"parameters", it->second.parameters()}, {"machine", machine.name},
                                {"dp", a.dp}, {"pp", a.stages}, {"tp", a.tp}, {"schedule", a.schedule},
                                {"recompute", a.recompute}, {"microbatches", a.microbatches},
                                {"microbatch_rows", a.microbatch_rows}, {"step_s", r.makespan},
                                {"bubble", r.bubble}, {"samples_per_s", samples / r.makespan}}
                     .dump()
              << std::endl;
  if (!a.trace.empty()) write_file_atomically(a.trace, chrome_trace(r.timeline));
  return 0;
}

}  // namespace

CLI::App* add_simulate_command(CLI::App& app, SimulateArgs& a) {
  auto* cmd = app.add_subcommand("simulate", "play a pipeline schedule in time without a model: step time, bubble, "
                                             "memory peaks, timeline");
  cmd->add_flag("--unit", a.unit, "unit costs: F = 1, B = 2, R = 1, free transfers");
  cmd->add_option("--times", a.times_file, "per-stage times (JSON: {\"stages\": [{\"forward\": s, ...}]})")
      ->check(CLI::ExistingFile);
  cmd->add_option("--stages", a.stages, "pipeline ranks p")->check(CLI::PositiveNumber);
  cmd->add_option("--microbatches", a.microbatches, "microbatches per step m")->check(CLI::PositiveNumber);
  std::string help = "pipeline schedule:";
  for (const auto& s : registered_schedules()) help += "\n  " + s.name + ": " + s.summary;
  cmd->add_option("--schedule", a.schedule, help)->check(CLI::IsMember(schedule_names()));
  cmd->add_option("--virtual-stages", a.virtual_stages, "model chunks per rank (interleaved_1f1b)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--recompute", a.recompute, "unit costs: none | full | stage_aware (what a plain F drops)")
      ->check(CLI::IsMember({"none", "full", "stage_aware"}));
  cmd->add_option("--recompute-ratio", a.recompute_ratio, "stage_aware: the first stage's share r0")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_flag("--buffered", a.buffered, "sends complete when posted (Gloo) instead of at their receive (NCCL)");
  cmd->add_option("--cores", a.cores, "the ranks share this many cores (0: one device each)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--trace", a.trace, "write the simulated step as a Chrome/Perfetto trace (JSON)");
  std::string presets;
  for (const auto& [n, g] : gpt_presets()) presets += (presets.empty() ? "" : "|") + n;
  cmd->add_option("--gpt", a.gpt, "a GPT's analytic costs: " + presets);
  cmd->add_option("--machine", a.machine, "--gpt: a100 | h100 | this-host | a machine description (JSON)");
  cmd->add_option("--dp", a.dp, "--gpt: data-parallel replicas")->check(CLI::PositiveNumber);
  cmd->add_option("--tp", a.tp, "--gpt: tensor-parallel ranks")->check(CLI::PositiveNumber);
  cmd->add_option("--microbatch-rows", a.microbatch_rows, "--gpt: sequences per microbatch")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--json", a.json, "--gpt: also print the result as one JSON line");
  return cmd;
}

int run_simulate(const SimulateArgs& a) {
  TORCH_CHECK(a.unit + !a.times_file.empty() + !a.gpt.empty() == 1,
              "give exactly one of --unit, --times FILE and --gpt NAME");
  if (!a.gpt.empty()) return run_gpt_simulation(a);
  check_virtual_stages(find_schedule(a.schedule, "--schedule"), a.virtual_stages, "--virtual-stages");
  const int stages = a.stages * a.virtual_stages;
  const std::vector<StageTimes> times = a.unit ? unit_times(a) : times_from_file(a.times_file, stages);
  SimulationOptions options;
  options.mode = a.buffered ? SendMode::Buffered : SendMode::Blocking;
  if (a.cores > 0) options.speed = shared_cores_speed(a.cores, a.stages);
  const auto program = pipeline_schedule(a.schedule, a.stages, a.microbatches, a.virtual_stages);
  const SimulationReport r = simulate_schedule(program, a.microbatches, StageTopology::chain(stages), times, options);

  std::printf("schedule %s, %d pipeline ranks%s, %d microbatches, %s\n", a.schedule.c_str(), a.stages,
              a.virtual_stages > 1 ? (" x " + std::to_string(a.virtual_stages) + " chunks").c_str() : "",
              a.microbatches, a.unit ? ("unit costs, recompute " + a.recompute).c_str() : a.times_file.c_str());
  std::printf("makespan %g\n", r.makespan);
  std::printf("bubble %.4f\n", r.bubble);
  std::printf("%-6s %10s %16s\n", "rank", "busy", "peak in flight");
  for (int k = 0; k < a.stages; ++k)
    std::printf("%-6d %10g %16d\n", k, r.busy[k], r.memory.peak_in_flight[k]);
  if (a.unit && r.makespan <= 200) std::cout << "timeline (F forward, f F*, R recompute, B backward, . idle):\n"
                                             << unit_timeline(r, a.stages);
  if (!a.trace.empty()) {
    write_file_atomically(a.trace, chrome_trace(r.timeline, a.unit ? 1000 : 1e6));
    std::printf("trace written to %s\n", a.trace.c_str());
  }
  return 0;
}

}  // namespace trine::cli
