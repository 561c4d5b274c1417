// The stage rewrite (stage_sharding.h) on t ranks simulated by threads: each
// rank traces nothing of its own; it cuts the whole traced model's stage for
// its tp rank, starts from its slice of the same weights, and runs one
// forward and backward. The loss and every gradient (sliced like the
// parameter) equal one process running the whole stage, dropout included
// (the masks are the single-process ones: checked on the dropout op alone).
#include "../support/in_process_group.h"
#include "../support/reference.h"
#include "trine/examples/residual_mlp.h"
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/stage_execution.h"
#include "trine/frontend/trace.h"
#include "trine/tensor_parallel/stage_sharding.h"
#include "trine/tensor_parallel/tensor_parallel_group.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <thread>

namespace trine {
namespace {

struct StageResult {
  double loss = 0;
  std::map<std::string, torch::Tensor> grads;  // by parameter name
};

StageResult run_one_stage(const StageProgram& stage, const TracedModel& model, const ProxyGraph& proxy,
                          const SampleBatch& batch) {
  StageExecution exec(stage, model, proxy);
  const RngPolicy rng{RngPolicy::Mode::PerOp, 11, 3};
  auto acts = exec.forward(std::vector<torch::Tensor>(stage.inputs.size()), batch, {}, rng);
  StageResult r;
  r.loss = exec.loss(acts).item<double>();
  exec.backward(std::move(acts), {}, 1.0);
  for (const auto& [id, t] : exec.parameters())
    if (t.grad().defined()) r.grads[proxy.params[id].name] = t.grad().clone();
  return r;
}

// Whole (one process) against tp ranks, on one stage holding every layer.
void expect_tp_equals_one_process(const TracedModel& traced, const SampleBatch& batch, int tp) {
  const ProxyGraph proxy = build_proxy_graph(traced);
  const std::vector<int> one_stage(proxy.layers.size(), 0);
  auto whole_stages = split_into_stages(traced, proxy, one_stage);
  const StageResult whole = run_one_stage(whole_stages[0], traced, proxy, batch);

  const ShardingAnalysis analysis = analyze_sharding(traced, tp);
  const auto shards = parameter_shards(traced, analysis);
  ASSERT_FALSE(shards.empty()) << sharding_table(analysis);
  testing::InProcessGroup group(tp);
  std::vector<StageResult> results(tp);
  std::vector<std::string> errors(tp);
  std::vector<std::thread> threads;
  for (int r = 0; r < tp; ++r)
    threads.emplace_back([&, r] {
      try {
        torch::set_num_threads(1);
        RegisteredGroup registered({r, tp, [&](torch::Tensor& t) { group.all_reduce(t); }});
        const TracedModel local = with_parameter_shards(traced, shards, r, tp);
        auto stages = split_into_stages(traced, proxy, one_stage);
        shard_stage(stages[0], {&traced, &analysis, &shards, r, tp, registered.id()});
        results[r] = run_one_stage(stages[0], local, proxy, batch);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < tp; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    EXPECT_NEAR(results[r].loss, whole.loss, 1e-6 * std::abs(whole.loss)) << "rank " << r;
    ASSERT_EQ(results[r].grads.size(), whole.grads.size());
    for (const auto& [name, g] : whole.grads) {
      auto it = shards.find(name);
      const torch::Tensor expected = it == shards.end() ? g : shard_of(g, it->second, r, tp);
      ASSERT_TRUE(results[r].grads.count(name)) << name;
      EXPECT_LT(testing::rel_diff(results[r].grads.at(name), expected), 1e-5) << name << " on rank " << r;
    }
  }
}

// An example model (examples/example_tasks.h) on its first batch.
void expect_example_tp_equals_one_process(const ModelSpec& spec, int tp) {
  auto model = make_example_model(spec);
  const SampleBatch batch = model.batch(0);
  expect_tp_equals_one_process(trace(model.module, model.loss, batch), batch, tp);
}

TEST(StageSharding, GptOnTwoRanksEqualsOneProcess) {
  expect_example_tp_equals_one_process(testing::small_gpt_spec(), 2);
}

TEST(StageSharding, TiedGptOnFourRanksEqualsOneProcess) {
  expect_example_tp_equals_one_process(testing::small_gpt_spec(/*tied=*/true), 4);
}

TEST(StageSharding, ResidualMlpOnTwoRanksEqualsOneProcess) {
  torch::manual_seed(5);
  examples::ResidualMlp mlp(12, 32, 2, 5);
  torch::nn::AnyModule module(mlp);
  SampleBatch batch{{torch::randn({6, 12})}, {torch::randint(0, 5, {6})}};
  const LossFn loss = [](const std::vector<torch::Tensor>& out, const std::vector<torch::Tensor>& targets) {
    return torch::nn::functional::cross_entropy(out[0], targets[0]);
  };
  const TracedModel traced = trace(module, loss, batch);
  expect_tp_equals_one_process(traced, batch, 2);
}

// Heads that do not divide by t: attention stays whole, the MLP is cut.
TEST(StageSharding, GptWhoseHeadsDoNotDivideCutsOnlyItsMlp) {
  ModelSpec spec = testing::small_gpt_spec();
  spec.hidden = 48;
  spec.heads = 3;
  expect_example_tp_equals_one_process(spec, 2);
}

// Skip connections add split values to whole ones: the whole operand is cut
// to the rank's piece (and enters the region), both ways round.
TEST(StageSharding, SkipModelOnTwoRanksEqualsOneProcess) {
  ModelSpec spec;
  spec.name = "skip";
  spec.layers = 6;
  spec.hidden = 32;
  spec.batch = 4;
  expect_example_tp_equals_one_process(spec, 2);
}

// Threads share LibTorch's one CPU generator, so ranks simulated by threads
// cannot draw masks at once; the dropout op is checked on its own here (rank
// by rank, each reseeded as the graph runner does) and in whole runs under
// mpirun (tests/runtime/equivalence.cpp).
TEST(StageSharding, DropoutPiecesAreTheWholeValuesMask) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("trine_tp::dropout", "");
  EXPECT_TRUE(op.hasTag(at::Tag::nondeterministic_seeded));
  const auto call = op.typed<at::Tensor(const at::Tensor&, double, bool, at::IntArrayRef, int64_t, int64_t, int64_t,
                                         int64_t, int64_t, int64_t, int64_t)>();
  for (int blocks : {1, 3}) {
    const int tp = 2;
    torch::manual_seed(1);
    const auto x = torch::randn({2, 3, 12});
    torch::manual_seed(42);
    const auto whole = torch::dropout(x, 0.3, true);
    const ParameterShard cut{2, blocks};
    for (int r = 0; r < tp; ++r) {
      torch::manual_seed(42);
      const auto piece = call.call(shard_of(x, cut, r, tp), 0.3, true, {2, 3, 12}, 2, blocks, r, tp, 0, 0, 1);
      EXPECT_TRUE(torch::equal(piece, shard_of(whole, cut, r, tp))) << "rank " << r << ", " << blocks << " blocks";
      // Sub-microbatch h of 2 (its row of dim 0) takes its rows of the same piece.
      for (int h = 0; h < 2; ++h) {
        torch::manual_seed(42);
        const auto part = call.call(shard_of(x, cut, r, tp).narrow(0, h, 1), 0.3, true, {2, 3, 12}, 2, blocks, r, tp,
                                    0, h, 2);
        EXPECT_TRUE(torch::equal(part, shard_of(whole, cut, r, tp).narrow(0, h, 1))) << "rank " << r << ", part " << h;
      }
    }
    torch::manual_seed(42);
    const auto transposed = torch::dropout(x.transpose(0, 1), 0.3, true);  // a non-contiguous input
    const ParameterShard cut_t{2, blocks};
    torch::manual_seed(42);
    const auto piece =
        call.call(shard_of(x, cut, 1, tp).transpose(0, 1), 0.3, true, {3, 2, 12}, 2, blocks, 1, tp, 0, 0, 1);
    EXPECT_TRUE(torch::equal(piece, shard_of(transposed, cut_t, 1, tp)));
  }
}

// The per-shard option: each rank's own stream, reproducible from the same
// seed (recomputation draws it again), different across ranks.
TEST(StageSharding, PerShardDropoutDrawsPerRankAndReproducibly) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("trine_tp::shard_dropout", "");
  EXPECT_TRUE(op.hasTag(at::Tag::nondeterministic_seeded));
  const auto call = op.typed<at::Tensor(const at::Tensor&, double, bool, int64_t)>();
  const auto x = torch::ones({4, 64});
  auto draw = [&](int64_t rank) {
    torch::manual_seed(42);
    return call.call(x, 0.5, true, rank);
  };
  EXPECT_TRUE(torch::equal(draw(0), draw(0)));
  EXPECT_FALSE(torch::equal(draw(0), draw(1)));
  EXPECT_TRUE(torch::equal(call.call(x, 0.5, false, 1), x));
}

}  // namespace
}  // namespace trine
