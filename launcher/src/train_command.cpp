// `trine train --config FILE.json`: 3D-parallel training of an example model
// or the user's TorchScript file, on synthetic data or data from files, one
// process per rank (mpirun, torchrun, Slurm, or a single process).
#include "commands.h"
#include "data_sources.h"
#include "job_config.h"
#include "model_options.h"

#include "trine/frontend/model_inputs.h"
#include "trine/runtime/losses.h"
#include "trine/runtime/trainer.h"

#include <torch/script.h>

#include <cstdio>
#include <iostream>
#include <optional>

namespace trine::cli {

CLI::App* add_train_command(CLI::App& app, TrainArgs& args) {
  auto* cmd = app.add_subcommand("train", "train with data and pipeline parallelism; run one process per rank");
  cmd->add_option("--config", args.config, "the job's JSON file (keys: docs/config.md)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--steps", args.steps, "override the config's steps")->check(CLI::PositiveNumber);
  cmd->add_option("--data-path", args.data_path, "override the config's data.path");
  return cmd;
}

namespace {

torch::ScalarType dtype_of(const std::string& name) {
  if (name == "int64") return torch::kLong;
  if (name == "float64") return torch::kDouble;
  return torch::kFloat;
}

// The data a job trains on: a batch per step, the same on every rank.
struct JobData {
  std::function<SampleBatch(int64_t step)> batch;
  std::shared_ptr<TokenFile> tokens;  // when the data is a token file
};

JobData open_data(const JobConfig& job, int64_t seq_len) {
  JobData d;
  const uint64_t seed = job.train.seed;
  const int64_t rows = job.train.global_batch;
  if (job.data.kind == "tokens") {
    d.tokens = std::make_shared<TokenFile>(job.data.path, job.data.dtype, seq_len);
    auto file = d.tokens;
    d.batch = [file, seed, rows](int64_t step) { return file->batch(seed, step, rows); };
  } else if (job.data.kind == "tensors") {
    auto file = std::make_shared<TensorFile>(job.data.path);
    d.batch = [file, seed, rows](int64_t step) { return file->batch(seed, step, rows); };
  }
  return d;
}

// The tensor file's samples must be the inputs the config declares.
void check_tensor_data(const JobConfig& job, const SampleBatch& b) {
  TORCH_CHECK(job.torchscript.inputs.size() == 1, "config.data.kind \"tensors\" holds one input tensor, but "
              "config.model.inputs declares ", job.torchscript.inputs.size());
  const InputSpec& want = job.torchscript.inputs[0];
  const auto got = b.inputs[0].sizes().slice(1);
  TORCH_CHECK(got.vec() == want.shape && b.inputs[0].scalar_type() == dtype_of(want.dtype), "tensor file '",
              job.data.path, "' holds samples of shape ", got, " and dtype ", b.inputs[0].scalar_type(),
              ", but config.model.inputs[0] declares shape ", c10::IntArrayRef(want.shape), " and dtype ", want.dtype,
              ": make them agree");
}

struct Job {
  std::unique_ptr<Trainer> trainer;
  std::function<SampleBatch(int64_t)> batch;
};

Job start_example_job(const JobConfig& job) {
  ExampleModel model = make_example_model(job.model);
  Job j;
  j.batch = model.batch;
  std::shared_ptr<TokenFile> tokens;
  if (job.data.kind == "tokens") {
    JobData d = open_data(job, job.model.seq_len);
    d.tokens->check_ids_below(job.model.vocab, "config.model.vocab");
    j.batch = d.batch;
  }
  j.trainer = std::make_unique<Trainer>(model.module, model.loss, j.batch(0), job.train, model.init);
  return j;
}

Job start_torchscript_job(const JobConfig& job) {
  const TorchScriptSpec& ts = job.torchscript;
  torch::jit::Module module = load_torchscript_file(ts.path);
  const int64_t seq_len = ts.inputs[0].shape[0];
  if (job.data.kind == "tokens")
    TORCH_CHECK(ts.inputs.size() == 1 && ts.inputs[0].shape.size() == 1 && ts.inputs[0].dtype == "int64",
                "token data gives one input of token ids: config.model.inputs must be [{\"shape\": [seq_len], "
                "\"dtype\": \"int64\"}]");
  JobData d = open_data(job, seq_len);
  Job j;
  j.batch = d.batch;
  const SampleBatch first = j.batch(0);
  if (job.data.kind == "tensors") check_tensor_data(job, first);
  j.trainer = std::make_unique<Trainer>(module, named_loss(ts.loss), first, job.train);
  if (d.tokens) {
    // Ids past the embedding would fail deep inside a step on one stage only.
    const auto vocab = embedding_rows_of_input(j.trainer->traced_model(), 0);
    if (vocab) d.tokens->check_ids_below(vocab->second, "the rows of '" + vocab->first + "'");
  }
  return j;
}

}  // namespace

int run_train(const TrainArgs& args) {
  JobConfig job = JobConfig::load(args.config);
  if (args.steps > 0) job.train.steps = args.steps;
  if (!args.data_path.empty()) {
    TORCH_CHECK(job.data.kind != "synthetic", "--data-path needs a config whose data.kind is \"tokens\" or \"tensors\"");
    job.data.path = args.data_path;
  }
  Job j = job.torchscript.path.empty() ? start_example_job(job) : start_torchscript_job(job);
  Trainer& trainer = *j.trainer;
  if (trainer.rank() == 0) {
    const TrainConfig& cfg = trainer.config();  // with the layout "parallel": "auto" chose
    const auto& p = cfg.parallel;
    const std::string chunks =
        cfg.virtual_stages > 1 ? " (" + std::to_string(cfg.virtual_stages) + " stages per rank)" : "";
    const int parts = cfg.tensor_parallel.sub_microbatches;
    const std::string sub =
        parts > 1 ? ", each run as " + std::to_string(parts) + " sub-microbatches taking turns" : "";
    std::printf("trine: %d process(es), grid dp=%d pp=%d tp=%d (%s), %s schedule%s, %d microbatches of %lld%s\n",
                trainer.world_size(), p.dp, p.pp, p.tp, p.order.c_str(), cfg.schedule.c_str(), chunks.c_str(),
                cfg.microbatches, static_cast<long long>(cfg.global_batch / (p.dp * cfg.microbatches)), sub.c_str());
    if (cfg.emulate.on)
      std::printf("emulation: compute sleeps for each stage's time (%s) from the second step on; transfers and "
                  "all-reduces are real\n",
                  cfg.emulate.times_file.empty() ? "profiled on rank 0" : cfg.emulate.times_file.c_str());
    if (job.data.kind != "synthetic") std::printf("data: %s (%s)\n", job.data.path.c_str(), job.data.kind.c_str());
    if (job.train.memory.bytes > 0)
      std::printf("memory: saved activations kept under %lld bytes on each rank, policy %s\n",
                  static_cast<long long>(job.train.memory.bytes), memory_policy_name(job.train.memory.policy));
    std::cout << trainer.plan().table() << trainer.tensor_parallel_table() << std::flush;
  }
  const FitReport report = trainer.fit(j.batch, job.train.steps);
  if (trainer.rank() == 0 && !report.losses.empty())
    std::printf("trained %zu steps: loss %.4f -> %.4f, %.1f samples/s%s\n", report.losses.size(), report.losses.front(),
                report.losses.back(), report.samples_per_second,
                report.skipped_steps ? (", " + std::to_string(report.skipped_steps) + " skipped").c_str() : "");
  return 0;
}

}  // namespace trine::cli
