// The sharding analysis finds Megatron's layout by propagation: on the
// example GPT, q/k/v (fused) and the first MLP linear column-parallel, the
// attention output and second MLP linear row-parallel, heads split in the
// views, two all-reduces per block; the LM head and linears whose split
// output would meet a layer norm or the loss stay whole; overrides are checked.
#include "../support/error_of.h"
#include "../support/reference.h"
#include "trine/examples/residual_mlp.h"
#include "trine/frontend/trace.h"
#include "trine/tensor_parallel/parameter_shards.h"
#include "trine/tensor_parallel/sharding_analysis.h"
#include "../../tensor_parallel/src/split_through_view.h"

#include <gtest/gtest.h>

namespace trine {
namespace {

using Mode = LinearDecision::Mode;

TracedModel gpt(bool tied) {
  ModelSpec spec = testing::small_gpt_spec(tied);
  auto model = make_example_model(spec);
  return trace(model.module, model.loss, model.batch(0));
}

const LinearDecision& decision(const ShardingAnalysis& a, const std::string& weight) {
  for (const auto& d : a.linears)
    if (d.weight == weight) return d;
  throw std::runtime_error("no linear with weight " + weight);
}

TEST(ShardingAnalysis, FindsMegatronsLayoutOnTheGpt) {
  const ShardingAnalysis a = analyze_sharding(gpt(false), 2);
  std::printf("%s", sharding_table(a).c_str());
  for (int b = 0; b < 2; ++b) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    EXPECT_EQ(decision(a, p + "attn.qkv.weight").mode, Mode::Column);
    EXPECT_EQ(decision(a, p + "attn.qkv.weight").blocks, 3);
    EXPECT_EQ(decision(a, p + "attn.proj.weight").mode, Mode::Row);
    EXPECT_EQ(decision(a, p + "fc.weight").mode, Mode::Column);
    EXPECT_EQ(decision(a, p + "fc.weight").blocks, 1);
    EXPECT_EQ(decision(a, p + "fc_out.weight").mode, Mode::Row);
  }
  // Vocabulary parallelism: the token embedding cut by rows, the LM head by
  // classes into the loss; position embeddings (ids not from the data) whole.
  EXPECT_EQ(decision(a, "tok_emb.weight").mode, Mode::Vocab);
  const auto& head = decision(a, "head.weight");
  EXPECT_EQ(head.mode, Mode::Column);
  EXPECT_NE(head.why.find("vocabulary-parallel cross-entropy"), std::string::npos) << head.why;
  EXPECT_THROW(decision(a, "pos_emb.weight"), std::runtime_error);
  EXPECT_EQ(a.forward_allreduces, 4 + 1 + 1);  // per row-parallel linear, the embedding, the loss
  // The views to [batch, seq, heads, head_dim] and back, and the logits'
  // reshape to [rows, vocab], change their sizes.
  EXPECT_EQ(a.reshapes, (std::vector<std::string>{"aten::reshape to [16, 64]: dimension 1 of 64 becomes 32 per rank",
                                                  "aten::view to [2, 8, 32]: dimension 2 of 32 becomes 16 per rank",
                                                  "aten::view to [2, 8, 4, 8]: dimension 2 of 4 becomes 2 per rank"}));
  // With 4 ranks the heads still divide; with 3 the fused q/k/v does not.
  EXPECT_EQ(decision(analyze_sharding(gpt(false), 4), "blocks.0.attn.qkv.weight").mode, Mode::Column);
  const auto three = analyze_sharding(gpt(false), 3);
  EXPECT_EQ(decision(three, "blocks.0.attn.qkv.weight").mode, Mode::Replicated);
  EXPECT_EQ(decision(three, "blocks.0.attn.proj.weight").mode, Mode::Replicated);
  // With 8, the 4 heads do not split: attention stays whole, the MLP splits.
  const auto eight = analyze_sharding(gpt(false), 8);
  EXPECT_EQ(decision(eight, "blocks.0.attn.qkv.weight").mode, Mode::Replicated);
  EXPECT_EQ(decision(eight, "blocks.0.fc.weight").mode, Mode::Column);
}

// A head tied to the token embedding: both cut by the same rows; with a tp
// that does not divide the vocabulary, both whole (and the embedding named).
TEST(ShardingAnalysis, TiedHeadAndEmbeddingAreCutAlike) {
  const TracedModel traced = gpt(true);
  const ShardingAnalysis a = analyze_sharding(traced, 2);
  std::vector<Mode> tied;
  for (const auto& d : a.linears)
    if (d.weight == "tok_emb.weight") tied.push_back(d.mode);
  EXPECT_EQ(tied, (std::vector<Mode>{Mode::Vocab, Mode::Column}));
  EXPECT_EQ(decision(a, "blocks.1.fc.weight").mode, Mode::Column);
  EXPECT_EQ(parameter_shards(traced, a).at("tok_emb.weight").dim, 0);

  const ShardingAnalysis three = analyze_sharding(gpt(true), 3);
  for (const auto& d : three.linears) {
    if (d.weight == "tok_emb.weight") {
      EXPECT_EQ(d.mode, Mode::Replicated) << d.why;
    }
  }
  const auto& embedding = decision(three, "tok_emb.weight");
  EXPECT_TRUE(embedding.indivisible);
  EXPECT_NE(embedding.why.find("64 rows do not split in 3"), std::string::npos) << embedding.why;
}

// The residual MLP of examples/one_line_trainer.cpp: the stem's split output
// would meet the first block's layer norm, the head's the loss.
TEST(ShardingAnalysis, ResidualMlpSplitsOnlyItsBlock) {
  examples::ResidualMlp mlp(16, 32, 1, 8);
  const SampleBatch sample{{torch::randn({4, 16})}, {torch::randint(0, 8, {4})}};
  const auto traced = trace(torch::nn::AnyModule(mlp),
                            [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>& t) {
                              return torch::nn::functional::cross_entropy(o[0], t[0]);
                            },
                            sample);
  const ShardingAnalysis a = analyze_sharding(traced, 2);
  std::printf("%s", sharding_table(a).c_str());
  EXPECT_EQ(decision(a, "embed.weight").mode, Mode::Replicated);
  EXPECT_NE(decision(a, "embed.weight").why.find("layer_norm"), std::string::npos);
  EXPECT_EQ(decision(a, "blocks.0.fc1.weight").mode, Mode::Column);
  EXPECT_EQ(decision(a, "blocks.0.fc2.weight").mode, Mode::Row);
  EXPECT_EQ(decision(a, "head.weight").mode, Mode::Column);  // 8 classes: a vocabulary-parallel loss
  EXPECT_EQ(a.forward_allreduces, 1 + 1);

  // Overrides: keeping the blocks whole is fine; forcing the stem column or
  // the first block linear row is refused.
  ShardingOverrides keep;
  keep.replicate = {"blocks.*.fc*"};
  const auto whole = analyze_sharding(traced, 2, keep);
  EXPECT_EQ(decision(whole, "blocks.0.fc1.weight").mode, Mode::Replicated);
  EXPECT_EQ(decision(whole, "blocks.0.fc2.weight").mode, Mode::Replicated);
  EXPECT_EQ(whole.forward_allreduces, 1);
  ShardingOverrides bad;
  bad.column = {"embed.weight"};
  const std::string err = testing::error_of([&] { analyze_sharding(traced, 2, bad); });
  EXPECT_NE(err.find("tensor_parallel.column (--tp-column) 'embed.weight' makes 'embed.weight' column-parallel, "
                     "but its split output reaches aten::layer_norm"),
            std::string::npos)
      << err;
  bad.column.clear();
  bad.row = {"blocks.0.fc1.weight"};
  EXPECT_NE(testing::error_of([&] { analyze_sharding(traced, 2, bad); })
                .find("tensor_parallel.row (--tp-row) names 'blocks.0.fc1.weight'"),
            std::string::npos);
}

// Each rank's slices: column weights by output rows (q/k/v per fused part)
// with their biases, row weights by input columns, row biases whole; the
// slices of all ranks put back together are the whole parameter.
// A tp that divides the features but not the heads: the views refuse the
// split, and the trainer's check names the linears and both fixes.
TEST(ShardingAnalysis, HeadsThatDoNotDivideAreAnError) {
  ModelSpec spec = testing::small_gpt_spec();
  spec.hidden = 48;
  spec.heads = 3;
  auto model = make_example_model(spec);
  const ShardingAnalysis a = analyze_sharding(trace(model.module, model.loss, model.batch(0)), 2);
  EXPECT_TRUE(decision(a, "blocks.0.attn.qkv.weight").indivisible);
  EXPECT_FALSE(decision(a, "blocks.0.fc.weight").indivisible);
  EXPECT_EQ(decision(a, "blocks.0.fc.weight").mode, Mode::Column);
  const std::string e = testing::error_of([&] { check_tensor_parallel_layout(a, "tp", "replicate"); });
  EXPECT_NE(e.find("tp = 2 does not divide what tensor parallelism would cut in 2 linears"), std::string::npos) << e;
  EXPECT_NE(e.find("blocks.0.attn.qkv.weight: split, its output would reach aten::view"), std::string::npos) << e;
  EXPECT_NE(e.find("keep them whole on purpose with replicate"), std::string::npos) << e;
  check_tensor_parallel_layout(analyze_sharding(gpt(false), 2), "tp", "replicate");  // the usual GPT passes
}

TEST(ShardingAnalysis, ParameterShardsFollowTheDecisions) {
  const TracedModel traced = gpt(false);
  const auto shards = parameter_shards(traced, analyze_sharding(traced, 2));
  auto shard = [&](const std::string& name) {
    auto it = shards.find(name);
    return it == shards.end() ? std::string("whole") : std::to_string(it->second.dim) + "/" +
                                                         std::to_string(it->second.blocks);
  };
  EXPECT_EQ(shard("blocks.0.attn.qkv.weight"), "0/3");
  EXPECT_EQ(shard("blocks.0.attn.qkv.bias"), "0/3");
  EXPECT_EQ(shard("blocks.0.attn.proj.weight"), "1/1");
  EXPECT_EQ(shard("blocks.0.attn.proj.bias"), "whole");
  EXPECT_EQ(shard("blocks.1.fc.weight"), "0/1");
  EXPECT_EQ(shard("blocks.1.fc.bias"), "0/1");
  EXPECT_EQ(shard("blocks.1.fc_out.weight"), "1/1");
  EXPECT_EQ(shard("blocks.1.ln2.weight"), "whole");
  EXPECT_EQ(shard("head.weight"), "0/1");
  EXPECT_EQ(shard("tok_emb.weight"), "0/1");
  EXPECT_EQ(shard("pos_emb.weight"), "whole");
  // The fused q/k/v weight [96, 32]: rank 1 holds rows 16-31, 48-63, 80-95.
  const auto w = torch::arange(96 * 32).reshape({96, 32});
  const ParameterShard qkv = shards.at("blocks.0.attn.qkv.weight");
  const auto r1 = shard_of(w, qkv, 1, 2);
  ASSERT_EQ(r1.sizes(), (std::vector<int64_t>{48, 32}));
  EXPECT_TRUE(torch::equal(r1.narrow(0, 16, 16), w.narrow(0, 48, 16)));
  const auto r0 = shard_of(w, qkv, 0, 2);
  std::vector<torch::Tensor> back;
  for (int b = 0; b < 3; ++b) {
    back.push_back(r0.narrow(0, 16 * b, 16));
    back.push_back(r1.narrow(0, 16 * b, 16));
  }
  EXPECT_TRUE(torch::equal(torch::cat(back, 0), w));
  // whole_of joins the slices back (checkpoints re-cut them for another tp).
  EXPECT_TRUE(torch::equal(whole_of({r0, r1}, qkv), w));
  std::vector<torch::Tensor> fours;
  for (int r = 0; r < 4; ++r) fours.push_back(shard_of(w, qkv, r, 4));
  EXPECT_TRUE(torch::equal(whole_of(fours, qkv), w));
  EXPECT_TRUE(torch::equal(whole_of({w}, ParameterShard{}), w));
}

// Views: heads out of features, features back from heads, batch x heads
// merged (torchvision's attention), fused parts, and what cannot pass.
TEST(ShardingAnalysis, SplitsPassViewsByElementGroups) {
  auto through = [](std::vector<int64_t> in, std::vector<int64_t> out, Placement p, int tp) {
    const auto v = split_through_view(in, out, p, tp);
    return v.placement ? to_string(*v.placement) : "none: " + v.why;
  };
  EXPECT_EQ(through({2, 8, 32}, {2, 8, 4, 8}, Placement::split(2), 2), "split(2)");
  EXPECT_EQ(through({2, 8, 4, 8}, {2, 8, 32}, Placement::split(2), 2), "split(2)");
  EXPECT_EQ(through({8, 2, 32}, {8, 8, 8}, Placement::split(2), 2), "split(1, 2 blocks)");
  EXPECT_EQ(through({8, 8, 8}, {2, 4, 8, 8}, Placement::split(0, 2), 2), "split(1)");
  EXPECT_EQ(through({2, 8, 96}, {16, 96}, Placement::split(2, 3), 2), "split(1, 3 blocks)");
  EXPECT_EQ(through({2, 8, 96}, {2, 8, 3, 32}, Placement::split(2, 3), 2), "split(3)");
  // 4 heads do not split in 8; nor does the batch merged below the split.
  EXPECT_EQ(through({2, 8, 32}, {2, 8, 4, 8}, Placement::split(2), 8).rfind("none", 0), 0u);
  const auto fused = split_through_view({2, 8, 96}, {2, 8, 3, 32}, Placement::split(2), 2);
  EXPECT_FALSE(fused.placement);
  EXPECT_EQ(fused.wants_blocks, 3);
}

}  // namespace
}  // namespace trine
