// Deferred parameters (frontend/deferred_init.h): stand-ins hold no memory and
// trace like the real model; initial values follow (seed, name) and LibTorch's
// rules by module type.
#include "../support/error_of.h"
#include "../support/reference.h"
#include "trine/frontend/deferred_init.h"
#include "trine/frontend/trace.h"

#include <gtest/gtest.h>

#include <cmath>
#include <regex>

using namespace trine;
using trine::testing::error_of;

namespace {

ModelSpec gpt_spec(bool deferred) {
  ModelSpec s = trine::testing::small_gpt_spec(/*tied=*/true, /*dropout=*/0.1);
  s.deferred = deferred;
  return s;
}

}  // namespace

TEST(DeferredInit, StandInsHoldNoMemoryAndKeepShapeDtypeAndGrad) {
  torch::nn::Linear lin(16, 8);
  torch::nn::LayerNorm norm(torch::nn::LayerNormOptions({16}));
  defer_parameters(*lin);
  EXPECT_TRUE(is_deferred(lin->weight));
  EXPECT_TRUE(is_deferred(lin->bias));
  EXPECT_LE(lin->weight.storage().nbytes(), sizeof(float));
  EXPECT_EQ(lin->weight.sizes(), (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(lin->weight.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(lin->weight.requires_grad());
  EXPECT_TRUE(has_deferred_parameters(*lin));
  EXPECT_FALSE(has_deferred_parameters(*norm));
  EXPECT_FALSE(is_deferred(norm->weight));
}

TEST(DeferredInit, AGptBuiltDeferredTracesLikeTheRealOne) {
  ExampleModel real = make_example_model(gpt_spec(false));
  ExampleModel deferred = make_example_model(gpt_spec(true));
  EXPECT_TRUE(has_deferred_parameters(*deferred.ptr));
  const TracedModel a = trace(real.module, real.loss, real.batch(0));
  const TracedModel b = trace(deferred.module, deferred.loss, deferred.batch(0));
  ASSERT_EQ(a.inputs.size(), b.inputs.size());
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    EXPECT_EQ(a.inputs[i].name, b.inputs[i].name);
    EXPECT_EQ(a.inputs[i].aliases, b.inputs[i].aliases);
    EXPECT_EQ(a.inputs[i].value.sizes(), b.inputs[i].value.sizes()) << a.inputs[i].name;
    // Buffers (the causal masks) stay real; parameters of more than one element are stand-ins.
    const bool parameter = b.inputs[i].kind == InputKind::Parameter && b.inputs[i].value.numel() > 1;
    EXPECT_EQ(is_deferred(b.inputs[i].value), parameter) << b.inputs[i].name;
  }
  // The same ops on the same shapes; views of stand-ins have zero strides in their types (read nowhere).
  auto without_strides = [](const TracedModel& t) {
    return std::regex_replace(t.graph->toString(), std::regex("strides=\\[[0-9, ]*\\], "), "");
  };
  EXPECT_EQ(without_strides(a), without_strides(b));
  EXPECT_EQ(first_deferred_input(a), "");
  EXPECT_EQ(first_deferred_input(b), "tok_emb.weight");
  const std::string e = error_of([&] { check_not_deferred(b, "profiling layer costs"); });
  EXPECT_NE(e.find("profiling layer costs runs the model's layers with their weights, but parameter "
                   "'tok_emb.weight' is deferred"), std::string::npos) << e;
}

TEST(DeferredInit, MovingKeepsStandInsWithoutMemory) {
  torch::nn::Linear lin(4, 3);
  defer_parameters(*lin);
  move_module(*lin, torch::kCPU);
  EXPECT_TRUE(is_deferred(lin->weight));
}

TEST(DeferredInit, InitialValuesFollowSeedAndNameAndLeaveTheGeneratorAlone) {
  const ParameterInit normal = [](const std::string&, torch::Tensor& t) { t.normal_(); };
  torch::manual_seed(5);
  const torch::Tensor expected_draw = torch::randn({3});
  torch::manual_seed(5);
  const torch::Tensor a = initial_value(normal, "layer.weight", {4, 5}, torch::kFloat32, 11);
  const torch::Tensor other_name = initial_value(normal, "layer.bias", {4, 5}, torch::kFloat32, 11);
  const torch::Tensor other_seed = initial_value(normal, "layer.weight", {4, 5}, torch::kFloat32, 12);
  EXPECT_TRUE(torch::equal(torch::randn({3}), expected_draw));  // the user's stream is untouched
  EXPECT_TRUE(torch::equal(a, initial_value(normal, "layer.weight", {4, 5}, torch::kFloat32, 11)));
  EXPECT_FALSE(torch::equal(a, other_name));
  EXPECT_FALSE(torch::equal(a, other_seed));
  EXPECT_EQ(a.scalar_type(), torch::kFloat32);
  const ParameterInit reshaping = [](const std::string&, torch::Tensor& t) { t = torch::zeros({2}); };
  const std::string e = error_of([&] { initial_value(reshaping, "w", {4}, torch::kFloat32, 0); });
  EXPECT_NE(e.find("the ParameterInit changed parameter 'w'"), std::string::npos) << e;
}

TEST(DeferredInit, LibTorchRulesByModuleType) {
  struct Net : torch::nn::Module {
    torch::nn::Linear fc{register_module("fc", torch::nn::Linear(400, 300))};
    torch::nn::Conv2d conv{register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 5)))};
    torch::nn::Embedding emb{register_module(
        "emb", torch::nn::Embedding(torch::nn::EmbeddingOptions(1000, 64).padding_idx(2)))};
    torch::nn::LayerNorm norm{register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({64})))};
    torch::Tensor odd{register_parameter("odd", torch::ones({3, 3}))};
  };
  auto net = std::make_shared<Net>();
  const ParameterInit init = torch_default_init(*net);
  auto value = [&](const std::string& name, const torch::Tensor& like) {
    return initial_value(init, name, like.sizes(), like.scalar_type(), 3);
  };
  const double fc_bound = 1 / std::sqrt(400.0), conv_bound = 1 / std::sqrt(3.0 * 5 * 5);
  const torch::Tensor w = value("fc.weight", net->fc->weight), b = value("fc.bias", net->fc->bias);
  EXPECT_LE(w.abs().max().item<double>(), fc_bound);
  EXPECT_GT(w.abs().max().item<double>(), 0.99 * fc_bound);
  EXPECT_NEAR(w.std().item<double>(), fc_bound / std::sqrt(3.0), 0.02 * fc_bound);  // uniform's std
  EXPECT_LE(b.abs().max().item<double>(), fc_bound);
  EXPECT_LE(value("conv.weight", net->conv->weight).abs().max().item<double>(), conv_bound);
  EXPECT_LE(value("conv.bias", net->conv->bias).abs().max().item<double>(), conv_bound);
  const torch::Tensor e = value("emb.weight", net->emb->weight);
  EXPECT_NEAR(e.std().item<double>(), 1.0, 0.02);
  EXPECT_TRUE(torch::equal(e[2], torch::zeros({64})));  // the padding row
  EXPECT_TRUE(torch::equal(value("norm.weight", net->norm->weight), torch::ones({64})));
  EXPECT_TRUE(torch::equal(value("norm.bias", net->norm->bias), torch::zeros({64})));
  const std::string err = error_of([&] { value("odd", net->odd); });
  EXPECT_NE(err.find("parameter 'odd' is deferred, but its module ("), std::string::npos) << err;
  EXPECT_NE(err.find("Net) has no initialisation rule"), std::string::npos) << err;
}
