// The `trine` command: inspect a model, plan its pipeline stages, check a plan,
// train it staged in one process, train it across processes (`train`),
// simulate a schedule (`simulate`), or export a checkpoint's model (`export`).
#include "commands.h"

#include "trine/runtime/launch.h"

#include <ATen/Parallel.h>

#include <iostream>

namespace {

// " (rank 3)" when launched as one of several processes, so that every
// rank's error can be told apart; "" for a single process.
std::string rank_suffix() {
  try {
    const auto launch = trine::detect_launch();
    if (launch.world_size > 1) return " (rank " + std::to_string(launch.rank) + ")";
  } catch (...) {
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  using namespace trine::cli;
  CLI::App app{"trine: automatic 3D-parallel training of LibTorch models"};
  app.require_subcommand(1);
  // A later option wins (scripts add defaults the user may override).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  int threads = 0;
  app.add_option("--threads", threads, "intra-op threads (default: LibTorch's choice, OMP_NUM_THREADS)")
      ->check(CLI::NonNegativeNumber);

  InspectArgs inspect_args;
  PlanCommandArgs plan_args;
  CheckPlanArgs check_args;
  TrainStagedArgs train_args;
  TrainArgs dist_args;
  TokenizeArgs tokenize_args;
  SimulateArgs simulate_args;
  ExportArgs export_args;
  auto* inspect = add_inspect_command(app, inspect_args);
  auto* plan = add_plan_command(app, plan_args);
  auto* check = add_check_plan_command(app, check_args);
  auto* staged = add_train_staged_command(app, train_args);
  auto* train = add_train_command(app, dist_args);
  auto* tokenize = add_tokenize_command(app, tokenize_args);
  auto* simulate = add_simulate_command(app, simulate_args);
  auto* exporting = add_export_command(app, export_args);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // Usage errors exit 2 (runtime errors 1), with the same prefix.
    std::cerr << "trine: error: " << e.what() << " (run with --help for the options)\n";
    return 2;
  }
  try {
    if (threads > 0) at::set_num_threads(threads);
    if (*inspect) return run_inspect(inspect_args);
    if (*plan) return run_plan(plan_args);
    if (*check) return run_check_plan(check_args);
    if (*staged) return run_train_staged(train_args);
    if (*train) return run_train(dist_args);
    if (*tokenize) return run_tokenize(tokenize_args);
    if (*simulate) return run_simulate(simulate_args);
    if (*exporting) return run_export(export_args);
  } catch (const c10::Error& e) {
    std::cerr << "trine: error" + rank_suffix() + ": " + e.what_without_backtrace() + "\n" << std::flush;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "trine: error" + rank_suffix() + ": " + e.what() + "\n" << std::flush;
    return 1;
  }
  return 0;
}
