// All pipeline stages of a model run one after another in one process: the
// reference behaviour of a pipeline without the communication. Each stage holds
// its own copy of its parameters and buffers (as it would on its own rank) and
// runs through the same StageExecution as a pipeline rank;
// activations cross stages detached, and their gradients flow back by hand,
// exactly as between ranks. Used to prove that a split trains like the whole
// model, and by the benchmarks.
#pragma once
#include "trine/frontend/stage_execution.h"
#include "trine/frontend/stage_split.h"
#include "trine/frontend/trace.h"

#include <map>
#include <string>
#include <vector>

namespace trine {

// What one forward_backward measured, per stage: wall seconds of its forward
// and of its backward (the device synchronised around each), and the bytes its
// forward allocated and had not freed when it returned: its outputs and what
// its autograd graph saved, which one microbatch keeps until its backward.
struct StageMeasurements {
  std::vector<double> forward_s, backward_s;
  std::vector<int64_t> kept_bytes;
};

class SequentialStagedModel {
 public:
  SequentialStagedModel(const TracedModel& model, ProxyGraph proxy, const std::vector<int>& stage_of_layer);
  SequentialStagedModel(const SequentialStagedModel&) = delete;  // executions_ point into stages_
  SequentialStagedModel& operator=(const SequentialStagedModel&) = delete;
  SequentialStagedModel(SequentialStagedModel&&) = default;

  // Forward and backward of one microbatch through every stage; adds into the
  // stages' parameter gradients and returns the loss (detached). The batch
  // must have the traced shapes.
  // With `measure`, each stage is timed and its kept activations counted.
  torch::Tensor forward_backward(const SampleBatch& batch, const RngPolicy& rng = {},
                                 StageMeasurements* measure = nullptr);

  // Gradients of a parameter held by several stages are summed, and every copy
  // gets the sum: call after backward and before the optimizer step, so the
  // copies stay identical.
  void reduce_shared_gradients();
  void zero_grad();
  // With `on`, every stage's forward keeps only its inputs and is run again
  // before its backward (StageExecution, keep_graph false); the rng passed
  // to forward_backward must then be RngPolicy::PerOp.
  void recompute_every_stage(bool on) { recompute_ = on; }
  // Checkpointed segments of layers on `stage` (StageExecution::checkpoint_layers).
  void checkpoint_layers(int stage, const std::vector<std::vector<int>>& segments, bool attention_cores = false) {
    executions_.at(stage).checkpoint_layers(segments, attention_cores);
  }

  int num_stages() const { return static_cast<int>(stages_.size()); }
  const std::vector<StageProgram>& stages() const { return stages_; }
  const ProxyGraph& proxy() const { return proxy_; }

  // Every stage's own parameter tensors (trainable ones), e.g. for an optimizer.
  std::vector<torch::Tensor> parameters() const;
  // The copy of a named parameter (or alias) on `stage` (-1: the first holder).
  torch::Tensor parameter(const std::string& name, int stage = -1) const;
  // Its gradient on the first holder (after reduce_shared_gradients, all agree).
  torch::Tensor gradient(const std::string& name) const { return parameter(name).grad(); }

 private:
  int param_id(const std::string& name) const;
  // What `stage` receives: each activation it reads, detached from its
  // producer's graph as a transfer between ranks would (a leaf of its own).
  std::vector<torch::Tensor> receive(int stage, const std::map<int, torch::Tensor>& produced) const;

  ProxyGraph proxy_;
  std::vector<StageProgram> stages_;
  std::vector<StageExecution> executions_;  // one per stage, over stages_ (never resized after construction)
  bool recompute_ = false;
};

}  // namespace trine
