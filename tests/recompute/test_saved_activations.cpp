// The ledger of saved activations (recompute/saved_activations.h) watching a
// stage as it runs (StageExecution::set_saved_tensor_policy): each stage of
// a 2-stage tied GPT with dropout gives bit-equal losses and gradients with
// it, parameters are not counted, the bytes held fall back to zero once the
// backward has freed the graph, and what it counts after a forward is what
// the allocator says the forward kept (the same tensors, seen from autograd).
#include "../support/reference.h"
#include "trine/examples/example_tasks.h"
#include "trine/frontend/allocation_counter.h"
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/stage_execution.h"
#include "trine/frontend/trace.h"
#include "trine/recompute/saved_activations.h"

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

TEST(SavedActivations, TheLedgerWatchesEveryStageWithoutChangingItsGradients) {
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
  std::vector<std::unique_ptr<SavedActivationLedger>> ledgers;
  for (auto& s : watched) {
    std::vector<torch::Tensor> held;
    for (const auto& [id, t] : s->parameters()) held.push_back(t);
    ledgers.push_back(std::make_unique<SavedActivationLedger>(held));
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
  SavedActivationLedger& ledger = *ledgers[0];
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

}  // namespace
}  // namespace trine
