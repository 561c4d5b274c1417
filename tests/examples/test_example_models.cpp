// The example models and the synthetic data.
#include "../support/reference.h"
#include "trine/examples/synthetic_data.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace trine;

TEST(ExampleModels, OutputsHaveTheDocumentedShapes) {
  ModelSpec s;
  s.seq_len = 16;
  s.vocab = 100;
  s.batch = 3;
  auto gpt = make_example_model(s);
  auto b = gpt.batch(0);
  EXPECT_EQ(gpt.module.forward(b.inputs[0]).sizes(), (std::vector<int64_t>{3, 16, 100}));
  s.name = "branch";
  auto br = make_example_model(s);
  auto bb = br.batch(0);
  auto out = br.module.any_forward(bb.inputs[0], bb.inputs[1]).get<std::tuple<torch::Tensor, torch::Tensor>>();
  EXPECT_EQ(std::get<0>(out).sizes(), (std::vector<int64_t>{3, 6}));
  EXPECT_EQ(std::get<1>(out).sizes(), (std::vector<int64_t>{3, 4}));
}

TEST(ExampleModels, UntrainedGptLossIsNearLogVocab) {
  ModelSpec s;
  s.vocab = 128;
  auto m = make_example_model(s);
  const double loss = trine::testing::eager_step(m, m.batch(0)).loss;
  EXPECT_NEAR(loss, std::log(128.0), 0.3);
}

TEST(SyntheticData, TokenBatchesAreDeterministicAndFollowTheRule) {
  auto [x1, y1] = trine::examples::token_batch(50, 12, 4, 9, 3);
  auto [x2, y2] = trine::examples::token_batch(50, 12, 4, 9, 3);
  EXPECT_TRUE(torch::equal(x1, x2));
  EXPECT_TRUE(torch::equal(y1, y2));
  EXPECT_FALSE(torch::equal(x1, trine::examples::token_batch(50, 12, 4, 9, 4).first));
  EXPECT_TRUE(torch::equal(x1.slice(1, 1, 12), y1.slice(1, 0, 11)));  // targets are the next tokens
  auto [x, y] = trine::examples::token_batch(50, 64, 64, 9, 0);
  const double follows = ((x * 5 + 3) % 50 == y).to(torch::kDouble).mean().item<double>();
  EXPECT_NEAR(follows, 0.81, 0.05);  // 10% noise on either side of a pair
}

TEST(ExampleModels, StagedTrainingLowersTheGptLoss) {
  ModelSpec s;
  s.layers = 2;
  s.hidden = 32;
  s.seq_len = 16;
  s.vocab = 32;
  s.batch = 8;
  auto m = make_example_model(s);
  const TracedModel traced = trace(m.module, m.loss, m.batch(0));
  ProxyGraph proxy = build_proxy_graph(traced);
  SequentialStagedModel staged(traced, proxy, trine::testing::even_stages(static_cast<int>(proxy.layers.size()), 3));
  torch::optim::AdamW opt(staged.parameters(), torch::optim::AdamWOptions(1e-2));
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    staged.zero_grad();
    const double l = staged.forward_backward(m.batch(step)).item<double>();
    staged.reduce_shared_gradients();
    opt.step();
    if (step == 0) first = l;
    last = l;
  }
  EXPECT_LT(last, 0.6 * first) << first << " -> " << last;
}
