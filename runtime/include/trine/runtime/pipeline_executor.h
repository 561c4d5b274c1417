// Runs one pipeline rank's instruction list (schedules/) for a training step:
// forwards and backwards of microbatches through its stage's graph (or, under
// an interleaved schedule, through each of its v stages, the model chunks:
// rank r of p holds stages r, r+p, ...), activations and gradients exchanged
// with the stages that produce and read them (through memory when both are
// on this rank), data-parallel gradient averaging overlapped with the last
// backward, and the sum of tied parameters' gradients across the stages
// holding them.
//
// Each rank holds its own copy of its stages' parameters and buffers (created
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
#include "trine/recompute/memory_manager.h"
#include "trine/runtime/communicator.h"
#include "trine/runtime/gradient_buckets.h"
#include "trine/schedules/instruction.h"
#include "trine/schedules/schedule_simulator.h"

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <memory>
#include <vector>

namespace trine {

class BufferSync;

struct ExecutorGroups {
  Communicator* pp = nullptr;               // group rank == pipeline rank (stage s is on rank s mod p)
  Communicator* dp = nullptr;               // this rank's replicas
  std::map<int, Communicator*> tied;        // parameter id -> the ranks (same replica) whose stages hold it
};

// Wall seconds of the last step by instruction kind: what a stage computed and
// how long it waited on its peers (Communicate) and on gradient sync.
struct StepTimings {
  double forward_s = 0, backward_s = 0, communicate_s = 0, reduce_s = 0, optimizer_s = 0;
  // Recomputation: the R instructions (including the wait for the transfers
  // they overlap) and the recomputes backwards ran in-line (not in backward_s).
  double recompute_s = 0;
  // Tensor parallelism: inside the tp group's all-reduces (forward and
  // backward, within the times above); set by the Trainer.
  double tensor_parallel_s = 0;
  int64_t peak_bytes = 0;  // with ExecutorOptions::measure_memory: most bytes allocated during the step above its start
  // With ExecutorOptions::memory: the most bytes of saved activations held at
  // once, the least budget the step would have kept to when it did not keep
  // this one (0 when it did), and what the manager swapped and dropped.
  int64_t saved_peak_bytes = 0, memory_needed_bytes = 0;
  MemoryCounters memory;
};

// Layers of one stage run as checkpointed segments (each inner list one
// segment): a forward F keeps only their inputs, the backward (or an R)
// recomputes them (StageExecution::checkpoint_layers).
struct StageCheckpointing {
  std::vector<std::vector<int>> layer_segments;
  bool attention_cores = false;  // selective: every other layer's attention core too
};

struct ExecutorOptions {
  uint64_t seed = 0;
  std::vector<StageCheckpointing> checkpointing;  // per model chunk of this rank; empty: keep everything
  int64_t bucket_bytes = 1 << 20;
  bool measure_memory = false;  // count the step's allocations (StepTimings::peak_bytes)
  c10::Device device = c10::kCPU;
  // Parameter ids whose copies here another rank counts in the global norm
  // (whole parameters on tensor-parallel ranks other than 0).
  std::set<int> not_counted_in_norm;
  // Sub-microbatches (tensor_parallel/sub_microbatches.h): per model chunk of
  // this rank, one program per part of a microbatch; empty: run microbatches whole.
  std::vector<std::vector<StageProgram>> sub_microbatch_stages;
  // A budget for the saved activations of all this rank's stages (one
  // memory manager, recompute/memory_manager.h); bytes 0: none.
  MemoryBudget memory;
  // Emulation (docs/design.md §6a): per plan stage, how long its compute
  // takes. The first step runs for real (it shows what each stage sends and
  // which gradients come back); from the second on, every F, F*, R and
  // backward sleeps for its time (F: forward; R: forward after F*, else
  // recompute; a backward: backward plus whatever is still dropped) and the
  // optimizer step for `optimizer` before the trainer's own (which then has
  // no gradients), while every transfer and gradient all-reduce is real, of
  // the first step's shapes. Empty: off.
  std::vector<StageTimes> emulate;
};

class PipelineExecutor {
 public:
  // `stages`: every stage's program (the topology comes from all of them);
  // this is pipeline rank `rank` of `ranks`, holding stages rank, rank +
  // ranks, ... (stages.size() / ranks of them), and runs `program`.
  PipelineExecutor(const TracedModel& model, const ProxyGraph& proxy, std::vector<StageProgram> stages, int rank,
                   int ranks, std::vector<Instruction> program, ExecutorGroups groups, ExecutorOptions options);
  ~PipelineExecutor();

  // One step over this replica's batch (every input and target split along
  // dim 0 into the program's microbatches). `first_microbatch` numbers them globally,
  // for dropout seeds. `optimizer_step` runs at the OptimizerStep instruction.
  void run_step(const SampleBatch& batch, int64_t first_microbatch, const std::function<void()>& optimizer_step);

  // Mean loss of this step's microbatches forwarded so far: a float64 scalar
  // on the rank's device (0 except on the rank holding the last stage), kept
  // there so that no microbatch waits on a device-to-host copy.
  torch::Tensor mean_loss() const { return loss_sum_ / microbatches_; }
  // Microbatches per step: those the program forwards (0 .. m-1).
  int microbatches() const { return microbatches_; }
  c10::Device device() const { return options_.device; }
  // The stages this rank holds, chunk by chunk, and their programs.
  std::vector<int> stages() const;
  const StageProgram& stage_program(int stage) const { return stages_.at(stage); }
  // This rank's trainable parameter copies (every stage's), and whether the
  // stage holding each is the first holder of it (the one that counts it in
  // the global norm).
  const std::vector<torch::Tensor>& parameters() const { return trainable_; }
  const std::vector<bool>& owns() const { return owned_; }
  // The copy of parameter `id` (ProxyGraph parameter id) held here (by the
  // first of this rank's stages that holds it), or undefined.
  torch::Tensor parameter(int id) const;
  // The copy of parameter `id` held by `stage` (one of this rank's), or undefined.
  torch::Tensor stage_parameter(int stage, int id) const;
  const GradientBuckets& buckets() const { return *buckets_; }
  // Buffers this rank's stages update in a way that cannot be combined across
  // replicas exactly: after each step they take replica 0's values.
  std::vector<std::string> buffers_from_replica_0() const;
  // Puts the buffers back as they were before this step (a skipped step).
  void undo_buffer_updates();
  const StepTimings& timings() const { return timings_; }
  // Timeline of real steps (logging.trace): from start_tracing on, every
  // instruction run is recorded (rank = this pipeline rank, times in seconds
  // from `origin`, `step` counting the traced steps from 0) until
  // stop_tracing; take_timeline hands the records over.
  void start_tracing(std::chrono::steady_clock::time_point origin);
  void stop_tracing() { tracing_ = false; }
  std::vector<TimelineEvent> take_timeline() { return std::move(timeline_); }
  // With a memory budget: 0 while this step has kept it, else the least
  // budget that it would have (MemoryManager::needed_bytes).
  int64_t memory_needed_bytes() const { return memory_ ? memory_->needed_bytes() : 0; }

 private:
  struct Microbatch;
  struct Chunk;
  struct PostedTransfers;
  Chunk& chunk(int c);
  // F (`checkpoint` false) or F* (keep only the stage's inputs).
  void forward(const Instruction& ins, const SampleBatch& batch, int64_t first_microbatch, bool checkpoint);
  void backward(const Instruction& ins);
  // Instruction `index` of the program: its transfers posted, then finished.
  void communicate(size_t index);
  // R (instruction `index`): its transfers posted, the microbatch recomputed,
  // then the transfers finished.
  void recompute(size_t index);
  // Starts the sends and posts the receives of instruction `index` (those
  // posted ahead of it are taken over, not posted again).
  PostedTransfers post_transfers(size_t index);
  // Posts, before instruction `index` runs, the receives of the next
  // instruction after it that has transfers, where their shapes are known
  // (docs/design.md §6: receives posted one batch ahead).
  void post_receives_ahead(size_t index);
  // Whether receive transfer `t` can be posted now: every tensor it brings
  // has a known shape and comes from another rank.
  bool can_post_early(const Transfer& t);
  void post_receive(const Transfer& t, PostedTransfers& posted, std::vector<RecvRequest>& requests);
  void finish_transfers(PostedTransfers posted);
  // Sends (or, to a stage of this rank, hands over) the tensors of one transfer.
  void send(const torch::Tensor& t, int from_stage, int to_stage, int mb, bool grad, int slot);
  uint32_t tag_of(int mb, bool grad, int from_stage, int to_stage, int slot) const;
  void reduce_grads();
  void sum_tied_gradients();
  void manage_memory();  // one MemoryManager for every chunk's saved tensors
  void record(const Instruction& ins, std::chrono::steady_clock::time_point t0,
              std::chrono::steady_clock::time_point t1);
  // Emulation: what the first step showed, and the sleeps standing for compute.
  void remember_shapes(const Instruction& ins);
  void emulate_compute(const Instruction& ins);

  std::vector<StageProgram> stages_;
  int rank_, ranks_;
  std::vector<Instruction> program_;
  ExecutorGroups groups_;
  ExecutorOptions options_;
  // Declared before the chunks: their microbatches' saved tensors refer to it.
  std::unique_ptr<MemoryManager> memory_;  // with options_.memory.bytes > 0
  std::vector<std::unique_ptr<Chunk>> chunks_;  // chunk c runs stage rank + c·ranks
  std::vector<torch::Tensor> trainable_;
  std::vector<bool> owned_;
  std::unique_ptr<GradientBuckets> buckets_;
  // Transfers between two stages of this rank: (grad, microbatch, from, to, slot) -> tensor.
  std::map<std::tuple<bool, int, int, int, int>, torch::Tensor> local_;
  // Receives posted ahead of the instruction (by index) that waits for them.
  std::map<size_t, std::unique_ptr<PostedTransfers>> early_;
  int microbatches_ = 0;
  int last_backward_ = -1;  // instruction index of the step's final backward
  torch::Tensor loss_sum_;
  StepTimings timings_;
  bool tracing_ = false;
  std::chrono::steady_clock::time_point trace_origin_;
  int traced_steps_ = 0;
  std::vector<TimelineEvent> timeline_;
  bool emulating_ = false;  // options_.emulate given and the first step done
};

}  // namespace trine
