#include "trine/examples/example_tasks.h"

#include "trine/examples/branch_model.h"
#include "trine/examples/gpt.h"
#include "trine/examples/skip_model.h"
#include "trine/examples/synthetic_data.h"

namespace trine {

namespace ex = trine::examples;

namespace {

// Features and labels from a fixed random "teacher", so that the task is learnable.
SampleBatch teacher_batch(int64_t batch, const std::vector<int64_t>& features, int64_t classes, int64_t aux,
                          uint64_t seed, int64_t step) {
  auto teacher = at::make_generator<at::CPUGeneratorImpl>(seed + 77);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003ULL + static_cast<uint64_t>(step) + 1);
  SampleBatch b;
  torch::Tensor logits = torch::zeros({batch, classes});
  for (int64_t f : features) {
    auto x = torch::randn({batch, f}, gen);
    logits += x.matmul(torch::randn({f, classes}, teacher));
    b.inputs.push_back(x);
  }
  b.targets.push_back(logits.argmax(1));
  if (aux > 0) b.targets.push_back(torch::tanh(b.inputs.back().matmul(torch::randn({features.back(), aux}, teacher))));
  return b;
}

}  // namespace

ExampleModel make_example_model(const ModelSpec& s) {
  TORCH_CHECK(s.layers >= 1, "--layers must be >= 1, got ", s.layers);
  TORCH_CHECK(s.hidden >= 1, "--hidden must be >= 1, got ", s.hidden);
  TORCH_CHECK(s.batch >= 1, "--batch must be >= 1, got ", s.batch);
  TORCH_CHECK(s.dropout >= 0 && s.dropout < 1, "--dropout must be in [0, 1), got ", s.dropout);
  TORCH_CHECK(!s.deferred || s.name == "gpt", "deferred parameters are built in by the gpt example only (model '",
              s.name, "')");
  torch::manual_seed(s.seed);
  ExampleModel m;
  if (s.name == "gpt") {
    TORCH_CHECK(s.heads >= 1 && s.hidden % s.heads == 0, "--hidden (", s.hidden, ") must be a multiple of --heads (",
                s.heads, ")");
    ex::GptConfig cfg;
    cfg.vocab = s.vocab;
    cfg.seq_len = s.seq_len;
    cfg.hidden = s.hidden;
    cfg.heads = s.heads;
    cfg.layers = s.layers;
    cfg.dropout = s.dropout;
    cfg.tie_weights = s.tied;
    if (s.deferred) cfg.on_part_built = [](torch::nn::Module& part) { defer_parameters(part); };
    ex::Gpt gpt(cfg);
    m.init = [defaults = torch_default_init(*gpt)](const std::string& name, torch::Tensor& whole) {
      if (whole.dim() == 2) whole.normal_(0.0, 0.02);  // as GptImpl does
      else defaults(name, whole);
    };
    m.ptr = gpt.ptr();
    m.module = torch::nn::AnyModule(gpt);
    m.loss = [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>& t) { return ex::lm_loss(o[0], t[0]); };
    m.batch = [s](int64_t step) {
      auto [x, y] = ex::token_batch(s.vocab, s.seq_len, s.batch, s.seed, step);
      return SampleBatch{{x}, {y}};
    };
    m.analytic_flops = ex::gpt_forward_flops(cfg, s.batch);
  } else if (s.name == "skip") {
    ex::SkipConfig cfg;
    cfg.hidden = s.hidden;
    cfg.layers = s.layers;
    cfg.dropout = s.dropout;
    cfg.distinct_layers = s.distinct_layers;
    ex::SkipModel model(cfg);
    m.ptr = model.ptr();
    m.module = torch::nn::AnyModule(model);
    m.loss = [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>& t) {
      return torch::nn::functional::cross_entropy(o[0], t[0]);
    };
    m.batch = [s, cfg](int64_t step) { return teacher_batch(s.batch, {cfg.in_features}, cfg.classes, 0, s.seed, step); };
  } else if (s.name == "branch") {
    ex::BranchConfig cfg;
    cfg.hidden = s.hidden;
    cfg.depth = s.layers;
    cfg.dropout = s.dropout;
    ex::BranchModel model(cfg);
    m.ptr = model.ptr();
    m.module = torch::nn::AnyModule(model);
    m.loss = [](const std::vector<torch::Tensor>& o, const std::vector<torch::Tensor>& t) {
      return ex::branch_loss(o[0], o[1], t[0], t[1]);
    };
    m.batch = [s, cfg](int64_t step) {
      return teacher_batch(s.batch, {cfg.a_features, cfg.b_features}, cfg.classes, cfg.aux_outputs, s.seed, step);
    };
  } else {
    TORCH_CHECK(false, "unknown model '", s.name, "': choose gpt, skip or branch");
  }
  if (!m.init) m.init = torch_default_init(*m.ptr);
  return m;
}

}  // namespace trine
