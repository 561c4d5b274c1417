// The one-line API: a user's model, a loss, a sample batch and a config
// become a 3D-parallel trainer.
//
//   trine::Trainer trainer(module, loss, sample, config);
//   double loss = trainer.step(batch);          // one optimizer step
//   trainer.fit([](int64_t step) { return my_batch(step); });
//
// Run the same program on every process (mpirun, torchrun, Slurm, or alone).
// Every rank passes the same global batch to step(); each data-parallel
// replica takes its rows (dim 0), splits them into microbatches, and runs its
// pipeline stage. The returned loss is the mean over the global batch, equal
// on every rank. The model is traced once on a microbatch of the sample, so
// every later batch must have the sample's shapes. With "device": "cuda" the
// model is moved to this rank's GPU (LOCAL_RANK modulo the GPUs) before
// tracing, batches may stay on the CPU, and ranks talk through NCCL.
#pragma once
#include "trine/frontend/deferred_init.h"
#include "trine/frontend/trace.h"
#include "trine/runtime/pipeline_executor.h"
#include "trine/runtime/process_grid.h"
#include "trine/runtime/train_config.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace trine {

class StagePlan;

struct FitReport {
  std::vector<double> losses;  // per step run
  double seconds = 0;
  double samples_per_second = 0;
  double flops_per_second = 0;  // achieved, over all ranks (3x forward FLOPs per sample)
  int64_t skipped_steps = 0;    // steps skipped for a non-finite loss or gradient norm, in all
};

class Trainer {
 public:
  // A module whose parameters are deferred (stand-ins, frontend/deferred_init.h)
  // is traced as it is; each rank then allocates only the parameters (and tp
  // slices) of its own stages and gives them `init`'s values, seeded from
  // (config.seed, name): the same under every layout. Empty `init`: LibTorch's
  // rule of each parameter's module (torch_default_init).
  Trainer(torch::nn::AnyModule module, const LossFn& loss, const SampleBatch& sample, const TrainConfig& config,
          ParameterInit init = {});
  Trainer(torch::jit::Module module, const LossFn& loss, const SampleBatch& sample, const TrainConfig& config);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // One optimizer step; returns the step's loss (the same on every rank).
  double step(const SampleBatch& global_batch);
  // Steps from the current one up to `steps` (default: config.steps), printing
  // a progress line on rank 0 (step, loss, learning rate, samples/s, FLOP/s),
  // saving checkpoints to config.checkpoint_dir if set (every
  // config.checkpoint.every steps and after the last). With
  // config.checkpoint.resume the trainer starts at the newest checkpoint's
  // step (steps_done()), so fit() continues the run from there.
  FitReport fit(const std::function<SampleBatch(int64_t step)>& data, int64_t steps = -1);

  int rank() const;
  int world_size() const;
  const ProcessGrid& grid() const;
  int stage() const;     // this rank's pipeline rank: its stage, or under interleaving its first (it also holds stage + k·pp)
  int replica() const;   // this rank's data-parallel index
  int64_t steps_done() const;
  // Steps whose loss or global gradient norm was NaN or infinite: skipped on
  // every rank alike (no parameter, optimizer state or buffer changed) and
  // logged; config.max_skipped_steps of them in a row end training with an
  // error naming the step.
  int64_t skipped_steps() const;
  bool last_step_skipped() const;
  const StagePlan& plan() const;
  // The model as traced on a microbatch of the sample (every stage's source),
  // and its proxy graph.
  const TracedModel& traced_model() const;
  const ProxyGraph& proxy() const;
  // Per plan stage, the layers it recomputes under config.recompute and the
  // schedule (what every rank's executor was given for its stages).
  std::vector<StageRecompute> recompute_plan() const;
  const TrainConfig& config() const;
  double forward_flops_per_sample() const;
  // Where this rank's last step went (compute, waiting on peers, sync, optimizer).
  const StepTimings& last_step_timings() const;
  // This rank's copy of a named parameter (or alias); undefined when its stage
  // does not hold it. Under tensor parallelism, a cut parameter's slice.
  torch::Tensor parameter(const std::string& name) const;
  // This rank's position in its tensor-parallel group, and the slice of a
  // parameter's whole value it holds (`whole` itself when it is not cut).
  int tensor_parallel_rank() const;
  // The id of this rank's tensor-parallel RegisteredGroup (what its stages'
  // all-reduces go through), or -1 with tp = 1.
  int64_t tensor_parallel_group_id() const;
  torch::Tensor tensor_parallel_slice(const std::string& name, const torch::Tensor& whole) const;
  // Under tensor parallelism: every linear's decision and why, and per stage
  // the memory one tp rank holds (its parameters and the values its graph
  // computes per microbatch, and the plan's state and memory scaled by
  // them). Empty when tp = 1.
  std::string tensor_parallel_table() const;
  // The largest difference, element by element, between the copies that
  // the ranks of this rank's tp group hold of each whole (uncut) parameter
  // and buffer of its stages: 0 when they are identical, as they must stay.
  // Collective over the tp group (every member calls it).
  double tensor_parallel_divergence() const;
  // Collective over every rank: writes the checkpoint of the steps done so
  // far to `dir`/step-<N> (parameters, buffers and optimizer state per stage
  // and tp rank, progress, layout and plan; atomically, complete when it holds
  // COMPLETE) and keeps the newest config.checkpoint.keep. Format and
  // guarantees: docs/design.md §7a.
  void save_checkpoint(const std::string& dir) const;

 private:
  struct Impl;
  // Moves the model to the device and traces it on a microbatch.
  using Tracer = std::function<TracedModel(const SampleBatch&, c10::Device)>;
  void init(const Tracer& tracer, const SampleBatch& sample, const TrainConfig& config);
  // "parallel": "auto": the config with the layout the planner chose.
  static TrainConfig resolve_auto_layout(const Tracer& tracer, const SampleBatch& sample, const TrainConfig& config);
  std::unique_ptr<Impl> impl_;
};

}  // namespace trine
