// Runs one pipeline stage's instruction list (schedules/) for a training
// step: forwards and backwards of microbatches through the stage's graph,
// activations and gradients exchanged with the stages that produce and read
// them, data-parallel gradient averaging overlapped with the last backward,
// and the sum of tied parameters' gradients across the stages holding them.
//
// Each rank holds its own copy of its stage's parameters and buffers (created
// from the traced model's tensors); tied copies stay identical because their
// gradients are summed before every optimizer step. Buffers the graph updates
// in place (BatchNorm statistics) are updated once per microbatch forwarded
// here, and combined across replicas at ReduceGrads so that every replica
// holds what a single process running all microbatches in order would
// (runtime/src/buffer_sync.h).
#pragma once
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/stage_execution.h"
#include "trine/frontend/stage_split.h"
#include "trine/frontend/traced_model.h"
#include "trine/runtime/communicator.h"
#include "trine/runtime/gradient_buckets.h"
#include "trine/schedules/instruction.h"

#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <vector>

namespace trine {

class BufferSync;

struct ExecutorGroups {
  Communicator* pp = nullptr;               // group rank == stage
  Communicator* dp = nullptr;               // this stage's replicas
  std::map<int, Communicator*> tied;        // parameter id -> the stages (same replica) that hold it
};

// Wall seconds of the last step by instruction kind: what a stage computed and
// how long it waited on its peers (Communicate) and on gradient sync.
struct StepTimings {
  double forward_s = 0, backward_s = 0, communicate_s = 0, reduce_s = 0, optimizer_s = 0;
  // Recomputation: the R instructions (including the wait for the transfers
  // they overlap) and the recomputes backwards ran in-line (not in backward_s).
  double recompute_s = 0;
  int64_t peak_bytes = 0;  // with ExecutorOptions::measure_memory: most bytes allocated during the step above its start
};

struct ExecutorOptions {
  uint64_t seed = 0;
  // Layers of this stage run as checkpointed segments (each inner list one
  // segment): a forward F keeps only their inputs, the backward (or an R)
  // recomputes them (StageExecution::checkpoint_layers).
  std::vector<std::vector<int>> checkpointed_layers;
  bool checkpoint_attention_cores = false;  // selective: every other layer's attention core too
  int64_t bucket_bytes = 1 << 20;
  bool measure_memory = false;  // count the step's allocations (StepTimings::peak_bytes)
  c10::Device device = c10::kCPU;
};

class PipelineExecutor {
 public:
  // `stages`: every stage's program (the topology comes from all of them);
  // this rank runs `stage` with `program`.
  PipelineExecutor(const TracedModel& model, const ProxyGraph& proxy, std::vector<StageProgram> stages, int stage,
                   std::vector<Instruction> program, ExecutorGroups groups, ExecutorOptions options);
  ~PipelineExecutor();

  // One step over this replica's batch (every input and target split along
  // dim 0 into the program's microbatches). `first_microbatch` numbers them globally,
  // for dropout seeds. `optimizer_step` runs at the OptimizerStep instruction.
  void run_step(const SampleBatch& batch, int64_t first_microbatch, const std::function<void()>& optimizer_step);

  // Mean loss of this step's microbatches forwarded so far: a float64 scalar
  // on the stage's device (0 except on the last stage), kept there so that
  // no microbatch waits on a device-to-host copy.
  torch::Tensor mean_loss() const { return loss_sum_ / microbatches_; }
  // Microbatches per step: those the program forwards (0 .. m-1).
  int microbatches() const { return microbatches_; }
  c10::Device device() const { return options_.device; }
  int stage() const { return stage_; }
  bool is_last_stage() const { return stage_ + 1 == static_cast<int>(stages_.size()); }
  const StageProgram& program() const { return stages_[stage_]; }
  // This stage's trainable parameter copies, and whether this stage is the
  // first holder of each (the one that counts it in the global norm).
  const std::vector<torch::Tensor>& parameters() const { return trainable_; }
  const std::vector<bool>& owns() const { return owned_; }
  // The copy of parameter `id` (ProxyGraph parameter id) held here, or undefined.
  torch::Tensor parameter(int id) const;
  const GradientBuckets& buckets() const { return *buckets_; }
  // Buffers this stage updates in a way that cannot be combined across
  // replicas exactly: after each step they take replica 0's values.
  std::vector<std::string> buffers_from_replica_0() const;
  // Puts the buffers back as they were before this step (a skipped step).
  void undo_buffer_updates();
  const StepTimings& timings() const { return timings_; }

 private:
  struct Microbatch;
  // Receives posted and sends started; where each received tensor goes.
  struct PostedTransfers {
    struct Target {
      int mb;
      bool grad;
      int position;  // input index (activation) or output index (gradient)
    };
    std::vector<Target> targets;
    PendingReceives receives;
    std::vector<int> sends_gradient;  // per transfer: the microbatch whose gradient it sends, else -1
  };
  Microbatch& state_of(int mb);
  // F (`checkpoint` false) or F* (keep only the stage's inputs).
  void forward(int mb, const SampleBatch& batch, int64_t first_microbatch, bool checkpoint);
  void backward(int mb);
  void communicate(const Instruction& ins);
  // R: its transfers posted, the microbatch recomputed, then the transfers finished.
  void recompute(const Instruction& ins);
  PostedTransfers post_transfers(const std::vector<Transfer>& transfers);
  void finish_transfers(PostedTransfers posted);
  void reduce_grads();

  std::vector<StageProgram> stages_;
  int stage_;
  std::vector<Instruction> program_;
  ExecutorGroups groups_;
  ExecutorOptions options_;
  std::unique_ptr<StageExecution> execution_;  // this stage's parameters, forward and backward
  std::vector<torch::Tensor> trainable_;
  std::vector<bool> owned_;
  // Transfers: per peer stage, the positions (inputs or outputs) in value order.
  std::vector<std::pair<int, std::vector<int>>> recv_from_, send_to_;
  std::map<int, std::unique_ptr<Microbatch>> live_;
  // Per stage input: the traced shape and dtype of a received activation, if known.
  std::vector<std::pair<std::optional<std::vector<int64_t>>, c10::ScalarType>> input_shapes_;
  std::unique_ptr<GradientBuckets> buckets_;
  std::unique_ptr<BufferSync> buffers_;  // in-place buffer updates, combined across replicas
  int microbatches_ = 0;
  int last_backward_ = -1;  // instruction index of the step's final backward
  torch::Tensor loss_sum_;
  StepTimings timings_;
};

}  // namespace trine
