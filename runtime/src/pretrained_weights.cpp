#include "trine/runtime/pretrained_weights.h"

#include "trine/common/files.h"
#include "trine/common/safetensors.h"

#include <torch/script.h>

#include <map>
#include <set>

namespace trine {

namespace {

// Where the weights come from: names and whole shapes, and this rank's slice
// of one tensor.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual std::map<std::string, std::vector<int64_t>> shapes() const = 0;
  virtual torch::Tensor slice(const std::string& name, const ParameterShard& shard, int rank, int tp) = 0;
};

class SafetensorsSource : public WeightSource {
 public:
  explicit SafetensorsSource(const std::string& path) : file_(path) {}
  std::map<std::string, std::vector<int64_t>> shapes() const override {
    std::map<std::string, std::vector<int64_t>> out;
    for (const auto& [name, e] : file_.entries()) out[name] = e.shape;
    return out;
  }
  // Only the rows of `rank`'s slice are read (one run of rows per fused block).
  torch::Tensor slice(const std::string& name, const ParameterShard& shard, int rank, int tp) override {
    if (shard.whole() || tp == 1) return file_.tensor(name);
    std::vector<torch::Tensor> parts;
    for (const auto& [first, rows] : shard_rows(file_.entries().at(name).shape.at(shard.dim), shard, rank, tp))
      parts.push_back(file_.slice(name, shard.dim, first, rows));
    return torch::cat(parts, shard.dim);
  }

 private:
  SafetensorsFile file_;
};

class TorchScriptSource : public WeightSource {
 public:
  explicit TorchScriptSource(const std::string& path) {
    torch::jit::Module m;
    try {
      m = torch::jit::load(path, c10::kCPU);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "config.weights '", path, "' does not load as a TorchScript file: ", e.what());
    }
    for (const auto& p : m.named_parameters()) tensors_[p.name] = p.value;
    for (const auto& b : m.named_buffers()) tensors_[b.name] = b.value;
  }
  std::map<std::string, std::vector<int64_t>> shapes() const override {
    std::map<std::string, std::vector<int64_t>> out;
    for (const auto& [name, t] : tensors_) out[name] = t.sizes().vec();
    return out;
  }
  torch::Tensor slice(const std::string& name, const ParameterShard& shard, int rank, int tp) override {
    return shard_of(tensors_.at(name), shard, rank, tp);
  }

 private:
  std::map<std::string, torch::Tensor> tensors_;
};

// Every name and whole shape must agree between the model and the file.
void check_names_and_shapes(const ProxyGraph& proxy, const std::map<std::string, std::vector<int64_t>>& file,
                            const std::string& path) {
  std::set<std::string> model;
  for (const auto& p : proxy.params) {
    model.insert(p.name);
    auto it = file.find(p.name);
    TORCH_CHECK(it != file.end(), "config.weights '", path, "' has no tensor '", p.name, "', which the model's ",
                p.is_buffer ? "buffer" : "parameter", " of shape ", c10::IntArrayRef(p.shape),
                " needs (are its names those of this model's parameters?)");
    TORCH_CHECK(it->second == p.shape, "config.weights '", path, "': tensor '", p.name, "' has shape ",
                c10::IntArrayRef(it->second), ", the model's ", p.is_buffer ? "buffer" : "parameter", " has ",
                c10::IntArrayRef(p.shape));
  }
  for (const auto& [name, shape] : file)
    TORCH_CHECK(model.count(name), "config.weights '", path, "' holds tensor '", name, "' (shape ",
                c10::IntArrayRef(shape), "), which the model does not have (is it the file of another model?)");
}

}  // namespace

int64_t load_pretrained_weights(const CheckpointParts& parts, const std::string& path) {
  TORCH_CHECK(path_exists(path), "config.weights '", path, "' does not exist");
  std::unique_ptr<WeightSource> source;
  if (has_suffix(path, ".safetensors"))
    source = std::make_unique<SafetensorsSource>(path);
  else
    source = std::make_unique<TorchScriptSource>(path);
  check_names_and_shapes(*parts.proxy, source->shapes(), path);
  torch::NoGradGuard no_grad;
  int64_t bytes = 0;
  const int tp = parts.config->parallel.tp;
  for (int stage : parts.executor->stages())
    for (int p : parts.executor->stage_program(stage).params) {
      const std::string& name = parts.proxy->params[p].name;
      torch::Tensor mine = parts.executor->stage_parameter(stage, p);
      const ParameterShard shard = parts.shards ? shard_named(*parts.shards, name) : ParameterShard{};
      const torch::Tensor value = source->slice(name, shard, parts.tp_rank, tp);
      TORCH_CHECK(value.sizes() == mine.sizes(), "config.weights '", path, "': tensor '", name, "' cuts to ",
                  value.sizes(), " here, this rank holds ", mine.sizes());
      mine.copy_(value);
      bytes += static_cast<int64_t>(value.nbytes());
    }
  return bytes;
}

}  // namespace trine
