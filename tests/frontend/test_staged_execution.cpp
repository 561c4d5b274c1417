// Staged execution in one process: for every example model, every number of
// stages from 1 to the number of layers, with and without dropout, the loss and
// every parameter's gradient equal those of the unsplit model.
#include "../support/reference.h"

#include <gtest/gtest.h>

using namespace trine;
using trine::testing::eager_step;
using trine::testing::Reference;
using trine::testing::rel_diff;

namespace {

struct Case {
  std::string model;
  bool tied;
  double dropout;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.model << (c.tied ? " tied" : "") << " dropout=" << c.dropout; }

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.model + (info.param.tied ? "_tied" : "") + (info.param.dropout > 0 ? "_dropout" : "");
}

ModelSpec spec_of(const Case& c) {
  ModelSpec s;
  s.name = c.model;
  s.layers = c.model == "gpt" ? 2 : 4;
  s.hidden = 32;
  s.seq_len = 8;
  s.vocab = 64;
  s.batch = 4;
  s.tied = c.tied;
  s.dropout = c.dropout;
  s.seed = 5;
  return s;
}

constexpr double kTol = 1e-6;

void expect_matches(SequentialStagedModel& staged, const Reference& ref, double loss, const std::string& what) {
  EXPECT_LE(std::abs(loss - ref.loss), kTol * std::abs(ref.loss)) << what << ": loss " << loss << " vs " << ref.loss;
  for (const auto& [name, g] : ref.grads) {
    auto got = staged.gradient(name);
    ASSERT_TRUE(got.defined()) << what << ": no gradient for " << name;
    EXPECT_LE(rel_diff(got, g), kTol) << what << ": gradient of " << name;
  }
}

class StagedExecution : public ::testing::TestWithParam<Case> {};

}  // namespace

TEST_P(StagedExecution, EveryStageCountMatchesTheUnsplitModel) {
  const Case c = GetParam();
  auto m = make_example_model(spec_of(c));
  const SampleBatch batch = m.batch(3);
  const TracedModel traced = trace(m.module, m.loss, batch);
  const ProxyGraph proxy = build_proxy_graph(traced);
  const int layers = static_cast<int>(proxy.layers.size());
  ASSERT_GE(layers, 6);

  Reference ref;
  RngPolicy rng{RngPolicy::Mode::PerOp, 42, 7};
  if (c.dropout == 0) {
    ref = eager_step(m, batch);
  } else {
    // With dropout the unsplit reference is the whole graph under the same
    // per-op seeding; that graph is itself checked against eager dropout by
    // running both on the model's own sequential random stream.
    SequentialStagedModel whole(traced, proxy, std::vector<int>(layers, 0));
    torch::manual_seed(9);
    const double seq_loss = whole.forward_backward(batch).item<double>();
    torch::manual_seed(9);
    const Reference eager = eager_step(m, batch);
    expect_matches(whole, eager, seq_loss, "unsplit graph vs eager, sequential dropout");
    whole.zero_grad();
    ref.loss = whole.forward_backward(batch, rng).item<double>();
    for (const auto& [name, g] : eager.grads) ref.grads[name] = whole.gradient(name).clone();
    EXPECT_GT(std::abs(ref.loss - eager.loss), 0) << "per-op seeding should draw other masks than the eager run";
  }
  for (int k = 1; k <= layers; ++k) {
    SequentialStagedModel staged(traced, proxy, trine::testing::even_stages(layers, k));
    ASSERT_EQ(staged.num_stages(), k);
    const double loss = staged.forward_backward(batch, rng).item<double>();
    staged.reduce_shared_gradients();
    expect_matches(staged, ref, loss, "k=" + std::to_string(k));
  }
}

INSTANTIATE_TEST_SUITE_P(Models, StagedExecution,
                         ::testing::Values(Case{"gpt", false, 0.0}, Case{"gpt", false, 0.1}, Case{"gpt", true, 0.0},
                                           Case{"gpt", true, 0.1}, Case{"skip", false, 0.0}, Case{"skip", false, 0.1},
                                           Case{"branch", false, 0.0}, Case{"branch", false, 0.1}),
                         case_name);

TEST(StagedExecutionDetails, TiedEmbeddingOnTwoStagesIsHeldByBothAndStaysIdentical) {
  auto m = make_example_model(spec_of({"gpt", true, 0.0}));
  const TracedModel traced = trace(m.module, m.loss, m.batch(0));
  const ProxyGraph proxy = build_proxy_graph(traced);
  const int layers = static_cast<int>(proxy.layers.size());
  SequentialStagedModel staged(traced, proxy, trine::testing::even_stages(layers, 2));
  EXPECT_TRUE(staged.parameter("tok_emb.weight", 0).defined());
  EXPECT_TRUE(staged.parameter("tok_emb.weight", 1).defined());
  EXPECT_NE(staged.parameter("tok_emb.weight", 0).data_ptr(), staged.parameter("tok_emb.weight", 1).data_ptr());
  torch::optim::AdamW opt(staged.parameters(), torch::optim::AdamWOptions(1e-2));
  for (int step = 0; step < 3; ++step) {
    staged.zero_grad();
    staged.forward_backward(m.batch(step));
    // Before the reduction each copy has only its own stage's part of the gradient.
    if (step == 0) {
      EXPECT_FALSE(torch::allclose(staged.parameter("tok_emb.weight", 0).grad(),
                                   staged.parameter("tok_emb.weight", 1).grad()));
    }
    staged.reduce_shared_gradients();
    opt.step();
  }
  EXPECT_TRUE(torch::equal(staged.parameter("tok_emb.weight", 0), staged.parameter("tok_emb.weight", 1)));
}

TEST(StagedExecutionDetails, SkipConnectionsGoStraightToTheConsumingStage) {
  auto m = make_example_model(spec_of({"skip", false, 0.0}));
  const TracedModel traced = trace(m.module, m.loss, m.batch(0));
  const ProxyGraph proxy = build_proxy_graph(traced);
  const int layers = static_cast<int>(proxy.layers.size());
  auto stages = split_into_stages(traced, proxy, trine::testing::even_stages(layers, layers));
  int skips = 0;
  for (const auto& st : stages)
    for (const auto& in : st.inputs)
      if (in.kind == StageInput::Kind::Activation && in.from_stage < st.stage - 1) {
        ++skips;
        // The producer lists this stage among its consumers: no relay in between.
        bool listed = false;
        for (const auto& out : stages[in.from_stage].outputs)
          if (out.value == in.value)
            for (int t : out.to_stages) listed |= t == st.stage;
        EXPECT_TRUE(listed);
      }
  EXPECT_GE(skips, 2);  // span 3 over 4 layers: two skips jump over stages
}

TEST(StagedExecutionDetails, DropoutMasksDependOnMicrobatchNotOnSplit) {
  auto m = make_example_model(spec_of({"gpt", false, 0.3}));
  const auto batch = m.batch(0);
  const TracedModel traced = trace(m.module, m.loss, batch);
  const ProxyGraph proxy = build_proxy_graph(traced);
  SequentialStagedModel staged(traced, proxy, trine::testing::even_stages(static_cast<int>(proxy.layers.size()), 3));
  auto loss_at = [&](int64_t mb) {
    return staged.forward_backward(batch, RngPolicy{RngPolicy::Mode::PerOp, 1, mb}).item<double>();
  };
  EXPECT_EQ(loss_at(0), loss_at(0));
  EXPECT_NE(loss_at(0), loss_at(1));
}

TEST(StagedExecutionDetails, AssignmentAgainstDataFlowIsAnErrorNamingTheLayers) {
  auto m = make_example_model(spec_of({"gpt", false, 0.0}));
  const TracedModel traced = trace(m.module, m.loss, m.batch(0));
  const ProxyGraph proxy = build_proxy_graph(traced);
  auto expect_error = [&](const std::vector<int>& a, const std::string& text) {
    try {
      split_into_stages(traced, proxy, a);
      ADD_FAILURE() << "no error for " << text;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  expect_error({0, 0, 1, 0, 1, 1}, "layer 'blocks.0' (stage 1) feeds layer 'blocks.1' (stage 0)");
  expect_error({0, 0, 2, 2, 2, 2}, "stage 1 of 3 has no layer");
  expect_error({0, 0, 1}, "names 3 layers, but the model has 6");
}

// The core every executor runs stages through: microbatch slices, the loss
// seed, the gradients of received activations, and parameter copies of its own.
TEST(StageExecutionCore, TwoStagesOnMicrobatchSlicesGiveTheScaledWholeModelGradients) {
  auto m = make_example_model(spec_of({"skip", false, 0.0}));
  const SampleBatch batch = m.batch(1);  // 4 rows: two microbatches of 2
  SampleBatch first_two;  // the traced shape: one microbatch
  for (const auto& t : batch.inputs) first_two.inputs.push_back(t.narrow(0, 0, 2));
  for (const auto& t : batch.targets) first_two.targets.push_back(t.narrow(0, 0, 2));
  const TracedModel traced = trace(m.module, m.loss, first_two);
  const ProxyGraph proxy = build_proxy_graph(traced);
  const auto stages = split_into_stages(traced, proxy, trine::testing::even_stages(static_cast<int>(proxy.layers.size()), 2));
  std::vector<StageExecution> run;
  for (const auto& st : stages) run.emplace_back(st, traced, proxy);
  EXPECT_NE(run[0].parameters().begin()->second.data_ptr(),
            traced.inputs.at(proxy.params[run[0].parameters().begin()->first].value).value.data_ptr());

  double loss_sum = 0;
  for (int mb = 0; mb < 2; ++mb) {
    auto first = run[0].forward(std::vector<torch::Tensor>(stages[0].inputs.size()), batch, {mb, 2}, {});
    EXPECT_FALSE(run[0].loss(first).defined());
    std::vector<torch::Tensor> received(stages[1].inputs.size());
    std::map<int, int> output_of_value;  // stage 0: value id -> output index
    for (size_t o = 0; o < stages[0].outputs.size(); ++o) output_of_value[stages[0].outputs[o].value] = static_cast<int>(o);
    for (size_t i = 0; i < stages[1].inputs.size(); ++i)
      if (stages[1].inputs[i].kind == StageInput::Kind::Activation)
        received[i] = first.outputs.at(output_of_value.at(stages[1].inputs[i].value)).detach().requires_grad_(true);
    auto second = run[1].forward(received, batch, {mb, 2}, {});
    loss_sum += run[1].loss(second).item<double>();
    auto grads = run[1].backward(std::move(second), {}, 0.5);  // the mean over two microbatches
    ASSERT_FALSE(grads.empty());
    std::map<int, torch::Tensor> output_grads;
    for (const auto& [i, g] : grads) {
      EXPECT_EQ(g.sizes(), received[i].sizes());
      output_grads[output_of_value.at(stages[1].inputs[i].value)] = g;
    }
    EXPECT_TRUE(run[0].backward(std::move(first), output_grads, 0.5).empty());  // stage 0 receives nothing
  }

  // The reference: the whole model on the 4 rows at once (its loss is a mean over rows).
  const Reference ref = eager_step(m, batch);
  EXPECT_NEAR(loss_sum / 2, ref.loss, 1e-6 * std::abs(ref.loss));
  for (const auto& [name, g] : ref.grads) {
    const int p = proxy.find_param(name);
    torch::Tensor got;
    for (const auto& r : run)
      if (auto it = r.parameters().find(p); it != r.parameters().end()) got = it->second.grad();
    ASSERT_TRUE(got.defined()) << name;
    EXPECT_LE(rel_diff(got, g), 1e-6) << name;
  }
  try {
    run[1].forward(std::vector<torch::Tensor>(stages[1].inputs.size()), batch, {0, 2}, {});
    ADD_FAILURE() << "a forward without its received activation ran";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("without its input from stage 0"), std::string::npos) << e.what();
  }
  try {
    run[0].forward(std::vector<torch::Tensor>(stages[0].inputs.size()), batch, {0, 3}, {});
    ADD_FAILURE() << "4 rows split into 3 microbatches";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("rows, which do not split into 3 equal microbatches"), std::string::npos)
        << e.what();
  }
}

// Recomputation: a forward that keeps only its inputs, run again with grad
// before its backward, gives bit-equal losses and gradients (dropout on, tied
// weights on two stages) and keeps far fewer bytes between forward and backward.
TEST(StageExecutionCore, RecomputedStagesGiveBitEqualGradientsAndKeepLess) {
  auto m = make_example_model(spec_of({"gpt", true, 0.1}));
  const SampleBatch batch = m.batch(2);
  const TracedModel traced = trace(m.module, m.loss, batch);
  const ProxyGraph proxy = build_proxy_graph(traced);
  const auto assignment = trine::testing::even_stages(static_cast<int>(proxy.layers.size()), 3);
  SequentialStagedModel kept(traced, proxy, assignment), recomputed(traced, proxy, assignment);
  recomputed.recompute_every_stage(true);
  const RngPolicy rng{RngPolicy::Mode::PerOp, 11, 3};
  StageMeasurements kept_m, recomputed_m;
  const auto loss = kept.forward_backward(batch, rng, &kept_m);
  const auto loss_r = recomputed.forward_backward(batch, rng, &recomputed_m);
  EXPECT_TRUE(torch::equal(loss, loss_r)) << loss.item<double>() << " vs " << loss_r.item<double>();
  kept.reduce_shared_gradients();
  recomputed.reduce_shared_gradients();
  for (const auto& p : proxy.params) {
    if (!p.requires_grad) continue;
    const auto g = kept.gradient(p.name), g_r = recomputed.gradient(p.name);
    ASSERT_TRUE(g.defined() && g_r.defined()) << p.name;
    EXPECT_TRUE(torch::equal(g, g_r)) << p.name << ": rel " << rel_diff(g_r, g);
  }
  for (int s = 0; s < 3; ++s) EXPECT_LT(recomputed_m.kept_bytes[s], kept_m.kept_bytes[s] / 2) << "stage " << s;
  // Another microbatch number draws other dropout masks: the rerun really reuses the forward's.
  EXPECT_FALSE(torch::equal(loss, recomputed.forward_backward(batch, {RngPolicy::Mode::PerOp, 11, 4})));
  // The sequential generator would draw new numbers when run again: refused.
  try {
    recomputed.forward_backward(batch);
    ADD_FAILURE() << "recomputation ran with the sequential generator";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("recomputation needs random ops drawn by RngPolicy::PerOp"),
              std::string::npos) << e.what();
  }
}

// Checkpointed segments of layers inside a stage: every layer its own
// segment, or only some, give bit-equal losses and gradients with dropout on
// and tied weights, keep less between forward and backward than keeping
// everything (more than whole-stage recomputation, which keeps only the stage
// inputs), and an explicit recompute() before the backward changes nothing.
TEST(StageExecutionCore, CheckpointedLayerSegmentsGiveBitEqualGradients) {
  auto m = make_example_model(spec_of({"gpt", true, 0.1}));
  const SampleBatch batch = m.batch(2);
  const TracedModel traced = trace(m.module, m.loss, batch);
  const ProxyGraph proxy = build_proxy_graph(traced);
  const int stages = 3;
  const auto assignment = trine::testing::even_stages(static_cast<int>(proxy.layers.size()), stages);
  SequentialStagedModel kept(traced, proxy, assignment), every_layer(traced, proxy, assignment),
      first_layer(traced, proxy, assignment), whole(traced, proxy, assignment);
  whole.recompute_every_stage(true);
  for (int s = 0; s < stages; ++s) {
    std::vector<std::vector<int>> each;
    for (int l : kept.stages()[s].layers) each.push_back({l});
    every_layer.checkpoint_layers(s, each);
    first_layer.checkpoint_layers(s, {{kept.stages()[s].layers.front()}});
  }
  const RngPolicy rng{RngPolicy::Mode::PerOp, 11, 3};
  StageMeasurements kept_m, every_m, first_m, whole_m;
  const auto loss = kept.forward_backward(batch, rng, &kept_m);
  EXPECT_TRUE(torch::equal(loss, every_layer.forward_backward(batch, rng, &every_m)));
  EXPECT_TRUE(torch::equal(loss, first_layer.forward_backward(batch, rng, &first_m)));
  whole.forward_backward(batch, rng, &whole_m);
  for (auto* model : {&kept, &every_layer, &first_layer}) model->reduce_shared_gradients();
  for (const auto& p : proxy.params) {
    if (!p.requires_grad) continue;
    const auto g = kept.gradient(p.name);
    EXPECT_TRUE(torch::equal(g, every_layer.gradient(p.name))) << p.name << ": rel "
                                                               << rel_diff(every_layer.gradient(p.name), g);
    EXPECT_TRUE(torch::equal(g, first_layer.gradient(p.name))) << p.name;
  }
  for (int s = 0; s < stages; ++s) {
    EXPECT_LE(every_m.kept_bytes[s], first_m.kept_bytes[s]) << "stage " << s;
    EXPECT_LE(first_m.kept_bytes[s], kept_m.kept_bytes[s]) << "stage " << s;
    EXPECT_LE(whole_m.kept_bytes[s], every_m.kept_bytes[s]) << "stage " << s;
  }
  // Stage 1 holds the two transformer blocks (stage 0 the embeddings, whose
  // outputs are kept anyway): each block then keeps only its input (measured
  // 173184 -> 8320 bytes), the first block alone about half.
  EXPECT_LT(every_m.kept_bytes[1], kept_m.kept_bytes[1] / 10);
  EXPECT_LT(first_m.kept_bytes[1], kept_m.kept_bytes[1] * 0.6);
  // The schedule's R: recompute() ahead of the backward, through StageExecution.
  const auto split = split_into_stages(traced, proxy, std::vector<int>(proxy.layers.size(), 0));
  StageExecution plain(split[0], traced, proxy), checkpointed(split[0], traced, proxy);
  std::vector<std::vector<int>> each;
  for (int l : split[0].layers) each.push_back({l});
  checkpointed.checkpoint_layers(each);
  auto a = plain.forward(std::vector<torch::Tensor>(split[0].inputs.size()), batch, {}, rng);
  auto b = checkpointed.forward(std::vector<torch::Tensor>(split[0].inputs.size()), batch, {}, rng);
  EXPECT_EQ(b.segments.size(), each.size());
  checkpointed.recompute(b);
  for (const auto& run : b.segments) EXPECT_TRUE(run->recomputed());
  plain.backward(std::move(a), {}, 0.5);
  checkpointed.backward(std::move(b), {}, 0.5);
  for (const auto& [id, t] : plain.parameters())
    if (t.requires_grad()) {
      EXPECT_TRUE(torch::equal(t.grad(), checkpointed.parameters().at(id).grad())) << id;
    }
  // Checkpointed dropout with the sequential generator would draw new numbers: refused.
  try {
    every_layer.forward_backward(batch);
    ADD_FAILURE() << "checkpointed dropout ran with the sequential generator";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs them drawn by RngPolicy::PerOp"), std::string::npos) << e.what();
  }
}

// Selective recomputation: each block's attention core (scores, mask,
// softmax, attention dropout, up to the product with v) as a segment. Found on
// the GPT's two blocks; bit-equal with dropout; the blocks' stage keeps less
// than keeping everything and more than recomputing whole layers.
TEST(StageExecutionCore, AttentionCoresRecomputeBitEqualAndKeepLess) {
  auto m = make_example_model(spec_of({"gpt", true, 0.1}));
  const SampleBatch batch = m.batch(2);
  const TracedModel traced = trace(m.module, m.loss, batch);
  const ProxyGraph proxy = build_proxy_graph(traced);
  const auto cores = attention_cores(proxy);
  ASSERT_EQ(cores.size(), 2u);
  for (const auto& core : cores) {
    EXPECT_EQ(proxy.ops[core.ops.front()].kind, "aten::matmul");
    EXPECT_EQ(proxy.ops[core.ops.back()].kind, "aten::matmul");
    EXPECT_NE(proxy.layers[core.layer].name.find("blocks."), std::string::npos);
    bool softmax = false;
    for (int op : core.ops) softmax = softmax || proxy.ops[op].kind == "aten::softmax";
    EXPECT_TRUE(softmax);
  }
  const auto assignment = trine::testing::even_stages(static_cast<int>(proxy.layers.size()), 3);
  SequentialStagedModel kept(traced, proxy, assignment), selective(traced, proxy, assignment),
      layers(traced, proxy, assignment);
  for (int s = 0; s < 3; ++s) {
    selective.checkpoint_layers(s, {}, /*attention_cores=*/true);
    std::vector<std::vector<int>> each;
    for (int l : kept.stages()[s].layers) each.push_back({l});
    layers.checkpoint_layers(s, each);
  }
  const RngPolicy rng{RngPolicy::Mode::PerOp, 11, 3};
  StageMeasurements kept_m, selective_m, layers_m;
  const auto loss = kept.forward_backward(batch, rng, &kept_m);
  EXPECT_TRUE(torch::equal(loss, selective.forward_backward(batch, rng, &selective_m)));
  layers.forward_backward(batch, rng, &layers_m);
  kept.reduce_shared_gradients();
  selective.reduce_shared_gradients();
  for (const auto& p : proxy.params)
    if (p.requires_grad) {
      EXPECT_TRUE(torch::equal(kept.gradient(p.name), selective.gradient(p.name))) << p.name;
    }
  EXPECT_LT(selective_m.kept_bytes[1], kept_m.kept_bytes[1]);
  EXPECT_GT(selective_m.kept_bytes[1], layers_m.kept_bytes[1]);
  std::printf("blocks' stage keeps %lld bytes, %lld with attention cores recomputed, %lld with whole layers\n",
              static_cast<long long>(kept_m.kept_bytes[1]), static_cast<long long>(selective_m.kept_bytes[1]),
              static_cast<long long>(layers_m.kept_bytes[1]));
}

namespace {
struct NormNetImpl : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
  NormNetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(6, 8));
    bn = register_module("bn", torch::nn::BatchNorm1d(8));
    fc2 = register_module("fc2", torch::nn::Linear(8, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(bn(fc1(x)))); }
};
TORCH_MODULE(NormNet);
}  // namespace

// BatchNorm updates its running statistics in the forward: a recomputed stage
// updates them once, as the kept one does, and gets the same gradients.
TEST(StageExecutionCore, RecomputedBatchNormUpdatesItsStatisticsOnce) {
  torch::manual_seed(3);
  NormNet net;
  LossFn loss = [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>& t) {
    return torch::nn::functional::cross_entropy(o[0], t[0]);
  };
  const SampleBatch batch{{torch::randn({5, 6})}, {torch::randint(0, 3, {5})}};
  const TracedModel traced = trace(torch::nn::AnyModule(net), loss, batch);
  const ProxyGraph proxy = build_proxy_graph(traced);
  const auto assignment = trine::testing::even_stages(static_cast<int>(proxy.layers.size()), 2);
  SequentialStagedModel kept(traced, proxy, assignment), recomputed(traced, proxy, assignment);
  recomputed.recompute_every_stage(true);
  const RngPolicy rng{RngPolicy::Mode::PerOp, 0, 0};
  for (int step = 0; step < 2; ++step) {
    EXPECT_TRUE(torch::equal(kept.forward_backward(batch, rng), recomputed.forward_backward(batch, rng)));
  }
  for (const auto& p : proxy.params) {
    const auto a = kept.parameter(p.name), b = recomputed.parameter(p.name);
    EXPECT_TRUE(torch::equal(a, b)) << p.name;  // buffers: running stats, num_batches_tracked = 2
    if (p.requires_grad) {
      EXPECT_TRUE(torch::equal(a.grad(), b.grad())) << p.name;
    }
  }
  EXPECT_EQ(recomputed.parameter("bn.num_batches_tracked").item<int64_t>(), 2);
  // The same with the BatchNorm's layer as a checkpointed segment of its stage.
  SequentialStagedModel segmented(traced, proxy, assignment);
  for (int s = 0; s < 2; ++s) {
    std::vector<std::vector<int>> each;
    for (int l : segmented.stages()[s].layers) each.push_back({l});
    segmented.checkpoint_layers(s, each);
  }
  kept.zero_grad();
  for (int step = 0; step < 2; ++step) segmented.forward_backward(batch, rng);
  for (const auto& p : proxy.params) {
    const auto a = recomputed.parameter(p.name), b = segmented.parameter(p.name);
    EXPECT_TRUE(torch::equal(a, b)) << p.name;
    if (p.requires_grad) {
      EXPECT_TRUE(torch::equal(a.grad(), b.grad())) << p.name;
    }
  }
  EXPECT_EQ(segmented.parameter("bn.num_batches_tracked").item<int64_t>(), 2);
}
