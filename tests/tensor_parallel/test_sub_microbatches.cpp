// Sub-microbatches (tensor_parallel/sub_microbatches.h) in one process: two
// stages, each running every microbatch as two parts (cut from the model
// traced at half the rows, taking turns), give the loss and gradients of the
// stages running it whole: dropout draws the whole microbatch's masks, and
// every part keeps its own residuals (the skip model sends them straight to
// a later stage). Models a part cannot compute are refused.
#include "../support/error_of.h"
#include "../support/reference.h"
#include "trine/examples/example_tasks.h"
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/stage_execution.h"
#include "trine/frontend/trace.h"
#include "trine/tensor_parallel/sub_microbatches.h"

#include <gtest/gtest.h>

namespace trine {
namespace {

SampleBatch first_rows(const SampleBatch& b, int64_t rows) {
  SampleBatch out;
  for (const auto& t : b.inputs) out.inputs.push_back(t.narrow(0, 0, rows));
  for (const auto& t : b.targets) out.targets.push_back(t.narrow(0, 0, rows));
  return out;
}

// The output of `from` that `to` receives as its input `i`.
int output_for(const StageProgram& from, const StageProgram& to, size_t i) {
  for (size_t o = 0; o < from.outputs.size(); ++o)
    if (from.outputs[o].value == to.inputs[i].value) return static_cast<int>(o);
  return -1;
}

struct Run {
  double loss = 0;
  std::map<std::string, torch::Tensor> grads;  // "stage/parameter"
};

// Stage 0 then stage 1 forward, stage 1 then stage 0 backward, on `batch`
// (one microbatch); each stage in parts when `parts` has its programs.
Run run_two_stages(const TracedModel& model, const ProxyGraph& proxy, const std::vector<StageProgram>& stages,
                   const std::vector<std::vector<StageProgram>>& parts, const SampleBatch& batch) {
  StageExecution s0(stages[0], model, proxy), s1(stages[1], model, proxy);
  if (!parts.empty()) {
    s0.split_microbatches({&parts[0][0], &parts[0][1]});
    s1.split_microbatches({&parts[1][0], &parts[1][1]});
  }
  const RngPolicy rng{RngPolicy::Mode::PerOp, 5, 2};
  auto a0 = s0.forward(std::vector<torch::Tensor>(stages[0].inputs.size()), batch, {}, rng);
  std::vector<torch::Tensor> received(stages[1].inputs.size());
  for (size_t i = 0; i < received.size(); ++i)
    if (stages[1].inputs[i].kind == StageInput::Kind::Activation) {
      const torch::Tensor& out = a0.outputs.at(output_for(stages[0], stages[1], i));
      received[i] = out.detach().requires_grad_(out.requires_grad());
    }
  auto a1 = s1.forward(std::move(received), batch, {}, rng);
  Run r;
  r.loss = s1.loss(a1).item<double>();
  std::map<int, torch::Tensor> back;
  for (const auto& [i, g] : s1.backward(std::move(a1), {}, 1.0))
    back[output_for(stages[0], stages[1], static_cast<size_t>(i))] = g;
  s0.backward(std::move(a0), back, 1.0);
  for (const StageExecution* s : {&s0, &s1})
    for (const auto& [id, t] : s->parameters())
      if (t.grad().defined())
        r.grads[std::to_string(s->program().stage) + "/" + proxy.params[id].name] = t.grad().clone();
  return r;
}

void expect_parts_equal_whole(const ModelSpec& spec) {
  ExampleModel m = make_example_model(spec);
  const SampleBatch batch = m.batch(0);
  const int64_t rows = batch.inputs[0].size(0);
  const TracedModel whole = trace(m.module, m.loss, batch);
  const TracedModel half = trace(m.module, m.loss, first_rows(batch, rows / 2));
  check_sub_microbatch_model(whole, half, 2);
  const ProxyGraph proxy = build_proxy_graph(whole), half_proxy = build_proxy_graph(half);
  const auto assignment = testing::even_stages(static_cast<int>(proxy.layers.size()), 2);
  const auto stages = split_into_stages(whole, proxy, assignment);
  std::vector<std::vector<StageProgram>> parts(2);
  for (int h = 0; h < 2; ++h) {
    auto cut = split_into_stages(half, half_proxy, assignment);
    for (int s = 0; s < 2; ++s) {
      make_sub_microbatch_stage(cut[s], stages[s], h, 2);
      parts[s].push_back(std::move(cut[s]));
    }
  }
  const Run expected = run_two_stages(whole, proxy, stages, {}, batch);
  const Run got = run_two_stages(whole, proxy, stages, parts, batch);
  EXPECT_NEAR(got.loss, expected.loss, 1e-6 * std::abs(expected.loss));
  ASSERT_EQ(got.grads.size(), expected.grads.size());
  for (const auto& [name, g] : expected.grads) {
    ASSERT_TRUE(got.grads.count(name)) << name;
    EXPECT_LT(testing::rel_diff(got.grads.at(name), g), 1e-5) << name;
  }
}

TEST(SubMicrobatches, TwoPartsOfEachStageEqualTheWholeMicrobatchWithDropout) {
  ModelSpec spec = testing::small_gpt_spec(false, 0.2);
  spec.batch = 4;
  expect_parts_equal_whole(spec);
}

TEST(SubMicrobatches, EachPartKeepsItsOwnResidualsAcrossStages) {
  ModelSpec spec;
  spec.name = "skip";
  spec.layers = 4;
  spec.hidden = 16;
  spec.batch = 6;
  spec.dropout = 0.1;
  expect_parts_equal_whole(spec);
}

struct NormNetImpl : torch::nn::Module {
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
  NormNetImpl() {
    fc = register_module("fc", torch::nn::Linear(6, 8));
    bn = register_module("bn", torch::nn::BatchNorm1d(8));
  }
  torch::Tensor forward(const torch::Tensor& x) { return bn(fc(x)); }
};
TORCH_MODULE(NormNet);

TEST(SubMicrobatches, BatchNormInTrainingIsRefusedNamingIt) {
  NormNet net;
  const LossFn loss = [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>& t) {
    return torch::nn::functional::cross_entropy(o[0], t[0]);
  };
  const SampleBatch batch{{torch::randn({4, 6})}, {torch::randint(0, 8, {4})}};
  const TracedModel whole = trace(torch::nn::AnyModule(net), loss, batch);
  const TracedModel half = trace(torch::nn::AnyModule(net), loss, first_rows(batch, 2));
  EXPECT_NE(testing::error_of([&] { check_sub_microbatch_model(whole, half, 2); })
                .find("sub-microbatches: the model has a BatchNorm in training mode (bn.weight)"),
            std::string::npos);
}

}  // namespace
}  // namespace trine
