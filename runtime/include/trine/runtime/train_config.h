// Everything the trainer needs to know besides the model: the layout, the
// batch, the schedule, partitioning, optimizer, learning-rate schedule,
// logging and checkpoints. Read from JSON strictly (docs/config.md lists
// every key); `check()` validates values against each other.
#pragma once
#include "trine/common/json_reader.h"
#include "trine/recompute/memory_manager.h"
#include "trine/recompute/recompute_policy.h"

#include <cstdint>
#include <string>
#include <vector>

namespace trine {

struct ParallelConfig {
  // "parallel": "auto": the layout planner chooses dp, pp, tp, the
  // microbatches, schedule and recomputation (runtime/layout_planner.h).
  bool auto_layout = false;
  int dp = 1, pp = 1, tp = 1;
  std::string order = "tp-dp-pp";  // innermost dimension first
};

// Tensor parallelism (parallel.tp > 1): the layout is found on the graph
// (tensor_parallel/sharding_analysis.h); these force decisions by weight
// name pattern ('*' matches any run of characters), which the analysis checks.
struct TensorParallelConfig {
  std::vector<std::string> column, row, replicate;
  // Dropout inside split regions: "exact" draws the single-process masks;
  // "per_shard" lets each rank draw its own piece (less random-number work,
  // but training no longer equals one process).
  std::string dropout = "exact";
  // Merak's sub-pipelining: each microbatch runs as this many parts taking
  // turns, one part's all-reduces overlapping another's compute
  // (tensor_parallel/sub_microbatches.h); needs tp > 1, CPU; 1: off.
  int sub_microbatches = 1;
};

struct PartitionConfig {
  std::string method = "metis";   // metis | dp | uniform | parameters | manual
  bool profile = false;           // measure layer costs here (rank 0) instead of analytic FLOPs
  int64_t memory_limit_bytes = 0; // per stage; 0: none
  std::vector<std::string> starts;  // manual: first layer of every stage
};

struct OptimizerConfig {
  std::string name = "adamw";  // adamw | sgd
  double lr = 1e-3;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adamw
  double momentum = 0.0;                           // sgd
  double grad_clip = 1.0;  // max global gradient norm; 0 turns clipping off
};

struct LrScheduleConfig {
  int64_t warmup_steps = 0;     // linear from lr/warmup to lr
  std::string decay = "cosine"; // cosine | constant
  double min_lr = 0.0;          // where cosine ends
  int64_t total_steps = 0;      // where cosine reaches min_lr; 0: the run's steps
};

// Emulation (`emulate`): compute sleeps for each stage's time while
// communication is real (ExecutorOptions::emulate), to run many ranks
// honestly on few cores. The times come from `times` (a stage-times file,
// runtime/step_prediction.h), else rank 0 profiles the plan's stages here;
// `write_times` saves them for `trine simulate --times`.
struct EmulateConfig {
  bool on = false;
  std::string times_file, write_times;
};

struct TrainConfig {
  ParallelConfig parallel;
  TensorParallelConfig tensor_parallel;
  int64_t global_batch = 0;  // samples per step over all replicas; 0: the sample batch's size
  int microbatches = 1;      // per replica and step
  std::string schedule = "1f1b";  // a name from schedules/schedule_registry.h
  int virtual_stages = 1;         // model chunks per pipeline rank (interleaved_1f1b: >= 2); the plan has pp x this stages
  PartitionConfig partition;
  OptimizerConfig optimizer;
  LrScheduleConfig lr_schedule;
  RecomputeSettings recompute;  // recompute/recompute_policy.h
  // Saved activations per rank under a budget, swapped or dropped and made
  // again (recompute/memory_manager.h); bytes 0: no budget.
  MemoryBudget memory;
  EmulateConfig emulate;
  int64_t steps = 100;
  uint64_t seed = 0;              // dropout masks and planning
  std::string weights_file;       // "weights": initial parameters and buffers from a .safetensors or TorchScript
                                  //   file, matched by name (runtime/pretrained_weights.h); empty: the model's own
  std::string device = "cpu";     // cpu | cuda (each rank uses cuda:LOCAL_RANK % devices)
  double timeout_s = 60;          // every wait on a peer
  int64_t bucket_bytes = 1 << 20; // data-parallel gradient bucket size
  int64_t max_skipped_steps = 5;  // steps in a row with a non-finite loss or gradient norm before training stops
  int64_t log_every = 10;         // progress line on rank 0 every N steps (0: never)
  bool measure_memory = false;    // logging.memory: each step's peak allocated bytes (StepTimings::peak_bytes)
  std::string trace_file;         // logging.trace: every rank's instructions of the first trace_steps steps,
  int64_t trace_steps = 2;        //   one Chrome/Perfetto trace written by rank 0; empty: no trace
  std::string checkpoint_dir;     // where fit() saves checkpoints (runtime/src/checkpoint.h); empty: nowhere
  int64_t checkpoint_every = 0;   // also every N steps; 0: only at the end
  int64_t checkpoint_keep = 3;    // the newest N complete checkpoints are kept
  bool checkpoint_resume = false; // continue from the newest complete checkpoint in checkpoint_dir, if any

  // Reads the keys above from `r` (nested objects "parallel", "tensor_parallel", "partition",
  // "optimizer", "lr_schedule", "recompute", "memory", "logging", "checkpoint"); the caller finishes `r`.
  static TrainConfig read(JsonObjectReader& r);
  static TrainConfig from_json(const nlohmann::json& j);  // strict: unknown keys are errors
  // Throws naming the key and the fix for values that cannot work.
  void check() const;
};

// Learning rate at `step` (0-based): linear warm-up, then cosine decay to
// min_lr at total_steps (or constant).
double learning_rate(const OptimizerConfig& opt, const LrScheduleConfig& sched, int64_t step, int64_t run_steps);

}  // namespace trine
