// `trine plan`: cut a model into pipeline stages and write the plan.
#include "commands.h"

#include "trine/partitioner/profiler.h"
#include "trine/common/files.h"
#include "trine/recompute/memory_model.h"
#include "trine/runtime/layout_planner.h"
#include "trine/runtime/tensor_parallel_report.h"
#include "trine/schedules/schedule_registry.h"

#include <iostream>

namespace trine::cli {

void add_plan_options(CLI::App* cmd, PlanArgs& a) {
  std::string methods;
  for (const auto& m : partition_method_names()) methods += (methods.empty() ? "" : "|") + m;
  cmd->add_option("--stages", a.stages, "number of pipeline stages")->check(CLI::PositiveNumber);
  cmd->add_option("--method", a.method, "partition method: " + methods)->check(CLI::IsMember(partition_method_names()));
  cmd->add_flag("--profile", a.profile, "measure every layer on this device instead of estimating from FLOPs");
  cmd->add_option("--warmup", a.warmup, "profile: untimed steps first")->check(CLI::NonNegativeNumber);
  cmd->add_option("--repeats", a.repeats, "profile: timed steps (the median counts)")->check(CLI::PositiveNumber);
  cmd->add_option("--flops-per-second", a.flops_per_second, "analytic costs: assumed FLOP rate")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--memory-limit", a.memory_limit, "per-stage memory limit, e.g. 2GiB (default: none)");
  cmd->add_option("--microbatches", a.microbatches, "microbatches per step (sets activations in flight; 0: >= stages)")
      ->check(CLI::NonNegativeNumber);
  std::string help = "pipeline schedule the plan is for:";
  for (const auto& s : registered_schedules()) help += "\n  " + s.name + ": " + s.summary;
  cmd->add_option("--schedule", a.schedule, help)->check(CLI::IsMember(schedule_names()));
  cmd->add_option("--virtual-stages", a.virtual_stages,
                  "stages each pipeline rank holds (interleaved_1f1b: >= 2, rank r holding r, r+p, ...; --stages "
                  "counts them all)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--partition-seed", a.partition_seed, "METIS's random seed");
  cmd->add_option("--starts", a.starts, "manual: the first layer of each stage after the first (comma-separated)")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--out", a.out, "write the plan as JSON to this file");
  cmd->add_flag("--show-costs", a.show_costs, "also print every layer's time and memory");
  std::string policies;
  for (const auto& p : recompute_policies())
    if (p.implemented) policies += (policies.empty() ? "" : "|") + p.name;
  cmd->add_option("--recompute", a.recompute.policy,
                  "recompute policy the activation memory table is for: " + policies);
  cmd->add_option("--recompute-every", a.recompute.every, "full: layers per recomputed segment");
  cmd->add_option("--recompute-ratio", a.recompute.ratio, "stage_aware: the first stage's share of recomputed layers");
  cmd->add_option("--recompute-layers", a.recompute.layers, "layers: the layer names to recompute (comma-separated)")
      ->delimiter(',');
  cmd->add_option("--recompute-memory-limit", a.recompute.memory_limit_bytes,
                  "stage_aware: each stage's activation budget in bytes (instead of a ratio)");
}

StagePlan make_plan(const LoadedModel& model, const ProxyGraph& proxy, const PlanArgs& a) {
  PlanOptions o;
  o.stages = a.stages;
  o.memory_limit_bytes = a.memory_limit.empty() ? 0 : parse_bytes(a.memory_limit, "--memory-limit");
  o.pipeline.schedule = a.schedule;
  o.pipeline.microbatches = a.microbatches;
  o.pipeline.virtual_stages = a.virtual_stages;
  check_virtual_stages(find_schedule(a.schedule, "--schedule"), a.virtual_stages, "--virtual-stages");
  TORCH_CHECK(a.stages % a.virtual_stages == 0, "--stages ", a.stages, " is not a multiple of --virtual-stages ",
              a.virtual_stages, ": every pipeline rank holds that many stages");
  o.seed = a.partition_seed;
  o.manual_starts = a.starts;
  TORCH_CHECK(a.method != "manual" || !a.starts.empty(), "--method manual needs --starts: the first layer of each ",
              "stage after the first, e.g. --starts blocks.2,blocks.4");
  CostModel costs;
  if (a.profile) {
    ProfileOptions p;
    p.warmup = a.warmup;
    p.repeats = a.repeats;
    costs = profile_layers(model.traced, proxy, model.batch(0), p);
  } else {
    AnalyticOptions an;
    an.flops_per_second = a.flops_per_second;
    costs = analytic_costs(proxy, an);
  }
  if (a.show_costs) std::cout << layer_cost_table(proxy, costs) << "\n";
  return plan_stages(proxy, costs, a.method, o);
}

namespace {

// Per stage, what one microbatch keeps under the recompute policy and the
// most the stage holds at once under the plan's schedule.
void print_activation_memory(const ProxyGraph& proxy, const StagePlan& plan, const RecomputeSettings& recompute) {
  const auto stage_of_layer = plan.stage_of_layer(proxy);
  PipelineRecomputeInputs in;
  in.proxy = &proxy;
  in.layers_of_stage.resize(plan.num_stages());
  for (size_t l = 0; l < stage_of_layer.size(); ++l) in.layers_of_stage[stage_of_layer[l]].push_back(static_cast<int>(l));
  in.layer_bytes = plan.layer_activation_bytes;  // the costs the plan was made with
  in.layer_bytes_selective = plan.layer_selective_bytes;
  in.schedule = plan.pipeline.schedule;
  in.virtual_stages = plan.pipeline.virtual_stages;
  const int ranks = plan.num_stages() / in.virtual_stages;
  in.microbatches = plan.pipeline.microbatches > 0 ? plan.pipeline.microbatches : ranks;
  const auto recompute_plan = recompute_for_pipeline(recompute, in);
  std::string policy = recompute.policy;
  if (recompute.policy == "stage_aware" && recompute.memory_limit_bytes > 0)
    policy += ", limit " + std::to_string(recompute.memory_limit_bytes) + " B";
  else if (recompute.policy == "stage_aware")
    policy += ", r0 = " + std::to_string(recompute.ratio).substr(0, 4);
  if (recompute.policy == "full" && recompute.every > 1) policy += ", every " + std::to_string(recompute.every);
  std::cout << "activation memory per stage, recompute " << policy << ", " << in.schedule << ", m = " << in.microbatches
            << ":\n"
            << activation_memory_table(predict_activation_memory(proxy, in.layer_bytes, in.layer_bytes_selective,
                                                                 in.layers_of_stage, recompute_plan, in.schedule,
                                                                 in.microbatches, policy, in.virtual_stages));
}

}  // namespace

CLI::App* add_plan_command(CLI::App& app, PlanCommandArgs& args) {
  auto* cmd = app.add_subcommand("plan", "cut a model into pipeline stages, print and write the plan");
  add_model_options(cmd, args.model, true);
  add_plan_options(cmd, args.plan);
  cmd->add_option("--tp", args.tp, "also print every linear's tensor-parallel decision over this many ranks and the "
                                   "memory one tp rank holds per stage")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--tp-column", args.tp_overrides.column, "--tp: force these weights column-parallel")->delimiter(',');
  cmd->add_option("--tp-row", args.tp_overrides.row, "--tp: force these weights row-parallel")->delimiter(',');
  cmd->add_option("--tp-replicate", args.tp_overrides.replicate, "--tp: keep these weights whole")->delimiter(',');
  cmd->add_option("--world", args.world, "choose the whole layout for this many ranks: every dp x pp x tp, "
                                         "microbatch count, schedule and recomputation, ranked by simulated step "
                                         "time (profiles the layers here)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--memory-per-device", args.memory_per_device, "--world: each device's memory, e.g. 2GiB");
  cmd->add_option("--global-batch", args.global_batch, "--world: rows per step (default: the sample's rows x world)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--top", args.top, "--world: how many of the ranked layouts to print")->check(CLI::PositiveNumber);
  cmd->add_option("--machine", args.machine, "--world: a machine description (JSON); default this host");
  return cmd;
}

namespace {

// The model's arguments with microbatches of `rows` rows.
ModelArgs with_rows(ModelArgs args, int64_t rows) {
  args.spec.batch = rows;
  for (std::string& shape : args.shapes) shape = std::to_string(rows) + shape.substr(std::min(shape.find(','), shape.size()));
  return args;
}

// The layers at the sample's rows and at a quarter of them (the model loaded
// again at that size), for the planner's line through the two.
std::vector<LayerProfile> profile_two_sizes(const ModelArgs& args, const LoadedModel& model, const ProxyGraph& proxy,
                                            const ProfileOptions& p) {
  const SampleBatch sample = model.batch(0);
  const int64_t rows = sample.inputs.at(0).size(0);
  std::vector<LayerProfile> out;
  const int64_t small = std::max<int64_t>(1, rows / 4);
  if (small < rows) {
    const LoadedModel part = load_model(with_rows(args, small));
    out.push_back({small, profile_layers(part.traced, build_proxy_graph(part.traced), part.batch(0), p)});
  }
  out.push_back({rows, profile_layers(model.traced, proxy, sample, p)});
  return out;
}

int run_layout_planner(const PlanCommandArgs& args, const LoadedModel& model, const ProxyGraph& proxy) {
  const SampleBatch sample = model.batch(0);
  PlannerOptions o;
  o.world = args.world;
  const int64_t rows = sample.inputs.at(0).size(0);
  o.global_batch = args.global_batch > 0 ? args.global_batch : rows * args.world;
  o.memory_per_device = args.memory_per_device.empty() ? 0 : parse_bytes(args.memory_per_device, "--memory-per-device");
  if (!args.machine.empty())
    o.machine = MachineDescription::from_json(nlohmann::json::parse(read_file(args.machine)), args.machine);
  ProfileOptions p;
  p.warmup = args.plan.warmup;
  p.repeats = args.plan.repeats;
  p.threads = 1;
  const std::vector<LayerProfile> profiles = profile_two_sizes(args.model, model, proxy, p);
  const auto ranked = plan_layouts(model.traced, proxy, profiles, o);
  std::cout << ranked.size() << " layouts of " << o.world << " ranks for a global batch of " << o.global_batch
            << " (layer costs: " << profiles.back().costs.source << " at " << profiles.front().rows << " and "
            << profiles.back().rows << " rows; machine: " << o.machine.name << "):\n"
            << layout_table(ranked, o.global_batch, args.top);
  TORCH_CHECK(ranked.front().fits, "no layout fits --memory-per-device ", args.memory_per_device,
              "; the smallest needs ", ranked.front().memory_bytes, " bytes on its fullest device");
  std::cout << "chosen: " << ranked.front().describe() << "\n";
  return 0;
}

}  // namespace

int run_plan(const PlanCommandArgs& args) {
  const LoadedModel model = load_model(args.model);
  const ProxyGraph proxy = build_proxy_graph(model.traced);
  std::cout << "model: " << proxy.description << ", " << proxy.layers.size() << " layers\n";
  if (model.stand_in_loss) std::cout << "(TorchScript: the sum of its outputs stands in for a loss)\n";
  if (args.world > 0) return run_layout_planner(args, model, proxy);
  const StagePlan plan = make_plan(model, proxy, args.plan);
  std::cout << plan.table();
  print_activation_memory(proxy, plan, args.plan.recompute);
  if (args.tp > 1) {
    const ShardingAnalysis analysis = analyze_sharding(model.traced, args.tp, args.tp_overrides);
    check_tensor_parallel_layout(analysis, "--tp", "--tp-replicate");
    std::cout << sharding_table(analysis)
              << tensor_parallel_memory_table(plan, sharded_stage_bytes(model.traced, proxy,
                                                                        plan.stage_of_layer(proxy), analysis));
  }
  if (!args.plan.out.empty()) {
    plan.save(args.plan.out);
    std::cout << "plan written to " << args.plan.out << "\n";
  }
  return 0;
}

}  // namespace trine::cli
