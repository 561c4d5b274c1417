// The layer profiler: real times, exact kept-activation bytes on a model whose
// autograd graph is known, the thread count honoured and restored.
#include "trine/partitioner/profiler.h"
#include "../support/reference.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

using namespace trine;

namespace {

// Layer blocks.0: y = x * w0.  Layer blocks.1: u = y * w1; loss = sin(u).sum().
// Autograd keeps y (read by the second mul's backward) and u (read by sin's);
// sin(u) itself is freed (sum's backward needs only a shape). So blocks.0 keeps
// y, and blocks.1 keeps u and the scalar loss it outputs.
TracedModel two_layer_model(int64_t batch, int64_t features) {
  NamedTensors params{{"blocks.0.w", torch::randn({features}).requires_grad_()},
                      {"blocks.1.w", torch::randn({features}).requires_grad_()}};
  auto forward = [params](const std::vector<torch::Tensor>& in) {
    auto y = in[0] * params[0].second;
    auto u = y * params[1].second;
    return std::vector<torch::Tensor>{torch::sin(u)};
  };
  LossFn loss = [](const std::vector<torch::Tensor>& out, const std::vector<torch::Tensor>&) { return out[0].sum(); };
  SampleBatch sample{{torch::randn({batch, features})}, {}};
  return trace(forward, params, {}, loss, sample);
}

}  // namespace

TEST(Profiler, MeasuresTheActivationsAutogradKeeps) {
  const int64_t batch = 16, features = 256;
  const TracedModel traced = two_layer_model(batch, features);
  const ProxyGraph proxy = build_proxy_graph(traced);
  ASSERT_EQ(proxy.layers.size(), 2u);
  SampleBatch sample{{torch::randn({batch, features})}, {}};
  ProfileOptions o;
  o.warmup = 1;
  o.repeats = 3;
  const CostModel costs = profile_layers(traced, proxy, sample, o);
  ASSERT_EQ(costs.layers.size(), 2u);
  const int64_t tensor = batch * features * 4;
  EXPECT_EQ(costs.layers[0].activation_bytes, tensor);
  EXPECT_EQ(costs.layers[1].activation_bytes, tensor + 4);
  for (const auto& c : costs.layers) {
    EXPECT_GT(c.forward_s, 0);
    EXPECT_GT(c.backward_s, 0);
  }
}

TEST(Profiler, TimesEveryGptLayerWithTheGivenThreadsAndRestoresThem) {
  auto m = make_example_model(trine::testing::small_gpt_spec());
  const TracedModel traced = trace(m.module, m.loss, m.batch(0));
  const ProxyGraph proxy = build_proxy_graph(traced);
  const int before = at::get_num_threads();
  ProfileOptions o;
  o.threads = 1;
  o.repeats = 3;
  const CostModel costs = profile_layers(traced, proxy, m.batch(0), o);
  EXPECT_EQ(at::get_num_threads(), before);
  EXPECT_NE(costs.source.find("1 intra-op thread"), std::string::npos) << costs.source;
  ASSERT_EQ(costs.layers.size(), proxy.layers.size());
  for (size_t l = 0; l < proxy.layers.size(); ++l) {
    EXPECT_GT(costs.layers[l].time_s(), 0) << proxy.layers[l].name;
    if (proxy.layers[l].name.rfind("blocks.", 0) == 0) {
      EXPECT_GT(costs.layers[l].activation_bytes, 0) << proxy.layers[l].name;
    }
  }
  // The head's cross-entropy keeps its log-softmax [batch, seq, vocab] for the
  // backward, allocated inside a composite op: the allocation hook sees it.
  const int head = proxy.find_layer("head");
  ASSERT_GE(head, 0);
  EXPECT_GE(costs.layers[head].activation_bytes, 2 * 8 * 64 * 4);
  // A transformer block does more work than the position embedding lookup.
  const int block = proxy.find_layer("blocks.0"), pos = proxy.find_layer("pos_emb");
  ASSERT_GE(block, 0);
  ASSERT_GE(pos, 0);
  EXPECT_GT(costs.layers[block].time_s(), costs.layers[pos].time_s());
}

TEST(Profiler, NeedsALoss) {
  auto m = make_example_model(trine::testing::small_gpt_spec());
  const TracedModel traced = trace(m.module, nullptr, m.batch(0));
  EXPECT_THROW(profile_layers(traced, build_proxy_graph(traced), m.batch(0)), c10::Error);
}

TEST(AnalyticCosts, FollowFlopsAndBytes) {
  auto m = make_example_model(trine::testing::small_gpt_spec());
  const TracedModel traced = trace(m.module, m.loss, m.batch(0));
  const ProxyGraph proxy = build_proxy_graph(traced);
  AnalyticOptions o;
  o.flops_per_second = 1e9;
  const CostModel costs = analytic_costs(proxy, o);
  for (size_t l = 0; l < proxy.layers.size(); ++l) {
    EXPECT_DOUBLE_EQ(costs.layers[l].forward_s, proxy.layers[l].flops / 1e9);
    EXPECT_DOUBLE_EQ(costs.layers[l].backward_s, 2 * proxy.layers[l].flops / 1e9);
    EXPECT_EQ(costs.layers[l].activation_bytes, proxy.layers[l].activation_bytes);
  }
  const CostModel back = CostModel::from_json(costs.to_json());
  EXPECT_EQ(back.to_json(), costs.to_json());
}
