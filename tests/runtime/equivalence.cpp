// Multi-process equivalence check, run by ctest under mpirun or torchrun:
// trains an example model with trine (given dp, pp, schedule, and each listed
// microbatch count) and, on every rank, the same model and seed in one
// process with plain LibTorch on the whole global batch. Every step's loss
// and, after the last step, every parameter this rank holds must agree within
// the tolerance. Exits 1 on any rank that disagrees (mpirun then fails).
// With dropout, plain LibTorch draws other masks, so the single-process
// reference is then trine's own graph run as one stage on one process
// (SequentialStagedModel), microbatch by microbatch with the same global
// microbatch numbers and per-op random seeds, keeping every activation.
#include "../support/memory_watch.h"
#include "../support/reference.h"
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/trace.h"
#include "trine/runtime/trainer.h"

#include <CLI/CLI.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <thread>

using namespace trine;

namespace {

struct Args {
  std::string model = "gpt";  // gpt | gpt_tied | skip | skip_shared (hidden layers share weights)
  int dp = 1, pp = 1, tp = 1;
  int sub_microbatches = 1;         // config.tensor_parallel.sub_microbatches
  std::string schedule = "1f1b";
  int virtual_stages = 1;           // config.virtual_stages (interleaved_1f1b)
  int layers = 0;                   // transformer blocks (0: the model's default)
  std::vector<int> microbatches{1, 4, 8};
  int steps = 10;
  int64_t global_batch = 16;
  std::string optimizer = "adamw";
  double tolerance = 1e-5;        // losses
  double param_tolerance = 1e-4;  // parameters after the last step (Adam amplifies reassociation)
  int die_rank = -1, die_step = -1;  // failure tests: this rank is killed during this step
  std::string device = "cpu";       // cuda: trine's ranks run on the GPU (scripts/gpu-check.sh)
  std::string recompute = "none";   // config.recompute.policy of trine's run (the reference keeps everything)
  double dropout = 0;               // > 0: the reference is trine's graph on one process (see above)
  double recompute_ratio = 0;       // config.recompute.ratio (stage_aware)
  int64_t recompute_memory_limit = 0;  // config.recompute.memory_limit_bytes (stage_aware)
  int recompute_every = 1;          // config.recompute.every (full)
  std::vector<std::string> recompute_layers;  // config.recompute.layers (layers)
  int64_t memory_budget = 0;        // config.memory.budget_bytes: saved activations per rank, checked every step
  std::string memory_policy = "combined";  // config.memory.policy
  bool deferred = false;            // trine's model is built with deferred parameters (each rank makes its own);
                                    // the reference starts from the same initial values, made whole in one place
};

ModelSpec spec_of(const Args& a) {
  ModelSpec s = testing::small_gpt_spec(a.model == "gpt_tied", a.dropout);
  if (a.model == "skip" || a.model == "skip_shared") {
    s.name = "skip";
    s.layers = 6;
    s.hidden = 32;
    if (a.model == "skip_shared") s.distinct_layers = 2;  // layers 0, 2, 4 share weights, and 1, 3, 5
  }
  if (a.layers > 0) s.layers = a.layers;
  s.batch = a.global_batch;
  s.seed = 7;
  s.deferred = a.deferred;
  return s;
}

// The single-process references start where trine's ranks do: with deferred
// parameters, each one's initial value made whole (frontend/deferred_init.h).
ExampleModel reference_model(const Args& a, const TrainConfig& c) {
  Args real = a;
  real.deferred = false;
  ExampleModel m = make_example_model(spec_of(real));
  if (!a.deferred) return m;
  torch::NoGradGuard no_grad;
  for (auto& p : m.ptr->named_parameters())
    if (p.value().numel() > 1)
      p.value().copy_(initial_value(m.init, p.key(), p.value().sizes(), p.value().scalar_type(), c.seed));
  return m;
}

TrainConfig config_of(const Args& a, int m) {
  TrainConfig c;
  c.parallel.dp = a.dp;
  c.parallel.pp = a.pp;
  c.parallel.tp = a.tp;
  c.tensor_parallel.sub_microbatches = a.sub_microbatches;
  c.global_batch = a.global_batch;
  c.microbatches = m;
  c.schedule = a.schedule;
  c.virtual_stages = a.virtual_stages;
  c.optimizer.name = a.optimizer;
  c.optimizer.lr = a.optimizer == "adamw" ? 3e-3 : 0.1;
  c.optimizer.weight_decay = 0.01;
  c.optimizer.momentum = 0.9;
  c.optimizer.grad_clip = 0.5;  // small enough that clipping acts
  c.lr_schedule.warmup_steps = 3;
  c.steps = a.steps;
  c.timeout_s = 60;
  c.bucket_bytes = 4096;  // several buckets even for a small model
  c.log_every = 0;
  c.device = a.device;
  c.recompute.policy = a.recompute;
  c.recompute.ratio = a.recompute_ratio;
  c.recompute.memory_limit_bytes = a.recompute_memory_limit;
  c.recompute.every = a.recompute_every;
  c.recompute.layers = a.recompute_layers;
  c.memory.bytes = a.memory_budget;
  c.memory.policy = memory_policy_named(a.memory_policy, "--memory-policy");
  return c;
}

// The references' optimizer, in plain LibTorch: the config's AdamW or SGD,
// global-norm clipping and learning-rate schedule.
class ReferenceOptimizer {
 public:
  ReferenceOptimizer(std::vector<torch::Tensor> params, const TrainConfig& c) : params_(std::move(params)), c_(c) {
    if (c.optimizer.name == "adamw")
      opt_ = std::make_unique<torch::optim::AdamW>(
          params_, torch::optim::AdamWOptions(c.optimizer.lr).weight_decay(c.optimizer.weight_decay));
    else
      opt_ = std::make_unique<torch::optim::SGD>(params_, torch::optim::SGDOptions(c.optimizer.lr)
                                                              .momentum(c.optimizer.momentum)
                                                              .weight_decay(c.optimizer.weight_decay));
  }
  // Clips the gradients, sets step `step`'s learning rate and steps.
  void step(int64_t step) {
    torch::nn::utils::clip_grad_norm_(params_, c_.optimizer.grad_clip);
    const double lr = learning_rate(c_.optimizer, c_.lr_schedule, step, c_.steps);
    for (auto& g : opt_->param_groups()) {
      if (c_.optimizer.name == "adamw") static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
      else static_cast<torch::optim::SGDOptions&>(g.options()).lr(lr);
    }
    opt_->step();
  }

 private:
  std::vector<torch::Tensor> params_;
  const TrainConfig& c_;
  std::unique_ptr<torch::optim::Optimizer> opt_;
};

// Plain LibTorch: the whole global batch at once.
std::vector<double> reference_run(ExampleModel& ref, const TrainConfig& c) {
  std::vector<torch::Tensor> params;
  for (auto& p : ref.ptr->parameters())
    if (p.requires_grad()) params.push_back(p);
  ReferenceOptimizer opt(params, c);
  std::vector<double> losses;
  for (int64_t step = 0; step < c.steps; ++step) {
    losses.push_back(testing::eager_step(ref, ref.batch(step)).loss);
    opt.step(step);
  }
  return losses;
}

SampleBatch rows_of(const SampleBatch& b, int64_t first, int64_t count) {
  SampleBatch out;
  for (const auto& t : b.inputs) out.inputs.push_back(t.narrow(0, first, count));
  for (const auto& t : b.targets) out.targets.push_back(t.narrow(0, first, count));
  return out;
}

// One process, the whole graph as one stage: each global microbatch g of
// every step forwarded with the per-op seeds (config.seed, g) that trine's
// ranks use, gradients summed and divided by the microbatch count, then the
// same optimizer, clipping and learning-rate schedule as reference_run.
// Returns the losses; `parameters` gets the final parameters by name.
std::vector<double> dropout_reference_run(const Args& a, const TrainConfig& c,
                                          std::map<std::string, torch::Tensor>& parameters) {
  ExampleModel model = reference_model(a, c);
  const int64_t microbatches = static_cast<int64_t>(c.parallel.dp) * c.microbatches;
  const int64_t rows = a.global_batch / microbatches;
  const TracedModel traced = trace(model.module, model.loss, rows_of(model.batch(0), 0, rows));
  ProxyGraph proxy = build_proxy_graph(traced);
  const std::vector<int> one_stage(proxy.layers.size(), 0);
  SequentialStagedModel graph(traced, std::move(proxy), one_stage);
  const auto params = graph.parameters();
  ReferenceOptimizer opt(params, c);
  std::vector<double> losses;
  for (int64_t step = 0; step < c.steps; ++step) {
    graph.zero_grad();
    const SampleBatch batch = model.batch(step);
    double loss = 0;
    for (int64_t g = 0; g < microbatches; ++g) {
      const RngPolicy rng{RngPolicy::Mode::PerOp, c.seed, step * microbatches + g};
      loss += graph.forward_backward(rows_of(batch, g * rows, rows), rng).item<double>() / microbatches;
    }
    {
      torch::NoGradGuard no_grad;
      for (auto& p : params)
        if (p.grad().defined()) p.grad().div_(static_cast<double>(microbatches));
    }
    losses.push_back(loss);
    opt.step(step);
  }
  for (const auto& p : model.ptr->named_parameters()) parameters[p.key()] = graph.parameter(p.key()).detach().clone();
  return losses;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"trine multi-process equivalence check"};
  app.add_option("--model", a.model)->check(CLI::IsMember({"gpt", "gpt_tied", "skip", "skip_shared"}));
  app.add_option("--dp", a.dp);
  app.add_option("--pp", a.pp);
  app.add_option("--tp", a.tp);
  app.add_option("--sub-microbatches", a.sub_microbatches);
  app.add_option("--schedule", a.schedule);
  app.add_option("--virtual-stages", a.virtual_stages);
  app.add_option("--layers", a.layers);
  app.add_option("--microbatches", a.microbatches)->delimiter(',');
  app.add_option("--steps", a.steps);
  app.add_option("--global-batch", a.global_batch);
  app.add_option("--optimizer", a.optimizer);
  app.add_option("--tolerance", a.tolerance);
  app.add_option("--param-tolerance", a.param_tolerance);
  app.add_option("--device", a.device)->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--recompute", a.recompute);
  app.add_option("--dropout", a.dropout);
  app.add_option("--recompute-ratio", a.recompute_ratio);
  app.add_option("--recompute-memory-limit", a.recompute_memory_limit);
  app.add_option("--recompute-every", a.recompute_every);
  app.add_option("--recompute-layers", a.recompute_layers)->delimiter(',');
  app.add_option("--memory-budget", a.memory_budget);
  app.add_option("--memory-policy", a.memory_policy);
  app.add_option("--die-rank", a.die_rank);
  app.add_option("--die-step", a.die_step);
  app.add_flag("--deferred", a.deferred);
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(1);
  int failures = 0;
  try {
    for (int m : a.microbatches) {
      const TrainConfig config = config_of(a, m);
      ExampleModel model = make_example_model(spec_of(a));
      Trainer trainer(model.module, model.loss, model.batch(0), config, model.init);
      std::map<std::string, torch::Tensor> expected_params;
      std::vector<double> expected;
      if (a.dropout > 0) {
        expected = dropout_reference_run(a, config, expected_params);
      } else {
        ExampleModel ref = reference_model(a, config);
        expected = reference_run(ref, config);
        for (const auto& p : ref.ptr->named_parameters()) expected_params[p.key()] = p.value().detach();
      }
      double worst_loss = 0, worst_param = 0;
      testing::MemoryWatch memory{a.memory_budget, a.memory_policy};
      for (int step = 0; step < a.steps; ++step) {
        if (trainer.rank() == a.die_rank && step == a.die_step) {
          // Killed a moment into the step, while its peers wait on it.
          std::thread([] {
            std::this_thread::sleep_for(std::chrono::milliseconds(3));
            std::raise(SIGKILL);
          }).detach();
        }
        const double loss = trainer.step(model.batch(step));
        failures += memory.after_step(trainer.last_step_timings(), trainer.rank(), step);
        const double rel = std::abs(loss - expected[step]) / std::abs(expected[step]);
        worst_loss = std::max(worst_loss, rel);
        if (rel > a.tolerance) {
          std::fprintf(stderr, "rank %d m=%d step %d: loss %.9f, single process %.9f (rel %.2e)\n", trainer.rank(), m,
                       step, loss, expected[step], rel);
          ++failures;
        }
      }
      for (const auto& [name, value] : expected_params) {
        const torch::Tensor mine = trainer.parameter(name);
        if (!mine.defined()) continue;
        const double rel = testing::rel_diff(mine.cpu(), trainer.tensor_parallel_slice(name, value));
        worst_param = std::max(worst_param, rel);
        if (rel > a.param_tolerance) {
          std::fprintf(stderr, "rank %d m=%d: parameter %s differs after %d steps (rel %.2e)\n", trainer.rank(), m,
                       name.c_str(), a.steps, rel);
          ++failures;
        }
      }
      if (a.tp > 1) {  // whole parameters (norms, row biases) stay identical across the tp ranks
        const double divergence = trainer.tensor_parallel_divergence();
        if (divergence != 0) {
          std::fprintf(stderr, "rank %d m=%d: whole parameters differ across its tp group by %.3e\n", trainer.rank(),
                       m, divergence);
          ++failures;
        }
      }
      std::printf("rank %d (stage %d, replica %d, tp rank %d) %s dp=%d pp=%d tp=%d %s recompute %s dropout %g m=%d: %d steps, worst loss rel %.2e, worst "
                  "parameter rel %.2e, first loss %.6f last %.6f\n",
                  trainer.rank(), trainer.stage(), trainer.replica(), trainer.tensor_parallel_rank(), a.model.c_str(), a.dp, a.pp, a.tp, a.schedule.c_str(), a.recompute.c_str(), a.dropout, m,
                  a.steps, worst_loss, worst_param, expected.front(), expected.back());
      memory.print(trainer.rank());
    }
  } catch (const c10::Error& e) {
    // One write per line: ranks share stderr, and pieces written apart interleave.
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  }
  if (failures) std::fprintf(stderr, "%d mismatches\n", failures);
  return failures ? 1 : 0;
}
