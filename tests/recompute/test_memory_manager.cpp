// The memory manager (recompute/memory_manager.h) on the stages of a 2-stage
// tied GPT with dropout (StageExecution::set_saved_tensor_policy). Watching
// (no budget): losses and gradients bit-equal, parameters not counted, the
// bytes held fall back to zero once the backward has freed the graph, and
// what it counts after a forward is what the allocator says the forward kept.
// Under budgets down to the smallest, for every policy: still bit-equal, the
// bytes held never above the budget, and tensors really swapped or dropped
// and made again; a budget below the smallest is reported with the smallest.
#include "../support/reference.h"
#include "trine/examples/example_tasks.h"
#include "trine/frontend/allocation_counter.h"
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/stage_execution.h"
#include "trine/frontend/trace.h"
#include "trine/recompute/memory_manager.h"

#include <gtest/gtest.h>

namespace trine {
namespace {

struct StageRun {
  torch::Tensor loss;
  std::map<int, torch::Tensor> input_grads, param_grads;
};

// One microbatch through stage 0 then stage 1 and back, each on its own execution.
std::vector<StageRun> run(std::vector<std::unique_ptr<StageExecution>>& stages, const SampleBatch& batch) {
  const RngPolicy rng{RngPolicy::Mode::PerOp, 3, 1};
  const StageProgram &first = stages[0]->program(), &second = stages[1]->program();
  auto a0 = stages[0]->forward(std::vector<torch::Tensor>(first.inputs.size()), batch, {}, rng);
  std::vector<torch::Tensor> received(second.inputs.size());
  std::map<int, int> output_of_input;
  for (size_t i = 0; i < second.inputs.size(); ++i)
    for (size_t o = 0; o < first.outputs.size(); ++o)
      if (second.inputs[i].kind == StageInput::Kind::Activation && first.outputs[o].value == second.inputs[i].value) {
        received[i] = a0.outputs[o].detach().requires_grad_(a0.outputs[o].requires_grad());
        output_of_input[static_cast<int>(i)] = static_cast<int>(o);
      }
  auto a1 = stages[1]->forward(std::move(received), batch, {}, rng);
  std::vector<StageRun> out(2);
  out[1].loss = stages[1]->loss(a1).detach();
  out[1].input_grads = stages[1]->backward(std::move(a1), {}, 1.0);
  std::map<int, torch::Tensor> back;
  for (const auto& [i, g] : out[1].input_grads) back[output_of_input.at(i)] = g;
  out[0].input_grads = stages[0]->backward(std::move(a0), back, 1.0);
  for (int s = 0; s < 2; ++s)
    for (const auto& [id, t] : stages[s]->parameters())
      if (t.grad().defined()) out[s].param_grads[id] = t.grad().clone();
  return out;
}

TEST(MemoryManager, WatchingEveryStageChangesNoGradient) {
  ExampleModel m = make_example_model(testing::small_gpt_spec(true, 0.1));
  const SampleBatch batch = m.batch(0);
  const TracedModel traced = trace(m.module, m.loss, batch);
  const ProxyGraph proxy = build_proxy_graph(traced);
  const auto programs = split_into_stages(traced, proxy, testing::even_stages(static_cast<int>(proxy.layers.size()), 2));
  auto make = [&] {
    std::vector<std::unique_ptr<StageExecution>> s;
    for (const auto& p : programs) s.push_back(std::make_unique<StageExecution>(p, traced, proxy));
    return s;
  };
  auto plain = make(), watched = make();
  std::vector<std::unique_ptr<MemoryManager>> ledgers;
  for (auto& s : watched) {
    std::vector<torch::Tensor> held;
    for (const auto& [id, t] : s->parameters()) held.push_back(t);
    ledgers.push_back(std::make_unique<MemoryManager>(held));
    s->set_saved_tensor_policy(ledgers.back().get());
  }
  const auto expected = run(plain, batch), got = run(watched, batch);
  EXPECT_TRUE(torch::equal(got[1].loss, expected[1].loss));
  for (int s = 0; s < 2; ++s) {
    ASSERT_EQ(got[s].param_grads.size(), expected[s].param_grads.size());
    for (const auto& [id, g] : expected[s].param_grads)
      EXPECT_TRUE(torch::equal(got[s].param_grads.at(id), g)) << proxy.params[id].name;
    for (const auto& [i, g] : expected[s].input_grads) EXPECT_TRUE(torch::equal(got[s].input_grads.at(i), g));
    EXPECT_GT(ledgers[s]->tensors_packed(), 10) << "stage " << s;
    EXPECT_GT(ledgers[s]->peak_bytes(), 0) << "stage " << s;
    EXPECT_EQ(ledgers[s]->held_bytes(), 0) << "stage " << s;  // the backward freed every saved activation
  }

  // After a forward, the ledger holds what the allocator says the forward
  // kept, less what the stage returns (outputs are the next stage's) and
  // plus the received activation that the first op saved (allocated before).
  auto& stage = *watched[0];
  MemoryManager& ledger = *ledgers[0];
  ledger.reset_peak();
  auto counter = std::make_shared<AllocationCounter>();
  StageActivations acts;
  {
    AllocationCounting counting(counter);
    acts = stage.forward(std::vector<torch::Tensor>(stage.program().inputs.size()), batch, {},
                         {RngPolicy::Mode::PerOp, 3, 1});
  }
  int64_t outputs = 0;
  for (const auto& o : acts.outputs) outputs += o.storage().nbytes();
  std::printf("stage 0 after a forward: ledger %lld bytes, allocator %lld bytes live (outputs %lld)\n",
              static_cast<long long>(ledger.held_bytes()), static_cast<long long>(counter->live()),
              static_cast<long long>(outputs));
  EXPECT_EQ(ledger.held_bytes(), ledger.peak_bytes());
  const int64_t kept = counter->live() - outputs;  // 45440 here; the ledger adds the ids (128) the embedding saved
  EXPECT_NEAR(static_cast<double>(ledger.held_bytes()), static_cast<double>(kept), 0.02 * static_cast<double>(kept));
}


// m microbatches forward through both stages, then backward, last first (all
// m in flight at once, as GPipe holds them).
struct StepResult {
  std::vector<torch::Tensor> losses;
  std::vector<std::map<int, torch::Tensor>> param_grads;  // per stage
};

StepResult run_all_in_flight(std::vector<std::unique_ptr<StageExecution>>& stages, const SampleBatch& batch, int m) {
  const StageProgram &first = stages[0]->program(), &second = stages[1]->program();
  std::vector<StageActivations> a0(m), a1(m);
  std::vector<std::map<int, int>> output_of_input(m);
  StepResult out;
  for (int mb = 0; mb < m; ++mb) {
    const RngPolicy rng{RngPolicy::Mode::PerOp, 3, mb};
    a0[mb] = stages[0]->forward(std::vector<torch::Tensor>(first.inputs.size()), batch, {mb, m}, rng);
    std::vector<torch::Tensor> received(second.inputs.size());
    for (size_t i = 0; i < second.inputs.size(); ++i)
      for (size_t o = 0; o < first.outputs.size(); ++o)
        if (second.inputs[i].kind == StageInput::Kind::Activation &&
            first.outputs[o].value == second.inputs[i].value) {
          received[i] = a0[mb].outputs[o].detach().requires_grad_(a0[mb].outputs[o].requires_grad());
          output_of_input[mb][static_cast<int>(i)] = static_cast<int>(o);
        }
    a1[mb] = stages[1]->forward(std::move(received), batch, {mb, m}, rng);
    out.losses.push_back(stages[1]->loss(a1[mb]).detach());
  }
  for (int mb = m - 1; mb >= 0; --mb) {
    const auto grads = stages[1]->backward(std::move(a1[mb]), {}, 1.0 / m);
    std::map<int, torch::Tensor> back;
    for (const auto& [i, g] : grads) back[output_of_input[mb].at(i)] = g;
    stages[0]->backward(std::move(a0[mb]), back, 1.0 / m);
  }
  out.param_grads.resize(2);
  for (int s = 0; s < 2; ++s)
    for (const auto& [id, t] : stages[s]->parameters())
      if (t.grad().defined()) out.param_grads[s][id] = t.grad().clone();
  return out;
}

// m microbatches of the model's sample batch's size, one after another.
SampleBatch batches(const ExampleModel& model, int m) {
  SampleBatch all = model.batch(0);
  for (int k = 1; k < m; ++k) {
    const SampleBatch next = model.batch(k);
    for (size_t i = 0; i < all.inputs.size(); ++i) all.inputs[i] = torch::cat({all.inputs[i], next.inputs[i]});
    for (size_t i = 0; i < all.targets.size(); ++i) all.targets[i] = torch::cat({all.targets[i], next.targets[i]});
  }
  return all;
}

struct Gpt {
  static constexpr int kMicrobatches = 3;
  ExampleModel model = make_example_model(testing::small_gpt_spec(true, 0.1));
  SampleBatch batch = batches(model, kMicrobatches);
  TracedModel traced = trace(model.module, model.loss, model.batch(0));
  ProxyGraph proxy = build_proxy_graph(traced);
  std::vector<StageProgram> programs =
      split_into_stages(traced, proxy, testing::even_stages(static_cast<int>(proxy.layers.size()), 2));

  std::vector<std::unique_ptr<StageExecution>> stages() const {
    std::vector<std::unique_ptr<StageExecution>> s;
    for (const auto& p : programs) s.push_back(std::make_unique<StageExecution>(p, traced, proxy));
    return s;
  }
};

std::vector<std::unique_ptr<MemoryManager>> manage(std::vector<std::unique_ptr<StageExecution>>& stages,
                                                   const std::vector<MemoryBudget>& budgets) {
  std::vector<std::unique_ptr<MemoryManager>> managers;
  for (size_t s = 0; s < stages.size(); ++s) {
    std::vector<torch::Tensor> held;
    for (const auto& [id, t] : stages[s]->parameters()) held.push_back(t);
    managers.push_back(std::make_unique<MemoryManager>(held, budgets[s]));
    stages[s]->set_saved_tensor_policy(managers.back().get());
  }
  return managers;
}

void expect_equal_runs(const StepResult& got, const StepResult& expected, const std::string& what) {
  ASSERT_EQ(got.losses.size(), expected.losses.size());
  for (size_t mb = 0; mb < got.losses.size(); ++mb)
    EXPECT_TRUE(torch::equal(got.losses[mb], expected.losses[mb])) << what << ": loss of microbatch " << mb;
  for (size_t s = 0; s < got.param_grads.size(); ++s) {
    ASSERT_EQ(got.param_grads[s].size(), expected.param_grads[s].size()) << what;
    for (const auto& [id, g] : expected.param_grads[s])
      EXPECT_TRUE(torch::equal(got.param_grads[s].at(id), g)) << what << ": gradient of parameter " << id;
  }
}

TEST(MemoryManager, EveryPolicyUnderBudgetsDownToTheSmallestGivesTheSameGradients) {
  const Gpt gpt;
  const int m = Gpt::kMicrobatches;
  auto plain = gpt.stages();
  const StepResult expected = run_all_in_flight(plain, gpt.batch, m);
  auto watched = gpt.stages();
  auto watchers = manage(watched, {MemoryBudget{}, MemoryBudget{}});
  expect_equal_runs(run_all_in_flight(watched, gpt.batch, m), expected, "watching");
  for (const std::string& name : memory_policy_names()) {
    const MemoryPolicy policy = memory_policy_named(name);
    // A budget of one byte cannot be kept: the manager says the smallest
    // that would have been. Swapping alone needs exactly that again; where
    // tensors are dropped, what a run needs near it varies with the timings
    // the director weighs (a tensor dropped in one run and swapped in the
    // next needs its unit's inputs back to be made again: up to 21% more
    // seen alone, 60% with the whole suite running beside it), so those get
    // twice as much.
    std::vector<int64_t> smallest;
    {
      auto stages = gpt.stages();
      auto managers = manage(stages, {MemoryBudget{1, policy}, MemoryBudget{1, policy}});
      expect_equal_runs(run_all_in_flight(stages, gpt.batch, m), expected, name + " at 1 byte");
      for (int s = 0; s < 2; ++s) {
        const int64_t needed = managers[s]->needed_bytes();
        EXPECT_GT(needed, 1) << name;
        EXPECT_LT(needed, watchers[s]->peak_bytes() / 4) << name << " stage " << s;
        smallest.push_back(policy == MemoryPolicy::Swap ? needed : needed * 2);
      }
    }
    for (double fraction : {0.5, 0.0}) {
      std::vector<MemoryBudget> budgets(2);
      for (int s = 0; s < 2; ++s) {
        budgets[s].policy = policy;
        budgets[s].bytes = std::max(smallest[s], static_cast<int64_t>(fraction * watchers[s]->peak_bytes()));
      }
      auto stages = gpt.stages();
      auto managers = manage(stages, budgets);
      const std::string what = name + " at " + std::to_string(budgets[0].bytes) + "/" + std::to_string(budgets[1].bytes);
      expect_equal_runs(run_all_in_flight(stages, gpt.batch, m), expected, what);
      for (int s = 0; s < 2; ++s) {
        const MemoryCounters c = managers[s]->counters();
        std::printf("%s stage %d: budget %lld (watching peak %lld), peak %lld, needed %lld; swapped %lld (%lld B) "
                    "back %lld prefetched %lld, dropped %lld (%lld B), replays %lld\n",
                    what.c_str(), s, static_cast<long long>(budgets[s].bytes),
                    static_cast<long long>(watchers[s]->peak_bytes()), static_cast<long long>(managers[s]->peak_bytes()),
                    static_cast<long long>(managers[s]->needed_bytes()), static_cast<long long>(c.swapped_out),
                    static_cast<long long>(c.swapped_out_bytes), static_cast<long long>(c.swapped_in),
                    static_cast<long long>(c.prefetched), static_cast<long long>(c.dropped),
                    static_cast<long long>(c.dropped_bytes), static_cast<long long>(c.replays));
        EXPECT_EQ(managers[s]->needed_bytes(), 0) << what << " stage " << s;
        EXPECT_LE(managers[s]->peak_bytes(), budgets[s].bytes) << what << " stage " << s;
        EXPECT_EQ(managers[s]->held_bytes(), 0) << what << " stage " << s;
        EXPECT_EQ(managers[s]->host_bytes(), 0) << what << " stage " << s;
        if (policy == MemoryPolicy::Swap) {
          EXPECT_GT(c.swapped_out, 0) << what;
        } else if (policy == MemoryPolicy::Recompute) {
          EXPECT_GT(c.replays, 0) << what;
        } else {
          EXPECT_GT(c.dropped + c.swapped_out, 0) << what;
        }
      }
    }
  }
}

struct NormNetImpl : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
  NormNetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(6, 16));
    bn = register_module("bn", torch::nn::BatchNorm1d(16));
    fc2 = register_module("fc2", torch::nn::Linear(16, 16));
    fc3 = register_module("fc3", torch::nn::Linear(16, 3));
  }
  // An in-place ReLU on the BatchNorm's output, as torchvision's ResNet has.
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = bn(fc1(x));
    return fc3(torch::tanh(fc2(h.relu_())));
  }
};
TORCH_MODULE(NormNet);

// Dropped tensors of layers with BatchNorm are made again by rerunning their
// unit from a copy of the statistics: gradients and statistics bit-equal to
// the unmanaged run, the statistics updated once per microbatch.
TEST(MemoryManager, DroppingBatchNormLayersUpdatesTheirStatisticsOnce) {
  torch::manual_seed(3);
  NormNet net;
  LossFn loss = [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>& t) {
    return torch::nn::functional::cross_entropy(o[0], t[0]);
  };
  const int m = 3;
  const SampleBatch sample{{torch::randn({5, 6})}, {torch::randint(0, 3, {5})}};
  const SampleBatch batch{{torch::randn({5 * m, 6})}, {torch::randint(0, 3, {5 * m})}};
  const TracedModel traced = trace(torch::nn::AnyModule(net), loss, sample);
  const ProxyGraph proxy = build_proxy_graph(traced);
  const auto programs = split_into_stages(traced, proxy, std::vector<int>(proxy.layers.size(), 0));
  auto step = [&](StageExecution& exec) {
    std::vector<StageActivations> live;
    for (int mb = 0; mb < m; ++mb)
      live.push_back(exec.forward(std::vector<torch::Tensor>(programs[0].inputs.size()), batch, {mb, m},
                                  RngPolicy{RngPolicy::Mode::PerOp, 1, mb}));
    for (int mb = m - 1; mb >= 0; --mb) exec.backward(std::move(live[mb]), {}, 1.0 / m);
  };
  StageExecution plain(programs[0], traced, proxy), managed(programs[0], traced, proxy);
  std::vector<torch::Tensor> held;
  for (const auto& [id, t] : managed.parameters()) held.push_back(t);
  MemoryManager manager(held, {1, MemoryPolicy::Recompute});
  managed.set_saved_tensor_policy(&manager);
  step(plain);
  step(managed);
  EXPECT_GT(manager.counters().replays, 0);
  EXPECT_GT(manager.needed_bytes(), 0);  // one byte cannot be kept, but the run is exact all the same
  for (const auto& [id, t] : plain.parameters()) {
    const torch::Tensor& mine = managed.parameters().at(id);
    EXPECT_TRUE(torch::equal(mine, t)) << proxy.params[id].name;  // running statistics included
    if (t.requires_grad()) {
      EXPECT_TRUE(torch::equal(mine.grad(), t.grad())) << proxy.params[id].name;
    }
    if (proxy.params[id].name == "bn.num_batches_tracked") {
      EXPECT_EQ(mine.item<int64_t>(), m);
    }
  }
}
}  // namespace
}  // namespace trine
