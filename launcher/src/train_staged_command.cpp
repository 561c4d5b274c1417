// `trine train-staged`: train a model cut into stages, all in one process.
#include "commands.h"

#include "trine/frontend/sequential_staged_model.h"

#include <chrono>
#include <cstdio>
#include <iostream>

namespace trine::cli {

CLI::App* add_train_staged_command(CLI::App& app, TrainStagedArgs& args) {
  auto* cmd = app.add_subcommand("train-staged", "train a model cut into stages, in one process");
  add_model_options(cmd, args.model, false);
  add_plan_options(cmd, args.plan);
  cmd->add_option("--plan", args.plan_file, "a plan written by `trine plan` (instead of planning now)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--steps", args.steps, "training steps")->check(CLI::PositiveNumber);
  cmd->add_option("--lr", args.lr, "AdamW learning rate")->check(CLI::PositiveNumber);
  cmd->add_option("--log-every", args.log_every, "print every N steps")->check(CLI::PositiveNumber);
  return cmd;
}

int run_train_staged(const TrainStagedArgs& args) {
  const LoadedModel model = load_model(args.model);
  ProxyGraph proxy = build_proxy_graph(model.traced);
  const StagePlan plan = args.plan_file.empty() ? make_plan(model, proxy, args.plan) : StagePlan::load(args.plan_file);
  const auto assignment = plan.stage_of_layer(proxy);
  std::cout << plan.table();
  SequentialStagedModel staged(model.traced, std::move(proxy), assignment);
  torch::optim::AdamW opt(staged.parameters(), torch::optim::AdamWOptions(args.lr).weight_decay(0.01));
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t batch_size = model.batch(0).inputs.at(0).size(0);
  for (int64_t step = 0; step < args.steps; ++step) {
    staged.zero_grad();
    const RngPolicy rng{RngPolicy::Mode::PerOp, args.model.spec.seed, step};
    auto loss = staged.forward_backward(model.batch(step), rng);
    staged.reduce_shared_gradients();
    opt.step();
    if (step % args.log_every == 0 || step + 1 == args.steps) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("step %5lld  loss %.4f  %.1f samples/s\n", static_cast<long long>(step), loss.item<double>(),
                  static_cast<double>((step + 1) * batch_size) / secs);
    }
  }
  return 0;
}

}  // namespace trine::cli
