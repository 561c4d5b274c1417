// The subcommands of `trine`: each registers its options on the app and runs
// when chosen. Errors are thrown (c10::Error); main prints them and exits 1.
#pragma once
#include "model_options.h"

#include "trine/frontend/proxy_graph.h"
#include "trine/partitioner/stage_plan.h"
#include "trine/recompute/recompute_policy.h"
#include "trine/tensor_parallel/sharding_analysis.h"

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace trine::cli {

// How a plan is made: shared by `plan` and `train-staged`.
struct PlanArgs {
  int stages = 2;
  std::string method = "metis";
  bool profile = false;
  int warmup = 2, repeats = 5;
  double flops_per_second = 1e11;  // analytic costs
  std::string memory_limit;        // "" = none
  int microbatches = 0;
  std::string schedule = "1f1b";
  int virtual_stages = 1;          // stages per pipeline rank (interleaved_1f1b)
  uint64_t partition_seed = 0;
  std::vector<std::string> starts;  // manual
  std::string out;                  // plan JSON to write
  bool show_costs = false;          // print the per-layer cost table too
  RecomputeSettings recompute;      // the activation memory table's policy
};
void add_plan_options(CLI::App* cmd, PlanArgs& args);
StagePlan make_plan(const LoadedModel& model, const ProxyGraph& proxy, const PlanArgs& args);

struct InspectArgs {
  ModelArgs model;
  std::string json_out;
  int tp = 1;                       // > 1: also print the tensor-parallel decision of every linear
  ShardingOverrides tp_overrides;   // --tp-column / --tp-row / --tp-replicate patterns
};
CLI::App* add_inspect_command(CLI::App& app, InspectArgs& args);
int run_inspect(const InspectArgs& args);

struct PlanCommandArgs {
  ModelArgs model;
  PlanArgs plan;
  int world = 0;                  // > 0: choose the whole layout for this many ranks (the layout planner)
  std::string memory_per_device;  // --world: each device's memory, e.g. 2GiB ("" = no limit)
  int64_t global_batch = 0;       // --world: rows per step (0: the sample's rows x world)
  int top = 10;                   // --world: rows of the ranking printed
  std::string machine;            // --world: a machine description (JSON); default this host
  int tp = 1;                      // > 1: also each linear's decision and the memory per tp rank
  ShardingOverrides tp_overrides;  // --tp-column / --tp-row / --tp-replicate patterns
};
CLI::App* add_plan_command(CLI::App& app, PlanCommandArgs& args);
int run_plan(const PlanCommandArgs& args);

struct CheckPlanArgs {
  ModelArgs model;
  std::string plan_file;
  int64_t steps = 2;
  double tolerance = 1e-5;
};
CLI::App* add_check_plan_command(CLI::App& app, CheckPlanArgs& args);
int run_check_plan(const CheckPlanArgs& args);

struct TrainStagedArgs {
  ModelArgs model;
  PlanArgs plan;
  std::string plan_file;  // use this plan instead of making one
  int64_t steps = 20, log_every = 5;
  double lr = 3e-3;
};
CLI::App* add_train_staged_command(CLI::App& app, TrainStagedArgs& args);
int run_train_staged(const TrainStagedArgs& args);

struct TrainArgs {
  std::string config;
  int64_t steps = 0;      // 0: the config's
  std::string data_path;  // overrides the config's data.path
};
CLI::App* add_train_command(CLI::App& app, TrainArgs& args);
int run_train(const TrainArgs& args);

struct TokenizeArgs {
  std::string text, out;
};
CLI::App* add_tokenize_command(CLI::App& app, TokenizeArgs& args);
int run_tokenize(const TokenizeArgs& args);

struct SimulateArgs {
  bool unit = false;
  std::string times_file;
  int stages = 4, microbatches = 8, virtual_stages = 1;
  std::string schedule = "1f1b";
  std::string recompute = "none";  // unit costs: none | full | stage_aware
  double recompute_ratio = 0.8;
  bool buffered = false;
  double cores = 0;
  std::string trace;
  std::string gpt, machine = "a100";  // analytic GPT costs on a machine description
  int dp = 1, tp = 1;
  int64_t microbatch_rows = 1;
  bool json = false;
};
CLI::App* add_simulate_command(CLI::App& app, SimulateArgs& args);
int run_simulate(const SimulateArgs& args);

struct ExportArgs {
  std::string checkpoint;  // a step-<N> directory or a checkpoint.dir
  std::string out;         // FILE.safetensors or FILE.pt
};
CLI::App* add_export_command(CLI::App& app, ExportArgs& args);
int run_export(const ExportArgs& args);

}  // namespace trine::cli
