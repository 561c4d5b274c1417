// `trine check-plan`: proves that a plan trains like the unsplit model: a few
// steps of staged training against the whole graph in one stage, same seeds,
// comparing every loss and every gradient.
#include "commands.h"

#include "trine/frontend/sequential_staged_model.h"

#include <cstdio>
#include <iostream>

namespace trine::cli {

namespace {

double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  const double den = b.norm().item<double>();
  const double num = (a - b).norm().item<double>();
  return den == 0 ? num : num / den;
}

}  // namespace

CLI::App* add_check_plan_command(CLI::App& app, CheckPlanArgs& args) {
  auto* cmd = app.add_subcommand("check-plan", "train with a plan and with the unsplit model; compare losses and gradients");
  add_model_options(cmd, args.model, true);
  cmd->add_option("--plan", args.plan_file, "the plan JSON to check")->required()->check(CLI::ExistingFile);
  cmd->add_option("--steps", args.steps, "training steps to compare")->check(CLI::PositiveNumber);
  cmd->add_option("--tolerance", args.tolerance, "largest relative difference accepted")->check(CLI::PositiveNumber);
  return cmd;
}

int run_check_plan(const CheckPlanArgs& args) {
  const StagePlan plan = StagePlan::load(args.plan_file);
  const LoadedModel model = load_model(args.model);
  const ProxyGraph proxy = build_proxy_graph(model.traced);
  SequentialStagedModel staged(model.traced, proxy, plan.stage_of_layer(proxy));
  SequentialStagedModel whole(model.traced, proxy, std::vector<int>(proxy.layers.size(), 0));
  torch::optim::SGD opt_staged(staged.parameters(), 0.01), opt_whole(whole.parameters(), 0.01);
  double worst_loss = 0, worst_grad = 0;
  std::string worst_param;
  for (int64_t step = 0; step < args.steps; ++step) {
    const RngPolicy rng{RngPolicy::Mode::PerOp, args.model.spec.seed, step};
    const SampleBatch batch = model.batch(step);
    for (auto* m : {&staged, &whole}) m->zero_grad();
    const auto loss_staged = staged.forward_backward(batch, rng);
    const auto loss_whole = whole.forward_backward(batch, rng);
    staged.reduce_shared_gradients();
    worst_loss = std::max(worst_loss, rel_diff(loss_staged, loss_whole));
    for (const auto& p : proxy.params) {
      if (!p.requires_grad || p.is_buffer || p.layers.empty()) continue;
      const auto g_whole = whole.gradient(p.name);
      if (!g_whole.defined()) continue;
      const auto g_staged = staged.gradient(p.name);
      TORCH_CHECK(g_staged.defined(), "plan check: '", p.name, "' has a gradient unsplit but none under the plan");
      const double d = rel_diff(g_staged, g_whole);
      if (d > worst_grad) {
        worst_grad = d;
        worst_param = p.name;
      }
    }
    opt_staged.step();
    opt_whole.step();
  }
  std::printf("%d stages, %lld steps: largest relative difference of loss %.3g, of gradients %.3g%s%s\n",
              plan.num_stages(), static_cast<long long>(args.steps), worst_loss, worst_grad,
              worst_param.empty() ? "" : " (", worst_param.empty() ? "" : (worst_param + ")").c_str());
  TORCH_CHECK(worst_loss <= args.tolerance && worst_grad <= args.tolerance, "plan check failed: the plan's ",
              worst_loss > args.tolerance ? "loss" : "gradient of '" + worst_param + "'",
              " differs from the unsplit model's by more than ", args.tolerance);
  std::cout << "plan OK: trains like the unsplit model\n";
  return 0;
}

}  // namespace trine::cli
