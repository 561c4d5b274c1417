// The proxy IR: layers, costs, JSON.
#include "../support/reference.h"
#include "trine/examples/gpt.h"
#include "trine/common/files.h"
#include "trine/frontend/proxy_graph.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <map>

using namespace trine;

namespace {

ProxyGraph proxy_of(const ModelSpec& spec) {
  auto m = make_example_model(spec);
  return build_proxy_graph(trace(m.module, m.loss, m.batch(0)));
}

ModelSpec gpt_spec(bool tied = false) { return trine::testing::small_gpt_spec(tied); }

std::vector<std::string> layer_names(const ProxyGraph& g) {
  std::vector<std::string> out;
  for (const auto& l : g.layers) out.push_back(l.name);
  return out;
}

}  // namespace

TEST(ProxyGraph, DefaultLayerRule) {
  EXPECT_EQ(default_layer_of("blocks.3.attn.qkv.weight"), "blocks.3");
  EXPECT_EQ(default_layer_of("tok_emb.weight"), "tok_emb");
  EXPECT_EQ(default_layer_of("encoder.layers.11.fc.bias"), "encoder.layers.11");
  EXPECT_EQ(default_layer_of("0.weight"), "0");
  EXPECT_EQ(default_layer_of("scale"), "scale");
  EXPECT_EQ(default_layer_of("encoder.layers.encoder_layer_2.mlp.3.weight"), "encoder.layers.encoder_layer_2");
  EXPECT_EQ(default_layer_of("layer1.0.downsample.0.weight"), "layer1.0");
  EXPECT_EQ(default_layer_of("conv1.weight"), "conv1");
  EXPECT_EQ(default_layer_of("model.transformer.ln_f.bias"), "model.transformer.ln_f");
}

TEST(ProxyGraph, GptLayersFollowModulePaths) {
  const ProxyGraph g = proxy_of(gpt_spec());
  EXPECT_EQ(layer_names(g), (std::vector<std::string>{"tok_emb", "pos_emb", "blocks.0", "blocks.1", "ln_f", "head"}));
  // Every op has a layer; layer op lists partition the ops.
  size_t n = 0;
  for (const auto& l : g.layers) n += l.ops.size();
  EXPECT_EQ(n, g.ops.size());
  // Parameter-free ops join their producer's layer: the block's GELU and softmax.
  const int b0 = g.find_layer("blocks.0");
  int gelu = 0, softmax = 0;
  for (int o : g.layers[b0].ops) {
    gelu += g.ops[o].kind == "aten::gelu";
    softmax += g.ops[o].kind == "aten::softmax";
  }
  EXPECT_EQ(gelu, 1);
  EXPECT_EQ(softmax, 1);
  // Each block holds its 12 parameters and its causal-mask buffer.
  EXPECT_EQ(g.layers[b0].params.size(), 13u);
}

TEST(ProxyGraph, DataOnlyFlowsToLaterLayers) {
  for (const std::string name : {"gpt", "skip", "branch"}) {
    ModelSpec s = gpt_spec(true);
    s.name = name;
    const ProxyGraph g = proxy_of(s);
    for (const auto& [from, to] : g.layer_edges()) EXPECT_LT(from, to) << name;
  }
}

TEST(ProxyGraph, TiedHeadIsASecondInstanceSharingTheEmbedding) {
  const ProxyGraph g = proxy_of(gpt_spec(true));
  EXPECT_EQ(layer_names(g).back(), "tok_emb#2");
  int tok = -1;
  for (size_t p = 0; p < g.params.size(); ++p)
    if (g.params[p].name == "tok_emb.weight") tok = static_cast<int>(p);
  ASSERT_GE(tok, 0);
  EXPECT_EQ(g.params[tok].layers, (std::vector<int>{0, static_cast<int>(g.layers.size()) - 1}));
  EXPECT_NE(g.layer_table().find("shared: tok_emb.weight"), std::string::npos);
}

TEST(ProxyGraph, GptFlopsWithinTwoPercentOfAnalyticCount) {
  ModelSpec s;
  s.layers = 2;
  s.hidden = 256;
  s.heads = 4;
  s.seq_len = 64;
  s.vocab = 512;
  s.batch = 2;
  auto m = make_example_model(s);
  const ProxyGraph g = build_proxy_graph(trace(m.module, m.loss, m.batch(0)));
  const double analytic = m.analytic_flops;
  EXPECT_NEAR(g.total_flops() / analytic, 1.0, 0.02) << g.total_flops() << " vs " << analytic;
  // The matrix products alone are counted exactly.
  double products = 0;
  for (const auto& op : g.ops)
    if (op.kind == "aten::addmm" || op.kind == "aten::matmul" || op.kind == "aten::mm" || op.kind == "aten::linear")
      products += op.flops;
  // addmm also counts its bias add (b*s*n per linear): allow that much.
  EXPECT_NEAR(products / analytic, 1.0, 0.005);
}

TEST(ProxyGraph, ViewsCostNoActivationBytes) {
  const ProxyGraph g = proxy_of(gpt_spec());
  int views = 0;
  for (const auto& op : g.ops) {
    if (op.kind == "aten::view" || op.kind == "aten::transpose" || op.kind == "aten::t") {
      EXPECT_EQ(op.activation_bytes, 0) << op.kind;
      ++views;
    }
  }
  EXPECT_GT(views, 0);
  int norms = 0;
  for (int o : g.layers[g.find_layer("blocks.0")].ops) {
    if (g.ops[o].kind != "aten::layer_norm") continue;
    ++norms;
    EXPECT_EQ(g.values[g.ops[o].outputs[0]].bytes, 2 * 8 * 32 * 4);  // [2, 8, 32] fp32
    EXPECT_EQ(g.ops[o].activation_bytes, 2 * 8 * 32 * 4);
  }
  EXPECT_EQ(norms, 2);
}

TEST(ProxyGraph, JsonRoundTripAndAtomicSave) {
  const ProxyGraph g = proxy_of(gpt_spec(true));
  const auto j = g.to_json();
  EXPECT_EQ(ProxyGraph::from_json(j).to_json(), j);
  const std::string path = ::testing::TempDir() + "trine_proxy.json";
  g.save(path);
  EXPECT_EQ(ProxyGraph::load(path).to_json(), j);
  std::remove(path.c_str());
}

TEST(ProxyGraph, MalformedJsonIsAClearError) {
  const std::string path = ::testing::TempDir() + "trine_bad.json";
  write_file_atomically(path, "{\"format\": \"trine.proxy_graph/1\", \"ops\": [");
  try {
    ProxyGraph::load(path);
    FAIL() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not valid JSON"), std::string::npos) << e.what();
  }
  auto j = proxy_of(gpt_spec()).to_json();
  j["ops"][3]["layer"] = 99;
  try {
    ProxyGraph::from_json(j);
    FAIL() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("op 3 has layer 99"), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

TEST(ProxyGraph, AnalyticFlopsOfConvolutionBmmAndAttention) {
  torch::manual_seed(1);
  auto conv_w = torch::randn({6, 3, 3, 3}, torch::requires_grad());
  auto proj = torch::randn({2, 16, 8}, torch::requires_grad());
  ForwardFn fn = [&](const std::vector<torch::Tensor>& in) {
    auto c = torch::conv2d(in[0], conv_w, {}, 1, 1);               // [2, 6, 10, 10]
    auto h = c.reshape({2, 6, 100}).transpose(1, 2).slice(2, 0, 6);  // [2, 100, 6]
    auto b = torch::bmm(h.narrow(1, 0, 16).transpose(1, 2), proj);   // [2, 6, 8]
    auto q = b.view({2, 1, 6, 8});
    return std::vector<torch::Tensor>{at::scaled_dot_product_attention(q, q, q)};
  };
  SampleBatch s{{torch::randn({2, 3, 10, 10})}, {}};
  const ProxyGraph g = build_proxy_graph(trace(fn, {{"conv.weight", conv_w}, {"proj", proj}}, {}, nullptr, s));
  std::map<std::string, double> flops;
  for (const auto& op : g.ops) flops[op.kind] += op.flops;
  EXPECT_DOUBLE_EQ(flops["aten::conv2d"] + flops["aten::_convolution"], 2.0 * (2 * 6 * 10 * 10) * (3 * 3 * 3));
  EXPECT_DOUBLE_EQ(flops["aten::bmm"], 2.0 * (2 * 6 * 8) * 16);
  // Two products of [6 x 8] by [8 x 6] and [6 x 6] by [6 x 8], plus the softmax.
  EXPECT_DOUBLE_EQ(flops["aten::scaled_dot_product_attention"], 2.0 * 2 * 6 * 6 * 8 * 2 + 2 * 6 * 6);
}
