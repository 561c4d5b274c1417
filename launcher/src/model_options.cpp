#include "model_options.h"

#include "trine/runtime/losses.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/script.h>

#include <cmath>

namespace trine::cli {

namespace {

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

LoadedModel load_torchscript(const ModelArgs& args, bool need_loss) {
  TORCH_CHECK(!args.shapes.empty(), "--torchscript needs --input-shape for each input of forward, e.g. --input-shape 8,16");
  TORCH_CHECK(args.dtypes.size() <= 1 || args.dtypes.size() == args.shapes.size(),
              "give --input-dtype once, or once per --input-shape");
  torch::jit::Module module = load_torchscript_file(args.torchscript);
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& s : args.shapes) shapes.push_back(parse_shape(s));
  const auto dtypes = args.dtypes;
  const int64_t high = args.int_high, classes = args.classes;
  const std::string loss_name = args.loss;
  auto batch = [shapes, dtypes, high, classes, loss_name](int64_t step) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(step) + 1);
    SampleBatch b;
    for (size_t i = 0; i < shapes.size(); ++i) {
      const std::string dtype = dtypes.empty() ? "float" : dtypes[dtypes.size() == 1 ? 0 : i];
      b.inputs.push_back(dtype == "long" ? torch::randint(high, shapes[i], gen, torch::kLong)
                                         : torch::randn(shapes[i], gen));
    }
    // Targets for a named loss: class ids per row, or per position of the first input.
    if (loss_name == "cross_entropy")
      b.targets.push_back(torch::randint(classes, {shapes[0][0]}, gen, torch::kLong));
    else if (loss_name == "lm_cross_entropy")
      b.targets.push_back(torch::randint(classes, {shapes[0][0], shapes[0].size() > 1 ? shapes[0][1] : 1}, gen,
                                         torch::kLong));
    return b;
  };
  if (!loss_name.empty()) {
    TORCH_CHECK(loss_name != "mse", "--loss mse needs targets of the output's shape; the command line makes targets "
                "for cross_entropy and lm_cross_entropy only (the config file's data can hold mse targets)");
    LoadedModel m;
    m.traced = trace(module, need_loss ? named_loss(loss_name) : LossFn(), batch(0));
    m.batch = batch;
    return m;
  }
  LossFn sum_of_outputs = [](const std::vector<torch::Tensor>& outputs, const std::vector<torch::Tensor>&) {
    torch::Tensor total;
    for (const auto& o : outputs)
      if (o.is_floating_point()) total = total.defined() ? total + o.sum() : o.sum();
    TORCH_CHECK(total.defined(), "the TorchScript model has no floating-point output to train");
    return total;
  };
  LoadedModel m;
  m.traced = trace(module, need_loss ? sum_of_outputs : LossFn(), batch(0));
  m.batch = batch;
  m.stand_in_loss = need_loss;
  return m;
}

}  // namespace

torch::jit::Module load_torchscript_file(const std::string& path) {
  try {
    return torch::jit::load(path);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "cannot load TorchScript file '", path, "': ", e.what_without_backtrace(),
                "\n(make it in Python with torch.jit.trace or torch.jit.script and save it with torch.jit.save; a "
                "file from torch.save(model) is not TorchScript)");
  }
}

void add_model_options(CLI::App* cmd, ModelArgs& args, bool allow_torchscript) {
  ModelSpec& spec = args.spec;
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
  if (!allow_torchscript) return;
  cmd->add_option("--torchscript", args.torchscript, "a saved TorchScript model instead of an example")
      ->check(CLI::ExistingFile);
  cmd->add_option("--input-shape", args.shapes, "shape of a forward input, e.g. 8,16 (repeat per input)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--input-dtype", args.dtypes, "float or long (once, or once per input)")
      ->check(CLI::IsMember({"float", "long"}))
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--int-high", args.int_high, "integer inputs are drawn from [0, N)")->check(CLI::PositiveNumber);
  cmd->add_option("--loss", args.loss, "the TorchScript model's loss (default: the sum of its outputs)")
      ->check(CLI::IsMember({"cross_entropy", "lm_cross_entropy"}));
  cmd->add_option("--classes", args.classes, "targets of --loss are drawn from [0, N)")->check(CLI::PositiveNumber);
}

LoadedModel load_model(const ModelArgs& args, bool need_loss) {
  if (!args.torchscript.empty()) return load_torchscript(args, need_loss);
  auto example = make_example_model(args.spec);
  LoadedModel m;
  m.traced = trace(example.module, example.loss, example.batch(0));
  m.batch = example.batch;
  return m;
}

int64_t parse_bytes(const std::string& text, const char* option) {
  size_t used = 0;
  double value = -1;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
  }
  const std::string unit = used > 0 ? text.substr(used) : "";
  double scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "KiB") scale = 1024.0;
  else if (unit == "MiB") scale = 1024.0 * 1024;
  else if (unit == "GiB") scale = 1024.0 * 1024 * 1024;
  else if (unit == "KB") scale = 1e3;
  else if (unit == "MB") scale = 1e6;
  else if (unit == "GB") scale = 1e9;
  TORCH_CHECK(used > 0 && value >= 0 && scale > 0 && std::isfinite(value), option, " '", text,
              "': expected a size such as 2GiB, 512MiB, 1.5GB or a byte count");
  return static_cast<int64_t>(std::llround(value * scale));
}

}  // namespace trine::cli
