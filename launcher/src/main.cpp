// The `trine` command: inspect a model's layers, train it staged in one process.
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/sequential_staged_model.h"
#include "trine/frontend/trace.h"
#include "trine/launcher/example_models.h"

#include <CLI/CLI.hpp>
#include <torch/script.h>

#include <chrono>
#include <cstdio>
#include <iostream>

namespace {

using namespace trine;

void add_model_options(CLI::App* cmd, ModelSpec& spec) {
  cmd->add_option("--model", spec.name, "example model")->check(CLI::IsMember({"gpt", "skip", "branch"}));
  cmd->add_option("--layers", spec.layers, "GPT blocks / skip-model layers / branch depth")->check(CLI::PositiveNumber);
  cmd->add_option("--hidden", spec.hidden, "hidden size")->check(CLI::PositiveNumber);
  cmd->add_option("--heads", spec.heads, "attention heads (GPT)")->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", spec.seq_len, "sequence length (GPT)")->check(CLI::PositiveNumber);
  cmd->add_option("--vocab", spec.vocab, "vocabulary size (GPT)")->check(CLI::Range(2, 1 << 24));
  cmd->add_option("--batch", spec.batch, "microbatch size")->check(CLI::PositiveNumber);
  cmd->add_option("--dropout", spec.dropout, "dropout probability")->check(CLI::Range(0.0, 0.99));
  cmd->add_flag("--tied", spec.tied, "tie the GPT's LM head to its token embedding");
  cmd->add_option("--seed", spec.seed, "seed of weights and data");
}

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = text.find(',', pos);
    const std::string part = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    try {
      size_t used = 0;
      const long long v = std::stoll(part, &used);
      TORCH_CHECK(used == part.size() && v > 0, "");
      shape.push_back(v);
    } catch (const std::exception&) {
      TORCH_CHECK(false, "--input-shape '", text, "': expected positive integers separated by commas, e.g. 8,16");
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return shape;
}

int run_inspect(const ModelSpec& spec, const std::string& torchscript, const std::vector<std::string>& shapes,
                const std::vector<std::string>& dtypes, int64_t int_high, const std::string& json_out) {
  TracedModel traced;
  if (!torchscript.empty()) {
    TORCH_CHECK(!shapes.empty(), "--torchscript needs --input-shape for each input of forward, e.g. --input-shape 8,16");
    TORCH_CHECK(dtypes.size() <= 1 || dtypes.size() == shapes.size(), "give --input-dtype once, or once per --input-shape");
    torch::jit::Module module;
    try {
      module = torch::jit::load(torchscript);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "cannot load TorchScript file '", torchscript, "': ", e.what_without_backtrace());
    }
    SampleBatch sample;
    for (size_t i = 0; i < shapes.size(); ++i) {
      const std::string dtype = dtypes.empty() ? "float" : dtypes[dtypes.size() == 1 ? 0 : i];
      const auto shape = parse_shape(shapes[i]);
      sample.inputs.push_back(dtype == "long" ? torch::randint(int_high, shape, torch::kLong) : torch::randn(shape));
    }
    traced = trace(module, nullptr, sample);
  } else {
    auto m = make_example_model(spec);
    traced = trace(m.module, m.loss, m.batch(0));
  }
  const ProxyGraph proxy = build_proxy_graph(traced);
  std::cout << proxy.layer_table();
  for (const auto& w : traced.warnings) std::cout << "tracer warning: " << w << "\n";
  if (!json_out.empty()) {
    proxy.save(json_out);
    std::cout << "proxy graph written to " << json_out << "\n";
  }
  return 0;
}

int run_train_staged(const ModelSpec& spec, int stages, int64_t steps, double lr, int64_t log_every) {
  auto m = make_example_model(spec);
  const TracedModel traced = trace(m.module, m.loss, m.batch(0));
  ProxyGraph proxy = build_proxy_graph(traced);
  const int num_layers = static_cast<int>(proxy.layers.size());
  TORCH_CHECK(stages >= 1 && stages <= num_layers, "--stages ", stages, " is not in [1, ", num_layers,
              "] (the model has ", num_layers, " layers)");
  const auto assignment = contiguous_assignment(num_layers, stages);
  SequentialStagedModel staged(traced, std::move(proxy), assignment);
  for (const auto& st : staged.stages()) {
    std::cout << "stage " << st.stage << ":";
    for (int l : st.layers) std::cout << " " << staged.proxy().layers[l].name;
    std::cout << "  (" << st.inputs.size() << " inputs, " << st.outputs.size() << " outputs)\n";
  }
  torch::optim::AdamW opt(staged.parameters(), torch::optim::AdamWOptions(lr).weight_decay(0.01));
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    staged.zero_grad();
    RngPolicy rng{RngPolicy::Mode::PerOp, spec.seed, step};
    auto loss = staged.forward_backward(m.batch(step), rng);
    staged.reduce_shared_gradients();
    opt.step();
    if (step % log_every == 0 || step + 1 == steps) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("step %5lld  loss %.4f  %.1f samples/s\n", static_cast<long long>(step), loss.item<double>(),
                  (step + 1) * spec.batch / secs);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"trine: automatic 3D-parallel training of LibTorch models"};
  app.require_subcommand(1);
  // A later option wins (scripts add defaults the user may override).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  int threads = 0;
  app.add_option("--threads", threads, "intra-op threads (default: LibTorch's choice, OMP_NUM_THREADS)")
      ->check(CLI::NonNegativeNumber);

  ModelSpec spec;
  std::string torchscript, json_out;
  std::vector<std::string> shapes, dtypes;
  int64_t int_high = 2;
  auto* inspect = app.add_subcommand("inspect", "trace a model and print its layers, parameters and costs");
  add_model_options(inspect, spec);
  inspect->add_option("--torchscript", torchscript, "a saved TorchScript model instead of an example")
      ->check(CLI::ExistingFile);
  inspect->add_option("--input-shape", shapes, "shape of a forward input, e.g. 8,16 (repeat per input)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  inspect->add_option("--input-dtype", dtypes, "float or long (once, or once per input)")
      ->check(CLI::IsMember({"float", "long"}))
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  inspect->add_option("--int-high", int_high, "integer inputs are drawn from [0, N)")->check(CLI::PositiveNumber);
  inspect->add_option("--json", json_out, "also write the proxy graph as JSON");

  int stages = 2;
  int64_t steps = 20, log_every = 5;
  double lr = 3e-3;
  auto* staged = app.add_subcommand("train-staged", "train an example model cut into stages, in one process");
  add_model_options(staged, spec);
  staged->add_option("--stages", stages, "number of pipeline stages")->check(CLI::PositiveNumber);
  staged->add_option("--steps", steps, "training steps")->check(CLI::PositiveNumber);
  staged->add_option("--lr", lr, "AdamW learning rate")->check(CLI::PositiveNumber);
  staged->add_option("--log-every", log_every, "print every N steps")->check(CLI::PositiveNumber);

  CLI11_PARSE(app, argc, argv);
  try {
    if (threads > 0) at::set_num_threads(threads);
    if (*inspect) return run_inspect(spec, torchscript, shapes, dtypes, int_high, json_out);
    if (*staged) return run_train_staged(spec, stages, steps, lr, log_every);
  } catch (const c10::Error& e) {
    std::cerr << "trine: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "trine: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
