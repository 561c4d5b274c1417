// The memory manager (recompute/memory_manager.h) inside the pipeline: each
// stage of a 4-stage tied GPT with dropout runs its own instruction list of a
// schedule (1F1B, GPipe, the shifted critical path, interleaved 1F1B) on its
// StageExecution, with and without stage-aware recomputation, under a budget
// of its own (a share of what it holds unmanaged: early stages hold more
// microbatches in flight, so their budgets cut more), or the smallest it can
// keep where that share is below it (a stage of embeddings alone holds little
// that can be released). Every policy gives the losses and gradients of the
// unmanaged run bit for bit, and the bytes of saved activations held never
// pass the stage's budget.
#include "../support/reference.h"
#include "../support/stage_program_run.h"
#include "trine/frontend/trace.h"
#include "trine/recompute/memory_manager.h"
#include "trine/recompute/memory_model.h"
#include "trine/recompute/recompute_policy.h"
#include "trine/schedules/schedule_registry.h"

#include <gtest/gtest.h>

namespace trine {
namespace {

void expect_same_step(const testing::StageProgramRun& got, const testing::StageProgramRun& expected,
                      const std::string& what) {
  for (size_t mb = 0; mb < expected.losses.size(); ++mb) {
    if (expected.losses[mb].defined()) {
      EXPECT_TRUE(torch::equal(got.losses[mb], expected.losses[mb])) << what;
    }
    ASSERT_EQ(got.input_grads[mb].size(), expected.input_grads[mb].size()) << what;
    for (const auto& [i, g] : expected.input_grads[mb])
      EXPECT_TRUE(torch::equal(got.input_grads[mb].at(i), g)) << what << ": input " << i << " microbatch " << mb;
  }
  ASSERT_EQ(got.param_grads.size(), expected.param_grads.size()) << what;
  for (const auto& [id, g] : expected.param_grads)
    EXPECT_TRUE(torch::equal(got.param_grads.at(id), g)) << what << ": parameter " << id;
}

MemoryManager managed(StageExecution& exec, MemoryBudget budget) {
  std::vector<torch::Tensor> held;
  for (const auto& [id, t] : exec.parameters()) held.push_back(t);
  return MemoryManager(held, budget);
}

TEST(MemoryBudget, EveryScheduleKeepsEachStagesBudgetWithTheSameGradients) {
  ModelSpec spec = testing::small_gpt_spec(/*tied=*/true, /*dropout=*/0.1);
  spec.layers = 4;
  auto model = make_example_model(spec);
  const SampleBatch batch = model.batch(0);
  const TracedModel traced = trace(model.module, model.loss, batch);
  const ProxyGraph proxy = build_proxy_graph(traced);
  const int p = 4, m = 4;
  const auto stages = split_into_stages(traced, proxy, testing::even_stages(static_cast<int>(proxy.layers.size()), p));
  std::vector<std::vector<int>> layers_of_stage;
  for (const auto& s : stages) layers_of_stage.push_back(s.layers);
  PipelineRecomputeInputs in;
  in.proxy = &proxy;
  in.layer_bytes.assign(proxy.layers.size(), 1);
  in.layer_bytes_selective.assign(proxy.layers.size(), 1);
  in.layers_of_stage = layers_of_stage;
  in.microbatches = m;
  struct Budget {
    MemoryPolicy policy;
    double share;  // of what the stage holds unmanaged
  };
  const std::vector<Budget> budgets = {{MemoryPolicy::Combined, 0.5}, {MemoryPolicy::Swap, 0.25},
                                       {MemoryPolicy::Recompute, 0.6}};
  for (const auto& [schedule, v] : std::vector<std::pair<std::string, int>>{
           {"1f1b", 1}, {"gpipe", 1}, {"shifted_critical_path", 1}, {"interleaved_1f1b", 2}}) {
    in.schedule = schedule;
    in.virtual_stages = v;
    std::vector<RecomputeSettings> recomputes(2);
    recomputes[0].policy = "none";
    recomputes[1].policy = "stage_aware";
    recomputes[1].ratio = 0.8;
    for (const RecomputeSettings& recompute : recomputes) {
      if (recompute.policy == "none" && find_schedule(schedule).needs_recompute) continue;
      const auto plan = recompute_for_pipeline(recompute, in);
      for (int s = 0; s < p; ++s) {
        auto stage = [&] {
          auto exec = std::make_unique<StageExecution>(stages[s], traced, proxy);
          exec->checkpoint_layers(plan[s].layer_segments, plan[s].attention_cores);
          return exec;
        };
        const auto program = testing::stage_instructions(schedule, p, m, s, v);
        auto plain = stage();
        const auto expected = testing::run_stage_program(*plain, program, batch, m, true);
        auto watched = stage();
        MemoryManager watcher = managed(*watched, {});
        watched->set_saved_tensor_policy(&watcher);
        const auto watched_run = testing::run_stage_program(*watched, program, batch, m, true);
        const std::string where = schedule + " / " + recompute.policy + ", stage " + std::to_string(s);
        expect_same_step(watched_run, expected, where + " watched");
        for (const Budget& b : budgets) {
          // The smallest budget: what a run at one byte says it needed (with
          // twice as much where tensors are dropped: see test_memory_manager.cpp).
          int64_t smallest = 0;
          {
            auto exec = stage();
            MemoryManager manager = managed(*exec, {1, b.policy});
            exec->set_saved_tensor_policy(&manager);
            expect_same_step(testing::run_stage_program(*exec, program, batch, m, true), expected, where + " at 1 byte");
            smallest = b.policy == MemoryPolicy::Swap ? manager.needed_bytes() : manager.needed_bytes() * 2;
          }
          auto exec = stage();
          MemoryBudget budget{std::max(smallest, static_cast<int64_t>(b.share * watcher.peak_bytes())), b.policy};
          MemoryManager manager = managed(*exec, budget);
          exec->set_saved_tensor_policy(&manager);
          const auto run = testing::run_stage_program(*exec, program, batch, m, true);
          const std::string what = where + ", " + memory_policy_name(b.policy) + " at " +
                                   std::to_string(budget.bytes) + " of " + std::to_string(watcher.peak_bytes());
          expect_same_step(run, expected, what);
          const MemoryCounters c = manager.counters();
          std::printf("%s: peak %lld, swapped %lld, dropped %lld, replays %lld; allocator peak %lld vs %lld\n",
                      what.c_str(), static_cast<long long>(manager.peak_bytes()), static_cast<long long>(c.swapped_out),
                      static_cast<long long>(c.dropped), static_cast<long long>(c.replays),
                      static_cast<long long>(run.peak_bytes), static_cast<long long>(expected.peak_bytes));
          EXPECT_EQ(manager.needed_bytes(), 0) << what;
          EXPECT_LE(manager.peak_bytes(), budget.bytes) << what;
          if (budget.bytes < watcher.peak_bytes()) {
            EXPECT_GT(c.swapped_out + c.dropped, 0) << what;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace trine
