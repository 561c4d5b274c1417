// Memory-manager benchmark (issue 14, point 5; benchmarks/bench_memory.sh
// runs it): one process, one stage holding the whole model (trine's graph of
// the example GPT, or the ResNet-18 TorchScript fixture), m microbatches in
// flight (all forwards, then all backwards, as GPipe holds them), with the
// saved activations under recompute/memory_manager.h.
//
//   --phase overhead: P = the most bytes of saved activations a step holds
//       unmanaged; then, for each policy and each budget (a fraction of P),
//       the peak held (never above the budget, or the budget is reported
//       infeasible with what it needed) and the step time against the
//       unmanaged step, all runs' steps interleaved (ratios within one run);
//       the policies that swap also without prefetching.
//   --phase largest: the budget fixed at P for m0 microbatches; the most
//       microbatches in flight that keep it, unmanaged and under each policy.
//
// Prints one JSON line per measurement (prefixed "json: ").
#include "bench_timing.h"

#include "trine/examples/example_tasks.h"
#include "trine/frontend/allocation_counter.h"
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/stage_execution.h"
#include "trine/frontend/trace.h"
#include "trine/recompute/memory_manager.h"
#include "trine/runtime/losses.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/script.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>

using namespace trine;

namespace {

struct Args {
  std::string model = "gpt";  // gpt | resnet18
  std::string fixtures;       // resnet18: the directory of tests/fixtures (ctest -R fixtures.export)
  std::string phase = "overhead";
  int64_t rows = 4;           // per microbatch
  int microbatches = 4;       // in flight (overhead); m0 (largest)
  int steps = 5;
  int max_microbatches = 32;  // largest: where the search stops
  std::vector<double> fractions{0.75, 0.5, 0.3, 0.2};
};

// The model traced at one microbatch, cut as one stage, and its batches.
struct Workload {
  std::optional<ExampleModel> example;
  TracedModel traced;
  ProxyGraph proxy;
  std::vector<StageProgram> stages;
  std::function<SampleBatch(int m)> batch;  // m microbatches of `rows`
};

std::unique_ptr<Workload> gpt_workload(const Args& a) {
  auto w = std::make_unique<Workload>();
  ModelSpec s;
  s.layers = 4;
  s.hidden = 128;
  s.heads = 4;
  s.seq_len = 64;
  s.vocab = 256;
  s.dropout = 0.1;
  s.batch = a.rows;
  w->example = make_example_model(s);
  w->traced = trace(w->example->module, w->example->loss, w->example->batch(0));
  ExampleModel* model = &*w->example;
  w->batch = [model](int m) {
    SampleBatch all = model->batch(0);
    for (int k = 1; k < m; ++k) {
      const SampleBatch next = model->batch(k);
      for (size_t i = 0; i < all.inputs.size(); ++i) all.inputs[i] = torch::cat({all.inputs[i], next.inputs[i]});
      for (size_t i = 0; i < all.targets.size(); ++i) all.targets[i] = torch::cat({all.targets[i], next.targets[i]});
    }
    return all;
  };
  return w;
}

std::unique_ptr<Workload> resnet_workload(const Args& a) {
  TORCH_CHECK(!a.fixtures.empty(), "--model resnet18 needs --fixtures (the build's tests/fixtures: ctest -R fixtures.export)");
  std::ifstream in(a.fixtures + "/manifest.json");
  TORCH_CHECK(in, "no manifest.json in ", a.fixtures, "; run ctest -R fixtures.export in the build directory");
  const auto j = nlohmann::json::parse(in).at("resnet18_train");
  auto shape = j.at("inputs").at(0).at("shape").get<std::vector<int64_t>>();
  const int64_t classes = j.at("classes");
  auto w = std::make_unique<Workload>();
  const int64_t rows = a.rows;
  w->batch = [shape, classes, rows](int m) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1000);
    std::vector<int64_t> s = shape;
    s[0] = rows * m;
    return SampleBatch{{torch::randn(s, gen)}, {torch::randint(classes, {rows * m}, gen, torch::kLong)}};
  };
  w->traced = trace(torch::jit::load(a.fixtures + "/resnet18_train.pt"), named_loss("cross_entropy"), w->batch(1));
  return w;
}

// The whole model as one stage under a memory budget (none: unmanaged).
class Run {
 public:
  Run(const Workload& w, int m, std::optional<MemoryBudget> budget) : w_(w), m_(m), batch_(w.batch(m)) {
    exec_ = std::make_unique<StageExecution>(w.stages[0], w.traced, w.proxy);
    if (budget) {
      std::vector<torch::Tensor> held;
      for (const auto& [id, t] : exec_->parameters()) held.push_back(t);
      manager_ = std::make_unique<MemoryManager>(held, *budget);
      exec_->set_saved_tensor_policy(manager_.get());
    }
  }

  // One step: every forward, then every backward (last first). Seconds.
  double step() {
    if (manager_) manager_->reset_peak();
    return bench::seconds([&] {
      std::vector<StageActivations> live;
      for (int mb = 0; mb < m_; ++mb)
        live.push_back(exec_->forward(std::vector<torch::Tensor>(w_.stages[0].inputs.size()), batch_, {mb, m_},
                                      RngPolicy{RngPolicy::Mode::PerOp, 1, mb}));
      for (int mb = m_ - 1; mb >= 0; --mb) exec_->backward(std::move(live[mb]), {}, 1.0 / m_);
      for (const auto& [id, t] : exec_->parameters())
        if (t.grad().defined()) t.grad().zero_();
    });
  }
  // The most bytes the allocator holds during one step, above what it held before.
  int64_t allocator_peak() {
    auto counter = std::make_shared<AllocationCounter>();
    AllocationCounting counting(counter);
    step();
    return counter->peak();
  }
  const MemoryManager* manager() const { return manager_.get(); }

 private:
  const Workload& w_;
  int m_;
  SampleBatch batch_;
  std::unique_ptr<MemoryManager> manager_;  // outlives exec_ (members go in reverse)
  std::unique_ptr<StageExecution> exec_;
};

MemoryBudget watching() { return {std::numeric_limits<int64_t>::max() / 4, MemoryPolicy::Swap}; }

// The most bytes of saved activations a step with m microbatches holds unmanaged.
int64_t unmanaged_peak(const Workload& w, int m) {
  Run run(w, m, watching());
  run.step();
  return run.manager()->peak_bytes();
}

nlohmann::json common(const Args& a, const Workload& w) {
  return {{"model", a.model}, {"rows", a.rows}, {"params", static_cast<int64_t>(w.proxy.params.size())}};
}

void overhead_phase(const Args& a, const Workload& w) {
  const int64_t peak = unmanaged_peak(w, a.microbatches);
  struct Case {
    std::string policy;
    double fraction;
    int prefetch;
    std::unique_ptr<Run> run;
    std::vector<double> times;
  };
  std::vector<Case> cases;
  cases.push_back({"none", 1.0, 0, std::make_unique<Run>(w, a.microbatches, std::nullopt), {}});
  for (double f : a.fractions)
    for (const std::string& name : memory_policy_names()) {
      MemoryBudget budget{static_cast<int64_t>(f * peak), memory_policy_named(name)};
      cases.push_back({name, f, budget.prefetch, std::make_unique<Run>(w, a.microbatches, budget), {}});
      if (budget.policy == MemoryPolicy::Recompute) continue;
      budget.prefetch = 0;
      cases.push_back({name, f, 0, std::make_unique<Run>(w, a.microbatches, budget), {}});
    }
  for (auto& c : cases) c.run->step();  // warm-up: gradients allocated, the director's record taken
  for (int s = 0; s < a.steps; ++s)
    for (auto& c : cases) c.times.push_back(c.run->step());
  const double base = bench::median(cases[0].times);
  for (auto& c : cases) {
    nlohmann::json j = common(a, w);
    j["phase"] = "overhead";
    j["microbatches"] = a.microbatches;
    j["policy"] = c.policy;
    j["fraction"] = c.fraction;
    j["prefetch"] = c.prefetch;
    j["unmanaged_peak_bytes"] = peak;
    j["step_s"] = bench::median(c.times);
    j["overhead"] = bench::median(c.times) / base;
    j["allocator_peak_bytes"] = c.run->allocator_peak();
    if (const MemoryManager* mm = c.run->manager()) {
      const MemoryCounters k = mm->counters();
      j["budget_bytes"] = mm->budget().bytes;
      j["peak_bytes"] = mm->peak_bytes();
      j["needed_bytes"] = mm->needed_bytes();
      j["swapped_out"] = k.swapped_out;
      j["swapped_out_bytes"] = k.swapped_out_bytes;
      j["prefetched"] = k.prefetched;
      j["dropped"] = k.dropped;
      j["dropped_bytes"] = k.dropped_bytes;
      j["replays"] = k.replays;
      j["swap_s"] = k.swap_s;
      j["replay_s"] = k.replay_s;
    } else {
      j["budget_bytes"] = 0;
      j["peak_bytes"] = peak;
      j["needed_bytes"] = 0;
    }
    std::cout << "json: " << j.dump() << std::endl;
  }
}

// The most microbatches in flight (from m0, at most max_m) whose step keeps
// `budget` (unmanaged: whose saved activations fit `plain_budget`); found by
// doubling, then halving the gap (what a step needs grows with m).
int largest_fitting(const Workload& w, int m0, int max_m, std::optional<MemoryBudget> budget, int64_t plain_budget) {
  auto fits = [&](int m) {
    if (!budget) return unmanaged_peak(w, m) <= plain_budget;
    Run run(w, m, budget);
    run.step();
    return run.manager()->needed_bytes() == 0;
  };
  if (!fits(m0)) return 0;
  int good = m0, bad = max_m + 1;
  while (good < max_m) {
    const int next = std::min(2 * good, max_m);
    if (!fits(next)) {
      bad = next;
      break;
    }
    good = next;
  }
  while (bad - good > 1) {
    const int mid = (good + bad) / 2;
    (fits(mid) ? good : bad) = mid;
  }
  return good;
}

void largest_phase(const Args& a, const Workload& w) {
  const int m0 = a.microbatches;
  const int64_t budget = unmanaged_peak(w, m0);
  nlohmann::json j = common(a, w);
  j["phase"] = "largest";
  j["budget_bytes"] = budget;
  j["m0"] = m0;
  j["max_microbatches"] = a.max_microbatches;
  j["unmanaged"] = largest_fitting(w, 1, a.max_microbatches, std::nullopt, budget);
  for (const std::string& name : memory_policy_names()) {
    const int m = largest_fitting(w, m0, a.max_microbatches, MemoryBudget{budget, memory_policy_named(name)}, 0);
    j[name] = m;
    std::fprintf(stderr, "%s: %s keeps %lld bytes up to %d microbatches\n", a.model.c_str(), name.c_str(),
                 static_cast<long long>(budget), m);
  }
  std::cout << "json: " << j.dump() << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"trine memory-manager benchmark"};
  app.add_option("--model", a.model)->check(CLI::IsMember({"gpt", "resnet18"}));
  app.add_option("--fixtures", a.fixtures);
  app.add_option("--phase", a.phase)->check(CLI::IsMember({"overhead", "largest"}));
  app.add_option("--rows", a.rows);
  app.add_option("--microbatches", a.microbatches);
  app.add_option("--steps", a.steps);
  app.add_option("--max-microbatches", a.max_microbatches);
  app.add_option("--fractions", a.fractions)->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(1);
  try {
    auto w = a.model == "gpt" ? gpt_workload(a) : resnet_workload(a);
    w->proxy = build_proxy_graph(w->traced);
    w->stages = split_into_stages(w->traced, w->proxy, std::vector<int>(w->proxy.layers.size(), 0));
    if (a.phase == "overhead")
      overhead_phase(a, *w);
    else
      largest_phase(a, *w);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  }
  return 0;
}
