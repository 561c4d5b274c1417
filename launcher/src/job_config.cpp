#include "job_config.h"

#include "trine/frontend/atomic_file.h"

namespace trine::cli {

JobConfig JobConfig::from_json(const nlohmann::json& j) {
  JsonObjectReader r(j, "config");
  JobConfig c;
  {
    auto m = r.object("model");
    ModelSpec& s = c.model;
    s.name = m.get("name", s.name);
    s.layers = m.get("layers", s.layers);
    s.hidden = m.get("hidden", s.hidden);
    s.heads = m.get("heads", s.heads);
    s.seq_len = m.get("seq_len", s.seq_len);
    s.vocab = m.get("vocab", s.vocab);
    s.dropout = m.get("dropout", s.dropout);
    s.tied = m.get("tied", s.tied);
    s.seed = static_cast<uint64_t>(m.get("seed", static_cast<int64_t>(s.seed)));
    m.finish();
  }
  {
    auto d = r.object("data");
    c.data = d.get("kind", c.data);
    d.finish();
    TORCH_CHECK(c.data == "synthetic", "config.data.kind '", c.data,
                "' is unknown; \"synthetic\" (the model's built-in data) is the one kind so far");
  }
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
  try {
    return from_json(j);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "config file ", path, ": ", e.what_without_backtrace());
  }
}

}  // namespace trine::cli
