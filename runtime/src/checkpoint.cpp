#include "trine/runtime/checkpoint.h"

#include "trine/common/files.h"
#include "trine/common/safetensors.h"
#include "trine/runtime/optimizer.h"

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <unistd.h>

namespace trine {

namespace {

constexpr int kFormat = 1;
const char* const kComplete = "COMPLETE";

std::string step_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%09lld", static_cast<long long>(step));
  return name;
}

std::string file_of(int stage, int tp_rank) {
  return "stage-" + std::to_string(stage) + "-tp" + std::to_string(tp_rank) + ".safetensors";
}

ParameterShard shard_in(const std::map<std::string, ParameterShard>* shards, const std::string& name) {
  return shards ? shard_named(*shards, name) : ParameterShard{};
}

// A test's stand-in for a process killed while writing: the rank named by
// TRINE_TEST_DIE_IN_CHECKPOINT=STEP:RANK leaves half a file and exits.
void maybe_die_while_writing(const std::string& path, int64_t step, int rank) {
  const char* spec = std::getenv("TRINE_TEST_DIE_IN_CHECKPOINT");
  if (spec == nullptr || std::to_string(step) + ":" + std::to_string(rank) != spec) return;
  std::FILE* f = std::fopen((path + ".tmp." + std::to_string(::getpid())).c_str(), "wb");
  if (f != nullptr) {
    std::fputs("half a checkpoint", f);
    std::fclose(f);
  }
  std::fprintf(stderr, "trine: TRINE_TEST_DIE_IN_CHECKPOINT: rank %d exits while writing step %lld\n", rank,
               static_cast<long long>(step));
  std::fflush(stderr);
  ::_exit(3);
}

// This rank's tensors of `stage`: parameters and buffers, and the optimizer
// state of the trainable ones.
std::vector<std::pair<std::string, torch::Tensor>> stage_tensors(const CheckpointParts& parts, int stage) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (int p : parts.executor->stage_program(stage).params) {
    const std::string& name = parts.proxy->params[p].name;
    const torch::Tensor t = parts.executor->stage_parameter(stage, p);
    out.emplace_back("param/" + name, t);
    for (const auto& [key, v] : optimizer_state_of(*parts.optimizer, parts.config->optimizer, t))
      out.emplace_back("optim/" + name + "/" + key, v);
  }
  return out;
}

nlohmann::json describe(const CheckpointParts& parts, const CheckpointProgress& progress, const nlohmann::json& plan) {
  const TrainConfig& c = *parts.config;
  nlohmann::json params = nlohmann::json::object();
  for (const auto& p : parts.proxy->params) {
    const ParameterShard s = shard_in(parts.shards, p.name);
    params[p.name] = {{"shape", p.shape}, {"shard_dim", s.dim}, {"shard_blocks", s.blocks}, {"stages", nlohmann::json::array()}};
  }
  const int stages = static_cast<int>(plan.at("stages").size());
  for (int s = 0; s < stages; ++s)
    for (const auto& name : plan.at("stages")[s].at("params").get<std::vector<std::string>>()) {
      TORCH_INTERNAL_ASSERT(params.contains(name), "the plan names parameter '", name, "', the model has none");
      params[name]["stages"].push_back(s);
    }
  return {{"format", kFormat},
          {"step", progress.step},
          {"skipped_total", progress.skipped_total},
          {"layout", {{"dp", c.parallel.dp}, {"pp", c.parallel.pp}, {"tp", c.parallel.tp}, {"stages", stages}}},
          {"seed", c.seed},
          {"optimizer", c.optimizer.name},
          {"plan", plan},
          {"parameters", params}};
}

void keep_newest(const std::string& dir, int keep) {
  std::vector<std::string> complete;
  for (const std::string& name : list_directory(dir)) {
    const std::string path = dir + "/" + name;
    if (name.rfind("step-", 0) != 0) continue;
    if (has_suffix(name, ".partial"))
      remove_tree(path);  // left by a crash: never complete, never read
    else if (path_exists(path + "/" + kComplete))
      complete.push_back(path);
  }
  for (size_t i = 0; i + static_cast<size_t>(keep) < complete.size(); ++i) remove_tree(complete[i]);
}

}  // namespace

void write_checkpoint(const CheckpointParts& parts, const CheckpointProgress& progress, const nlohmann::json& plan,
                      const std::string& dir, int keep) {
  const std::string final_dir = dir + "/" + step_name(progress.step);
  const std::string partial = final_dir + ".partial";
  if (parts.rank == 0) {
    make_directories(dir);
    remove_tree(partial);
    make_directories(partial);
  }
  parts.world->barrier();
  if (parts.replica == 0)
    for (int stage : parts.executor->stages()) {
      const std::string path = partial + "/" + file_of(stage, parts.tp_rank);
      maybe_die_while_writing(path, progress.step, parts.rank);
      write_safetensors(path, stage_tensors(parts, stage), {{"format", "pt"}});
    }
  parts.world->barrier();
  if (parts.rank == 0) {
    write_file_atomically(partial + "/meta.json", describe(parts, progress, plan).dump(1));
    write_file_atomically(partial + "/" + kComplete, std::to_string(progress.step) + "\n");
    sync_directory(partial);
    remove_tree(final_dir);  // the same step written by an earlier run that went further
    rename_path(partial, final_dir);
    sync_directory(dir);
    keep_newest(dir, keep);
  }
  parts.world->barrier();
}

std::string newest_checkpoint(const std::string& dir) {
  std::string newest;
  for (const std::string& name : list_directory(dir))
    if (name.rfind("step-", 0) == 0 && name.find('.') == std::string::npos &&
        path_exists(dir + "/" + name + "/" + kComplete))
      newest = dir + "/" + name;  // names sort by step
  return newest;
}

namespace {

// The tensors of one checkpoint by name, tp slices joined.
class CheckpointFiles {
 public:
  explicit CheckpointFiles(const std::string& step_dir)
      : dir_(step_dir), meta_(nlohmann::json::parse(read_file(step_dir + "/meta.json"))) {
    TORCH_CHECK(meta_.at("format").get<int>() == kFormat, "checkpoint '", dir_, "' has format ", meta_.at("format"),
                "; this trine reads format ", kFormat);
    saved_tp_ = meta_.at("layout").at("tp").get<int>();
  }

  const nlohmann::json& meta() const { return meta_; }
  const std::string& dir() const { return dir_; }

  // `key` of parameter `name` whole: its slices joined when it was cut
  // (`like_parameter`: the parameter's shape; else one whole value).
  torch::Tensor read_whole(const std::string& name, const std::string& key, bool like_parameter) {
    const nlohmann::json& p = meta_.at("parameters").at(name);
    const int stage = p.at("stages").at(0).get<int>();
    const ParameterShard saved{p.at("shard_dim").get<int>(), p.at("shard_blocks").get<int>()};
    std::vector<torch::Tensor> slices;
    for (int r = 0; r < (saved.whole() || !like_parameter ? 1 : saved_tp_); ++r) slices.push_back(file(stage, r).tensor(key));
    if (!like_parameter) return slices.front();
    const torch::Tensor whole = whole_of(slices, saved);
    const auto shape = p.at("shape").get<std::vector<int64_t>>();
    TORCH_CHECK(whole.sizes() == c10::IntArrayRef(shape), "checkpoint '", dir_, "': '", key, "' joins to shape ",
                whole.sizes(), ", its meta.json says ", c10::IntArrayRef(shape));
    return whole;
  }

  // The optimizer keys saved for parameter `name` (none before its first step).
  std::vector<std::string> optimizer_keys(const std::string& name) {
    const nlohmann::json& p = meta_.at("parameters").at(name);
    const std::string prefix = "optim/" + name + "/";
    std::vector<std::string> keys;
    const auto& entries = file(p.at("stages").at(0).get<int>(), 0).entries();  // sorted: the keys are one run
    for (auto it = entries.lower_bound(prefix); it != entries.end() && it->first.rfind(prefix, 0) == 0; ++it)
      keys.push_back(it->first.substr(prefix.size()));
    return keys;
  }

 protected:
  const SafetensorsFile& file(int stage, int tp_rank) {
    const std::string path = dir_ + "/" + file_of(stage, tp_rank);
    auto& f = files_[path];
    if (!f) f = std::make_unique<SafetensorsFile>(path);
    return *f;
  }

  std::string dir_;
  nlohmann::json meta_;
  int saved_tp_ = 1;
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;
};

// Reads this rank's tensors of the checkpoint: checked against its model
// and cut for its tp rank.
class CheckpointReader : public CheckpointFiles {
 public:
  CheckpointReader(const std::string& step_dir, const CheckpointParts& parts) : CheckpointFiles(step_dir), parts_(parts) {
    const std::string optimizer = meta_.at("optimizer").get<std::string>();
    TORCH_CHECK(optimizer == parts.config->optimizer.name, "checkpoint '", dir_, "' holds the state of optimizer \"",
                optimizer, "\"; config.optimizer.name is \"", parts.config->optimizer.name,
                "\" (resume with the same optimizer, or start afresh in another checkpoint.dir)");
    check_parameters_match();
  }

  // `key` ("param/<name>" or "optim/<name>/<k>") of parameter `name`, for this rank.
  torch::Tensor read(const std::string& name, const std::string& key, bool like_parameter) {
    const torch::Tensor whole = read_whole(name, key, like_parameter);
    if (!like_parameter) return whole;
    return shard_of(whole, shard_in(parts_.shards, name), parts_.tp_rank, parts_.config->parallel.tp);
  }

 private:
  void check_parameters_match() const {
    const nlohmann::json& saved = meta_.at("parameters");
    for (const auto& p : parts_.proxy->params) {
      TORCH_CHECK(saved.contains(p.name), "checkpoint '", dir_, "' has no parameter '", p.name,
                  "' (was it written for another model?)");
      const auto shape = saved.at(p.name).at("shape").get<std::vector<int64_t>>();
      TORCH_CHECK(shape == p.shape, "checkpoint '", dir_, "': parameter '", p.name, "' has shape ",
                  c10::IntArrayRef(shape), ", the model's is ", c10::IntArrayRef(p.shape));
    }
    for (const auto& [name, v] : saved.items())
      TORCH_CHECK(parts_.proxy->find_param(name) >= 0, "checkpoint '", dir_, "' holds parameter '", name,
                  "', which the model does not have (was it written for another model?)");
  }

  const CheckpointParts& parts_;
};

}  // namespace

CheckpointProgress read_checkpoint(const CheckpointParts& parts, const std::string& step_dir) {
  CheckpointReader reader(step_dir, parts);
  torch::NoGradGuard no_grad;
  for (int stage : parts.executor->stages())
    for (int p : parts.executor->stage_program(stage).params) {
      const std::string& name = parts.proxy->params[p].name;
      torch::Tensor mine = parts.executor->stage_parameter(stage, p);
      const torch::Tensor saved = reader.read(name, "param/" + name, true);
      TORCH_CHECK(saved.sizes() == mine.sizes(), "checkpoint '", step_dir, "': parameter '", name, "' cuts to ",
                  saved.sizes(), " here, this rank holds ", mine.sizes());
      mine.copy_(saved);
      std::map<std::string, torch::Tensor> state;
      for (const std::string& key : reader.optimizer_keys(name))
        state[key] = reader.read(name, "optim/" + name + "/" + key, key != "step");
      set_optimizer_state(*parts.optimizer, parts.config->optimizer, mine, state,
                          "checkpoint '" + step_dir + "': parameter '" + name + "'");
    }
  return {reader.meta().at("step").get<int64_t>(), reader.meta().at("skipped_total").get<int64_t>()};
}

std::vector<std::pair<std::string, torch::Tensor>> checkpoint_parameters(const std::string& step_dir) {
  TORCH_CHECK(path_exists(step_dir + "/" + kComplete), "'", step_dir, "' is not a complete checkpoint (no ", kComplete,
              " in it): give a directory step-<N> that holds one, or the checkpoint.dir to take the newest");
  CheckpointFiles files(step_dir);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, p] : files.meta().at("parameters").items())
    out.emplace_back(name, files.read_whole(name, "param/" + name, true));
  return out;
}

void write_model_file(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  if (has_suffix(path, ".safetensors")) {
    write_safetensors(path, tensors, {{"format", "pt"}});
    return;
  }
  TORCH_CHECK(has_suffix(path, ".pt"), "'", path, "': name the model file FILE.safetensors (safetensors) or FILE.pt "
              "(PyTorch's format, for torch::pickle_load and torch.load)");
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& [name, t] : tensors) dict.insert(name, t.detach().cpu());
  const std::vector<char> bytes = torch::pickle_save(dict);
  write_file_atomically(path, std::string(bytes.begin(), bytes.end()));
}

}  // namespace trine
