#include "job_config.h"

#include "trine/common/files.h"
#include "trine/runtime/losses.h"

#include <algorithm>

namespace trine::cli {

namespace {

std::string resolve(const std::string& path, const std::string& dir) {
  return path.empty() || path[0] == '/' ? path : dir + "/" + path;
}

ModelSpec read_example_model(JsonObjectReader& m) {
  ModelSpec s;
  s.name = m.get("name", s.name);
  s.layers = m.get("layers", s.layers);
  s.hidden = m.get("hidden", s.hidden);
  s.heads = m.get("heads", s.heads);
  s.seq_len = m.get("seq_len", s.seq_len);
  s.vocab = m.get("vocab", s.vocab);
  s.dropout = m.get("dropout", s.dropout);
  s.tied = m.get("tied", s.tied);
  s.deferred = m.get("deferred", s.deferred);
  s.seed = static_cast<uint64_t>(m.get("seed", static_cast<int64_t>(s.seed)));
  return s;
}

TorchScriptSpec read_torchscript_model(JsonObjectReader& m, const std::string& dir) {
  TorchScriptSpec t;
  t.path = resolve(m.required<std::string>("torchscript"), dir);
  for (auto& in : m.objects("inputs")) {
    InputSpec spec;
    spec.shape = in.required<std::vector<int64_t>>("shape");
    spec.dtype = in.get("dtype", spec.dtype);
    in.finish();
    TORCH_CHECK(std::all_of(spec.shape.begin(), spec.shape.end(), [](int64_t d) { return d > 0; }), in.path(),
                ".shape must hold positive sizes (one sample's shape, without the batch dimension)");
    TORCH_CHECK(spec.dtype == "float32" || spec.dtype == "float64" || spec.dtype == "int64", in.path(), ".dtype '",
                spec.dtype, "' is unknown; use \"float32\", \"float64\" or \"int64\"");
    t.inputs.push_back(spec);
  }
  TORCH_CHECK(!t.inputs.empty(), "config.model.inputs is required with config.model.torchscript: one "
              "{\"shape\": [...], \"dtype\": ...} per input of forward, the shape of one sample without the batch "
              "dimension (e.g. [{\"shape\": [64], \"dtype\": \"int64\"}] for token ids)");
  t.loss = m.required<std::string>("loss");
  named_loss(t.loss);  // throws naming the known losses
  return t;
}

DataSpec read_data(JsonObjectReader& d, const std::string& dir) {
  DataSpec s;
  s.kind = d.get("kind", s.kind);
  TORCH_CHECK(s.kind == "synthetic" || s.kind == "tokens" || s.kind == "tensors", "config.data.kind '", s.kind,
              "' is unknown; use \"tokens\" (a binary file of token ids), \"tensors\" (a torch.save file of inputs "
              "and labels) or \"synthetic\" (an example model's built-in data)");
  if (s.kind != "synthetic") s.path = resolve(d.required<std::string>("path"), dir);
  if (s.kind == "tokens") s.dtype = d.get("dtype", s.dtype);
  return s;
}

}  // namespace

JobConfig JobConfig::from_json(const nlohmann::json& j, const std::string& dir) {
  JsonObjectReader r(j, "config");
  JobConfig c;
  {
    auto m = r.object("model");
    if (m.has("torchscript")) c.torchscript = read_torchscript_model(m, dir);
    else c.model = read_example_model(m);
    m.finish();
  }
  {
    auto d = r.object("data");
    c.data = read_data(d, dir);
    d.finish();
  }
  const bool example = c.torchscript.path.empty();
  TORCH_CHECK(!example || c.data.kind != "tensors", "config.data.kind \"tensors\" needs the user's model "
              "(config.model.torchscript); the example models read \"synthetic\" or \"tokens\" data");
  TORCH_CHECK(example || c.data.kind != "synthetic", "config.data.kind \"synthetic\" is the example models' data; "
              "a TorchScript model needs \"tokens\" or \"tensors\" data (config.data.path)");
  TORCH_CHECK(c.data.kind != "tokens" || example || c.torchscript.loss == "lm_cross_entropy",
              "token data gives next-token targets: config.model.loss must be \"lm_cross_entropy\", not \"",
              c.torchscript.loss, "\"");
  TORCH_CHECK(c.data.kind != "tokens" || !example || c.model.name == "gpt",
              "token data needs a language model: config.model.name must be \"gpt\", not \"", c.model.name, "\"");
  c.train = TrainConfig::read(r);
  r.finish();
  TORCH_CHECK(c.train.global_batch > 0, "config.global_batch is required for `trine train` (samples per step)");
  c.model.batch = c.train.global_batch;
  return c;
}

JobConfig JobConfig::load(const std::string& path) {
  const std::string text = read_file(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    TORCH_CHECK(false, "config file ", path, " is not valid JSON: ", e.what());
  }
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(slash, 1));
  try {
    return from_json(j, dir);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "config file ", path, ": ", e.what_without_backtrace());
  }
}

}  // namespace trine::cli
