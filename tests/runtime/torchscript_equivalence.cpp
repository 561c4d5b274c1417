// Multi-process equivalence check of a TorchScript file made by a real library
// (tests/fixtures/export_torchscript_fixtures.py), run by ctest under mpirun:
// trine trains the file with the given layout; every rank also trains the same
// file in one process with plain LibTorch, running the global batch's
// microbatches one after another with gradient accumulation (the order in
// which trine's replicas and microbatches take the rows). Every step's loss,
// and after the last step every parameter and buffer this rank holds, must
// agree within the tolerance. Exits 1 on any rank that disagrees.
#include "../support/memory_watch.h"
#include "../support/reference.h"
#include "trine/runtime/losses.h"
#include "trine/runtime/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/script.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <set>

using namespace trine;

namespace {

struct Args {
  std::string fixtures, name;
  int dp = 1, pp = 1, tp = 1, microbatches = 2, steps = 10;
  int sub_microbatches = 1;  // config.tensor_parallel.sub_microbatches
  std::string schedule = "1f1b";
  int virtual_stages = 1;  // config.virtual_stages (interleaved_1f1b)
  std::string recompute = "none";  // config.recompute.policy of trine's run (the reference keeps everything)
  double tolerance = 1e-5;         // losses, and all of a rank's parameters together
  double tensor_tolerance = 1e-4;  // each parameter and buffer by itself
  double lr = 0.05;
  std::vector<std::string> expect_tied;  // parameters whose holders must be the first and last stage
  int64_t memory_budget = 0;             // config.memory.budget_bytes: saved activations per rank, checked every step
  std::string memory_policy = "combined";  // config.memory.policy
};

struct Fixture {
  std::vector<std::vector<int64_t>> sample_shapes;  // one sample, without the batch dimension
  std::vector<std::string> dtypes;
  std::vector<int64_t> highs;
  std::string loss;
  int64_t classes = 0;
  int64_t microbatch_rows = 0;  // the batch the file was exported at
};

Fixture read_fixture(const std::string& dir, const std::string& name) {
  std::ifstream in(dir + "/manifest.json");
  TORCH_CHECK(in, "no manifest.json in ", dir);
  const auto j = nlohmann::json::parse(in).at(name);
  Fixture f;
  for (const auto& i : j.at("inputs")) {
    auto shape = i.at("shape").get<std::vector<int64_t>>();
    f.microbatch_rows = shape.at(0);
    shape.erase(shape.begin());
    f.sample_shapes.push_back(shape);
    f.dtypes.push_back(i.at("dtype"));
    f.highs.push_back(i.value("high", int64_t{0}));
  }
  f.loss = j.at("loss");
  f.classes = j.at("classes");
  return f;
}

// The global batch of a step: a function of the step alone.
SampleBatch batch_of(const Fixture& f, int64_t rows, int64_t step) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 + static_cast<uint64_t>(step));
  SampleBatch b;
  for (size_t i = 0; i < f.sample_shapes.size(); ++i) {
    std::vector<int64_t> shape{rows};
    shape.insert(shape.end(), f.sample_shapes[i].begin(), f.sample_shapes[i].end());
    b.inputs.push_back(f.dtypes[i] == "int64" ? torch::randint(f.highs[i], shape, gen, torch::kLong)
                                              : torch::randn(shape, gen));
  }
  if (f.loss == "lm_cross_entropy")
    b.targets.push_back(torch::randint(f.classes, {rows, f.sample_shapes[0][0]}, gen, torch::kLong));
  else
    b.targets.push_back(torch::randint(f.classes, {rows}, gen, torch::kLong));
  return b;
}

TrainConfig config_of(const Args& a, int64_t global_batch) {
  TrainConfig c;
  c.parallel.dp = a.dp;
  c.parallel.pp = a.pp;
  c.parallel.tp = a.tp;
  c.tensor_parallel.sub_microbatches = a.sub_microbatches;
  c.global_batch = global_batch;
  c.microbatches = a.microbatches;
  c.schedule = a.schedule;
  c.virtual_stages = a.virtual_stages;
  c.recompute.policy = a.recompute;
  c.memory.bytes = a.memory_budget;
  c.memory.policy = memory_policy_named(a.memory_policy, "--memory-policy");
  // SGD with momentum: Adam divides by the gradient's own size, so parameters
  // whose gradient is zero up to rounding (BERT's key biases) move by noise,
  // and no two summation orders agree on them.
  c.optimizer.name = "sgd";
  c.optimizer.lr = a.lr;
  c.optimizer.momentum = 0.9;
  c.optimizer.weight_decay = 0.01;
  c.optimizer.grad_clip = 1.0;
  c.lr_schedule.warmup_steps = 2;
  c.steps = a.steps;
  c.timeout_s = 120;
  c.log_every = 0;
  return c;
}

// As torch::nn::utils::clip_grad_norm_, but with the norm summed in float64
// as the trainer does: in float32 a ResNet's 11M squares lose ~5e-6 of it.
void clip_by_global_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  double sq = 0;
  for (const auto& p : params)
    if (p.grad().defined()) sq += p.grad().to(torch::kDouble).pow(2).sum().item<double>();
  const double coef = max_norm / (std::sqrt(sq) + 1e-6);
  if (coef < 1)
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(coef);
}

// Plain LibTorch: microbatch after microbatch, gradients accumulated, then
// the same clipping, learning rate and SGD step as the trainer.
std::vector<double> reference_run(torch::jit::Module& ref, const Fixture& f, const LossFn& loss, const TrainConfig& c,
                                  int64_t micro_rows) {
  ref.train();
  // A tied weight is listed under each of its names: step it once.
  std::vector<torch::Tensor> params;
  std::set<const void*> seen;
  for (const auto& p : ref.named_parameters(true))
    if (seen.insert(p.value.unsafeGetTensorImpl()).second) params.push_back(p.value);
  const auto& o = c.optimizer;
  torch::optim::SGD opt(params, torch::optim::SGDOptions(o.lr).momentum(o.momentum).weight_decay(o.weight_decay));
  const int64_t parts = c.global_batch / micro_rows;
  std::vector<double> losses;
  for (int64_t step = 0; step < c.steps; ++step) {
    const SampleBatch batch = batch_of(f, c.global_batch, step);
    opt.zero_grad();
    double total = 0;
    for (int64_t k = 0; k < parts; ++k) {
      std::vector<c10::IValue> in;
      for (const auto& t : batch.inputs) in.emplace_back(t.narrow(0, k * micro_rows, micro_rows));
      auto out = ref.forward(in);
      std::vector<torch::Tensor> outs{out.isTuple() ? out.toTupleRef().elements()[0].toTensor() : out.toTensor()};
      auto l = loss(outs, {batch.targets[0].narrow(0, k * micro_rows, micro_rows)}) / static_cast<double>(parts);
      l.backward();
      total += l.item<double>();
    }
    losses.push_back(total);
    clip_by_global_norm(params, c.optimizer.grad_clip);
    const double lr = learning_rate(c.optimizer, c.lr_schedule, step, c.steps);
    for (auto& g : opt.param_groups()) static_cast<torch::optim::SGDOptions&>(g.options()).lr(lr);
    opt.step();
  }
  return losses;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"trine equivalence check of a TorchScript fixture"};
  app.add_option("--fixtures", a.fixtures)->required();
  app.add_option("--name", a.name)->required();
  app.add_option("--dp", a.dp);
  app.add_option("--pp", a.pp);
  app.add_option("--tp", a.tp);
  app.add_option("--sub-microbatches", a.sub_microbatches);
  app.add_option("--schedule", a.schedule);
  app.add_option("--virtual-stages", a.virtual_stages);
  app.add_option("--recompute", a.recompute);
  app.add_option("--microbatches", a.microbatches);
  app.add_option("--steps", a.steps);
  app.add_option("--tolerance", a.tolerance);
  app.add_option("--tensor-tolerance", a.tensor_tolerance);
  app.add_option("--lr", a.lr);
  app.add_option("--expect-tied", a.expect_tied);
  app.add_option("--memory-budget", a.memory_budget);
  app.add_option("--memory-policy", a.memory_policy);
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(1);
  if (std::getenv("REF_NO_OPT")) torch::jit::setGraphExecutorOptimize(false);
  int failures = 0;
  try {
    const Fixture f = read_fixture(a.fixtures, a.name);
    const std::string file = a.fixtures + "/" + a.name + ".pt";
    const LossFn loss = named_loss(f.loss);
    // The file was exported at one microbatch; the global batch is dp x m of them.
    const int64_t micro_rows = f.microbatch_rows;
    const int64_t global_batch = micro_rows * a.dp * a.microbatches;
    const TrainConfig config = config_of(a, global_batch);
    Trainer trainer(torch::jit::load(file), loss, batch_of(f, global_batch, 0), config);
    torch::jit::Module ref = torch::jit::load(file);
    const std::vector<double> expected = reference_run(ref, f, loss, config, micro_rows);
    double worst_loss = 0, worst_param = 0, worst_buffer = 0;
    testing::MemoryWatch memory{a.memory_budget, a.memory_policy};
    for (int step = 0; step < a.steps; ++step) {
      const double l = trainer.step(batch_of(f, global_batch, step));
      failures += memory.after_step(trainer.last_step_timings(), trainer.rank(), step);
      const double rel = std::abs(l - expected[step]) / std::abs(expected[step]);
      worst_loss = std::max(worst_loss, rel);
      if (rel > a.tolerance) {
        std::fprintf(stderr, "rank %d step %d: loss %.9f, single process %.9f (rel %.2e)\n", trainer.rank(), step, l,
                     expected[step], rel);
        ++failures;
      }
    }
    int compared = 0;
    double diff_sq = 0, norm_sq = 0;  // over all of this rank's parameters
    auto compare = [&](const std::string& name, const torch::Tensor& want, double& worst, bool parameter) {
      const torch::Tensor mine = trainer.parameter(name);
      if (!mine.defined()) return;
      ++compared;
      const auto b = trainer.tensor_parallel_slice(name, want.detach()).to(torch::kDouble);
      const double diff = (mine.cpu().to(torch::kDouble) - b).norm().item<double>(), norm = b.norm().item<double>();
      if (parameter) diff_sq += diff * diff, norm_sq += norm * norm;
      // Relative to the reference, with a floor of 1e-4 per element: a
      // parameter whose gradient is zero up to rounding (BERT's key biases)
      // stays within rounding of zero, where relative differences mean nothing.
      const double rel = diff / std::max(norm, 1e-4 * std::sqrt(static_cast<double>(b.numel())));
      worst = std::max(worst, rel);
      if (rel > a.tensor_tolerance) {
        std::fprintf(stderr, "rank %d: %s differs after %d steps (rel %.2e)\n", trainer.rank(), name.c_str(), a.steps,
                     rel);
        ++failures;
      }
    };
    for (const auto& p : ref.named_parameters(true)) compare(p.name, p.value, worst_param, true);
    for (const auto& b : ref.named_buffers(true)) compare(b.name, b.value, worst_buffer, false);
    const double all_params = norm_sq > 0 ? std::sqrt(diff_sq / norm_sq) : std::sqrt(diff_sq);
    if (all_params > a.tolerance) {
      std::fprintf(stderr, "rank %d: its parameters differ after %d steps (rel %.2e)\n", trainer.rank(), a.steps,
                   all_params);
      ++failures;
    }
    for (const auto& name : a.expect_tied) {
      const bool held = trainer.parameter(name).defined();
      const bool edge = trainer.stage() == 0 || trainer.stage() == a.pp - 1;
      if (held != edge) {
        std::fprintf(stderr, "rank %d (stage %d): tied parameter %s is %sheld here\n", trainer.rank(), trainer.stage(),
                     name.c_str(), held ? "" : "not ");
        ++failures;
      }
    }
    std::printf("rank %d (stage %d, replica %d, tp rank %d) %s dp=%d pp=%d tp=%d %s m=%d: %d steps, %d tensors compared, worst loss rel "
                "%.2e, all parameters rel %.2e, worst parameter rel %.2e, worst buffer rel %.2e, loss %.6f -> %.6f\n",
                trainer.rank(), trainer.stage(), trainer.replica(), trainer.tensor_parallel_rank(), a.name.c_str(), a.dp,
                a.pp, a.tp, a.schedule.c_str(),
                a.microbatches, a.steps, compared, worst_loss, all_params, worst_param, worst_buffer, expected.front(),
                expected.back());
    memory.print(trainer.rank());
  } catch (const c10::Error& e) {
    // One write per line: ranks share stderr, and pieces written apart interleave.
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  }
  if (failures) std::fprintf(stderr, "%d mismatches\n", failures);
  return failures ? 1 : 0;
}
