// Tracing: names of inputs, the three kinds of model, and the errors for what
// cannot be traced.
#include "../support/reference.h"
#include "trine/examples/gpt.h"
#include "trine/frontend/trace.h"

#include <gtest/gtest.h>
#include <torch/script.h>

#include <cstdio>
#include <set>

using namespace trine;
using trine::testing::rel_diff;

namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

ExampleModel small_gpt(bool tied = false, double dropout = 0.0) {
  return make_example_model(trine::testing::small_gpt_spec(tied, dropout));
}

}  // namespace

TEST(Trace, GraphInputsAreDataTargetsThenEveryNamedParameterAndBuffer) {
  auto m = small_gpt();
  const TracedModel t = trace(m.module, m.loss, m.batch(0));
  ASSERT_EQ(t.graph->inputs().size(), t.inputs.size());
  EXPECT_EQ(t.inputs[0].name, "input0");
  EXPECT_EQ(t.inputs[0].kind, InputKind::Data);
  EXPECT_EQ(t.inputs[1].name, "target0");
  EXPECT_EQ(t.inputs[1].kind, InputKind::Target);
  std::set<std::string> params, buffers;
  for (const auto& in : t.inputs) {
    if (in.kind == InputKind::Parameter) params.insert(in.name);
    if (in.kind == InputKind::Buffer) buffers.insert(in.name);
  }
  std::set<std::string> want;
  for (const auto& p : m.ptr->named_parameters()) want.insert(p.key());
  EXPECT_EQ(params, want);
  EXPECT_TRUE(params.count("blocks.1.attn.qkv.weight"));
  EXPECT_EQ(buffers, (std::set<std::string>{"blocks.0.attn.mask", "blocks.1.attn.mask"}));
  // Graph inputs carry the names too, and the graph's single output is the loss.
  EXPECT_EQ(t.graph->inputs()[2]->debugName().rfind("tok_emb.weight", 0), 0u);
  ASSERT_TRUE(t.has_loss);
  ASSERT_EQ(t.graph->outputs().size(), 1u);
}

TEST(Trace, InPlaceOpsAreRecordedOutOfPlace) {
  ModelSpec spec;
  spec.name = "skip";
  auto m = make_example_model(spec);  // relu_ and add_ in its forward
  const TracedModel t = trace(m.module, m.loss, m.batch(0));
  int relus = 0;
  for (const auto* n : t.graph->nodes()) {
    const std::string k = n->kind().toQualString();
    EXPECT_NE(k.back(), '_') << "in-place op left in the graph: " << k;
    relus += k == "aten::relu";
  }
  EXPECT_EQ(relus, spec.layers);
}

TEST(Trace, CallableWithNamedParameters) {
  torch::manual_seed(3);
  auto w = torch::randn({5, 3}, torch::requires_grad());
  auto b = torch::randn({3}, torch::requires_grad());
  auto scale = torch::full({3}, 0.5);
  ForwardFn fn = [&](const std::vector<torch::Tensor>& in) {
    return std::vector<torch::Tensor>{torch::tanh(in[0].matmul(w) + b) * scale};
  };
  LossFn loss = [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>& y) {
    return torch::mse_loss(o[0], y[0]);
  };
  SampleBatch batch{{torch::randn({4, 5})}, {torch::randn({4, 3})}};
  const TracedModel t = trace(fn, {{"proj.weight", w}, {"proj.bias", b}}, {{"scale", scale}}, loss, batch);
  EXPECT_EQ(t.find_input("proj.weight"), 2);
  EXPECT_EQ(t.inputs[4].kind, InputKind::Buffer);
  ProxyGraph proxy = build_proxy_graph(t);
  ASSERT_EQ(proxy.layers.size(), 2u);  // "proj" and "scale"
  EXPECT_EQ(proxy.layers[0].name, "proj");
  SequentialStagedModel staged(t, proxy, {0, 1});
  const double l = staged.forward_backward(batch).item<double>();
  auto ref = loss(fn(batch.inputs), batch.targets);
  ref.backward();
  EXPECT_NEAR(l, ref.item<double>(), 1e-7);
  EXPECT_LE(rel_diff(staged.gradient("proj.weight"), w.grad()), 1e-6);
  EXPECT_LE(rel_diff(staged.gradient("proj.bias"), b.grad()), 1e-6);
}

// A TorchScript model that the fixture saves to a file and loads back.
class TorchScriptTrace : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(7);
    torch::jit::Module model("Net");
    for (int i = 0; i < 3; ++i) {
      torch::jit::Module layer("Layer" + std::to_string(i));
      layer.register_parameter("weight", torch::randn({8, 8}) * 0.3, false);
      layer.register_parameter("bias", torch::randn({8}) * 0.1, false);
      layer.define(R"(
def forward(self, x):
    return torch.relu(torch.matmul(x, self.weight.t()) + self.bias)
)");
      model.register_module("layers_" + std::to_string(i), layer);
    }
    model.define(R"(
def forward(self, x):
    h = self.layers_0.forward(x)
    h = self.layers_1.forward(h)
    return self.layers_2.forward(h) + h
)");
    path_ = ::testing::TempDir() + "trine_test_model.pt";
    model.save(path_);
  }
  void TearDown() override { std::remove(path_.c_str()); }
  std::string path_;
};

TEST_F(TorchScriptTrace, SavedModelLoadsTracesAndTrainsLikeTheEagerModule) {
  torch::jit::Module loaded = torch::jit::load(path_);
  LossFn loss = [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>& y) {
    return torch::mse_loss(o[0], y[0]);
  };
  SampleBatch batch{{torch::randn({4, 8})}, {torch::randn({4, 8})}};
  const TracedModel t = trace(loaded, loss, batch);
  EXPECT_GE(t.find_input("layers_1.weight"), 0);
  ProxyGraph proxy = build_proxy_graph(t);
  ASSERT_EQ(proxy.layers.size(), 3u);
  EXPECT_EQ(proxy.layers[2].name, "layers_2");

  // Eager reference: the loaded module itself, with autograd on its parameters.
  for (auto p : loaded.parameters()) p.requires_grad_(true);
  auto ref = loss({loaded.forward({batch.inputs[0]}).toTensor()}, batch.targets);
  ref.backward();
  for (int k = 1; k <= 3; ++k) {
    SequentialStagedModel staged(t, proxy, trine::testing::even_stages(3, k));
    const double l = staged.forward_backward(batch).item<double>();
    EXPECT_NEAR(l, ref.item<double>(), 1e-6 * std::abs(ref.item<double>())) << "k=" << k;
    for (const auto& p : loaded.named_parameters(true))
      EXPECT_LE(rel_diff(staged.gradient(p.name), p.value.grad()), 1e-6) << p.name << " k=" << k;
  }
}

TEST_F(TorchScriptTrace, DataDependentBranchInScriptIsAnError) {
  torch::jit::Module m("Branchy");
  m.register_parameter("w", torch::randn({4, 4}), false);
  m.define(R"(
def forward(self, x):
    y = torch.matmul(x, self.w)
    if bool(y.sum() > 0):
        y = y * 2
    return y
)");
  const std::string err = error_of([&] { trace(m, nullptr, SampleBatch{{torch::randn({2, 4})}, {}}); });
  EXPECT_NE(err.find("reads a tensor's value"), std::string::npos) << err;
  EXPECT_NE(err.find("right after traced op #2 (aten::gt"), std::string::npos) << "should say where: " << err;
}

namespace {
struct ItemBranchImpl : torch::nn::Module {
  torch::nn::Linear fc{nullptr};
  ItemBranchImpl() { fc = register_module("fc", torch::nn::Linear(4, 4)); }
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = fc(x);
    if (y.sum().item<double>() > 0) y = y * 2;  // control flow on a tensor value
    return y;
  }
};
TORCH_MODULE(ItemBranch);

struct CountingImpl : torch::nn::Module {
  int64_t forward(const torch::Tensor& x) { return x.size(0); }
};
TORCH_MODULE(Counting);

LossFn sum_loss = [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>&) { return o[0].sum(); };
}  // namespace

TEST(Trace, ItemInForwardIsAnErrorThatSaysWhatAndWhere) {
  const std::string err =
      error_of([] { trace(torch::nn::AnyModule(ItemBranch()), sum_loss, SampleBatch{{torch::randn({2, 4})}, {}}); });
  EXPECT_NE(err.find("reads a tensor's value into C++"), std::string::npos) << err;
  EXPECT_NE(err.find("aten::sum"), std::string::npos) << "should name the last traced op: " << err;
}

// Shape arithmetic done with tensors, as graphs traced in Python carry it
// (aten::size -> prim::NumToTensor -> aten::Int): a constant of the trace.
// The same read of a parameter's value is refused.
TEST(Trace, ScalarReadsOfShapesAreConstantsAndReadsOfParametersAreErrors) {
  auto w = torch::randn({4, 3}, torch::requires_grad());
  LossFn loss = [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>&) { return o[0].sum(); };
  ForwardFn by_shape = [&](const std::vector<torch::Tensor>& in) {
    const int64_t rows = torch::scalar_tensor(in[0].size(0), torch::kLong).floor_divide(2).item<int64_t>();
    return std::vector<torch::Tensor>{in[0].matmul(w).reshape({rows, -1})};
  };
  const SampleBatch batch{{torch::randn({6, 4})}, {}};
  const TracedModel t = trace(by_shape, {{"w", w}}, {}, loss, batch);
  EXPECT_NEAR(GraphRunner(t.graph).run({batch.inputs[0], w})[0].toTensor().item<double>(),
              loss(by_shape(batch.inputs), {}).item<double>(), 1e-5);
  ForwardFn by_parameter = [&](const std::vector<torch::Tensor>& in) {
    const double scale = w.sum().item<double>();
    return std::vector<torch::Tensor>{in[0].matmul(w) * scale};
  };
  const std::string err = error_of([&] { trace(by_parameter, {{"w", w}}, {}, loss, batch); });
  EXPECT_NE(err.find("reads a tensor's value into C++ (aten::"), std::string::npos) << err;
  EXPECT_NE(err.find("aten::sum"), std::string::npos) << "should name the last traced op: " << err;
}

// BatchNorm in training mode: tracing leaves the buffers as they were; running
// the graph updates them (running statistics in the kernel, the counter by the
// in-place op trace() puts back) exactly as an eager forward does.
TEST(Trace, BatchNormBuffersAreUpdatedByTheGraphNotByTracing) {
  torch::manual_seed(0);
  torch::nn::BatchNorm1d traced_bn(3), eager_bn(3);
  const SampleBatch batch{{torch::randn({5, 3}) * 3 + 1}, {}};
  const TracedModel t = trace(torch::nn::AnyModule(traced_bn), sum_loss, batch);
  EXPECT_TRUE(torch::equal(traced_bn->running_mean, torch::zeros({3})));
  EXPECT_EQ(traced_bn->num_batches_tracked.item<int64_t>(), 0);
  std::vector<c10::IValue> in;
  for (const auto& gi : t.inputs) in.emplace_back(gi.kind == InputKind::Data ? batch.inputs[0] : gi.value);
  GraphRunner runner(t.graph);
  for (int i = 0; i < 2; ++i) {
    runner.run(in);
    eager_bn->forward(batch.inputs[0]);
  }
  EXPECT_LE(rel_diff(traced_bn->running_mean, eager_bn->running_mean), 1e-6);
  EXPECT_LE(rel_diff(traced_bn->running_var, eager_bn->running_var), 1e-6);
  EXPECT_EQ(traced_bn->num_batches_tracked.item<int64_t>(), 2);
}

TEST(Trace, NonTensorOutputIsAnError) {
  const std::string err =
      error_of([] { trace(torch::nn::AnyModule(Counting()), nullptr, SampleBatch{{torch::randn({2, 4})}, {}}); });
  EXPECT_NE(err.find("forward must return a Tensor"), std::string::npos) << err;
}

TEST(Trace, WrongNumberOfInputsIsAnError) {
  auto m = small_gpt();
  auto b = m.batch(0);
  const std::string err = error_of([&] { trace(m.module, m.loss, SampleBatch{{b.inputs[0], b.inputs[0]}, b.targets}); });
  EXPECT_NE(err.find("does not take the sample batch's 2 tensor input(s)"), std::string::npos) << err;
}

TEST(Trace, LossMustBeScalar) {
  auto m = small_gpt();
  LossFn bad = [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>&) { return o[0].sum(-1); };
  const std::string err = error_of([&] { trace(m.module, bad, m.batch(0)); });
  EXPECT_NE(err.find("the loss must be a scalar"), std::string::npos) << err;
}

TEST(Trace, BatchOfAnotherShapeIsAnErrorNamingTheInput) {
  auto m = small_gpt();
  const TracedModel t = trace(m.module, m.loss, m.batch(0));
  SequentialStagedModel staged(t, build_proxy_graph(t), {0, 0, 0, 0, 1, 1});
  auto b = m.batch(1);
  b.inputs[0] = b.inputs[0].slice(0, 0, 1);
  b.targets[0] = b.targets[0].slice(0, 0, 1);
  const std::string err = error_of([&] { staged.forward_backward(b); });
  EXPECT_NE(err.find("input 'input0' has shape [1, 8] but the model was traced with [2, 8]"), std::string::npos)
      << err;
}

TEST(Trace, DoesNotDisturbTheCallersRandomStreamBeyondOneForward) {
  auto m = small_gpt(false, 0.1);
  auto b = m.batch(0);
  torch::manual_seed(11);
  m.module.any_forward(b.inputs[0]);  // one eager forward with dropout
  const auto after_forward = torch::rand({4});
  torch::manual_seed(11);
  trace(m.module, m.loss, b);  // one traced forward; the check restores what it uses
  EXPECT_TRUE(torch::equal(torch::rand({4}), after_forward));
}
