// Predicting a training step's time on a machine, with the schedule
// simulator (schedules/schedule_simulator.h), from what each stage's work is
// (docs/design.md §6a):
//   - StageWork per stage and microbatch, on one tensor-parallel rank: compute
//     seconds and the bytes it moves. Measured on this machine
//     (profile_stage_work: the plan's stages run in one process) or derived
//     for a device that is not here (gpt_stage_work: a GPT's FLOPs at the
//     device's FLOP rate);
//   - a MachineDescription: links within and across nodes (latency and
//     bandwidth; ring formulas for collectives), memory bandwidth for the
//     optimizer step, and for CPU hosts the cores the ranks share;
//   - a Layout: dp x pp x tp, virtual stages, microbatches, schedule.
// Ranks are placed tp innermost, then dp, then pp ("tp-dp-pp"): a group whose
// members lie within `devices_per_node` consecutive ranks talks over the
// node's links, any other over the network.
#pragma once
#include "trine/frontend/graph_runner.h"
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/traced_model.h"
#include "trine/partitioner/stage_plan.h"
#include "trine/recompute/recompute_policy.h"
#include "trine/runtime/train_config.h"
#include "trine/schedules/schedule_simulator.h"
#include "trine/tensor_parallel/sharding_analysis.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace trine {

struct Link {
  double latency_s = 0;
  double bytes_per_s = 1e12;
  double seconds(double bytes) const { return latency_s + bytes / bytes_per_s; }
};

struct MachineDescription {
  std::string name = "this host";
  double flops_per_second = 0;         // sustained dense rate (analytic work); 0: unknown
  double memory_bytes_per_second = 0;  // the optimizer step streams parameters, gradients and state
  Link intra_node, inter_node;
  int devices_per_node = 1;
  bool buffered_sends = false;  // Gloo: a send completes once posted; NCCL (false): at its receive
  bool rendezvous_sends = false;  // Gloo over TCP: a send's data leaves only once its receive is posted
  double instruction_overhead_s = 0;  // the executor's cost per instruction beyond its work
  double cores = 0;  // CPU hosts: the ranks share this many cores; 0: a device per rank
  // Measured on a CPU host (benchmarks/calibrate_host.sh): a process's pace,
  // relative to running alone, while k processes compute at once (k = 1,
  // 2, ...); beyond the list the last pace times its k over k. Empty:
  // min(1, cores / k), the ideal sharing of `cores`.
  std::vector<double> shared_speed;
  // That pace for k processes computing at once (1 without shared cores),
  // interpolated between whole counts.
  double pace(double processes) const;
  // Measured (bench_p2p): seconds of one all-reduce between 2 ranks, by
  // bytes, ascending; between sizes interpolated, beyond them extended
  // linearly. n ranks take (n - 1) times as long (a ring's 2(n-1) steps,
  // each a 1/n share). Empty: the ring formula over the links.
  std::vector<std::pair<double, double>> allreduce_seconds;
  // An all-reduce of `bytes` over `ranks` ranks spanning `span` consecutive ranks.
  double allreduce(double bytes, int ranks, int span) const;
  // CPU hosts: what communication costs a rank's process in CPU time (Gloo's
  // transport threads and the kernel's loopback copies), which competes with
  // compute for the shared cores. Measured (bench_p2p): per message sent or
  // received, per byte sent or received, and per all-reduce between 2 ranks
  // by bytes (as allreduce_seconds; n ranks move 2(n-1)/n of the bytes, so
  // cost 2(n-1)/n times as much). All 0 / empty: communication is free.
  double transfer_cpu_s = 0, transfer_cpu_s_per_byte = 0;
  std::vector<std::pair<double, double>> allreduce_cpu_seconds;
  double transfer_cpu(double bytes) const;
  double allreduce_cpu(double bytes, int ranks) const;

  // This machine as trine runs on it: Gloo over loopback TCP (latency and
  // bandwidth of bench_p2p in the README), one node, its hardware threads.
  static MachineDescription this_host();
  // {"name", "flops_per_second", "memory_bytes_per_second", "devices_per_node",
  //  "buffered_sends", "rendezvous_sends", "instruction_overhead_s", "cores", "shared_speed": [...],
  //  "allreduce_bytes": [...], "allreduce_seconds": [...], "allreduce_cpu_seconds": [...], "transfer_cpu_s",
  //  "transfer_cpu_s_per_byte", "intra_node": {"latency_s", "bytes_per_s"}, "inter_node": {...}};
  // strict: unknown keys are errors naming `where`.
  static MachineDescription from_json(const nlohmann::json& j, const std::string& where);
  // Known descriptions: "a100" and "h100" (8 per node, NVLink within, 4 x
  // 200 Gb/s InfiniBand across, dense half-precision rate at 50% of peak).
  static MachineDescription named(const std::string& name);
};

// Ring all-reduce of `bytes` over `ranks`: 2(n-1)/n of the bytes over the
// slowest link, 2(n-1) latencies.
double ring_allreduce_seconds(double bytes, int ranks, const Link& link);

// One stage's work per microbatch on one tp rank.
struct StageWork {
  double forward_s = 0, backward_s = 0;  // compute, collectives excluded
  double recompute_s = 0;                // rerunning what a plain forward drops
  double output_bytes = 0;               // activations to each consumer stage
  double input_bytes = 0;                // gradients to each producer stage
  double gradient_bytes = 0;             // its trainable parameters' gradients (data-parallel all-reduce)
  double tp_allreduce_bytes = 0;         // all-reduced in one forward, summed (a backward the same)
  int tp_allreduces = 0;                 // how many all-reduces one forward makes
  double optimizer_s = 0;                // its optimizer step (0: from memory bandwidth, 16 B per parameter)
  double jitter = 0;                     // coefficient of variation of its compute instructions' times
};

struct Layout {
  int dp = 1, pp = 1, tp = 1, virtual_stages = 1, microbatches = 1;
  std::string schedule = "1f1b";
};

// The simulator's stage times: compute plus the tp all-reduces of its
// forward (and as many in its backward and recompute), transfers over the
// link between neighbouring stages, the data-parallel all-reduce of its
// gradients, its optimizer step. The step's loss all-reduce spans the world.
std::vector<StageTimes> stage_times(const std::vector<StageWork>& work, const Layout& layout,
                                    const MachineDescription& machine);
// `profiled_processes`: how many processes computed at once while `work`
// was measured (on a host with shared cores, speeds are relative to that
// load: machine.pace(k) / machine.pace(profiled_processes)). The simulated
// pipeline stands for one replica; with shared cores the other dp - 1
// replicas run the same program in step with it, so k of its ranks
// computing are dp x tp x k processes computing. With shared cores each
// rank's communication also costs CPU (transfer_cpu, allreduce_cpu), added
// to the compute around it: a forward's and a backward's transfers to
// them, the gradient all-reduce's to the optimizer step. Stages
// whose work varies (jitter > 0) are played kJitterSamples times with
// different draws, and the report is the play whose step time is the median;
// with dp > 1 each sample is the slowest of dp plays (the replicas vary
// independently and the step waits for the last).
constexpr int kJitterSamples = 15;
SimulationReport simulate_layout(const std::vector<StageWork>& work, const Layout& layout,
                                 const MachineDescription& machine, int profiled_processes = 1);

// Stage times as files keep them (`trine simulate --times`, emulate.times):
// {"stages": [{"forward": s, "backward": s, "recompute": s,
// "activation_transfer": s, "gradient_transfer": s, "reduce": s,
// "optimizer": s}, ...]}; forward and backward required, the rest 0 when
// absent; strict (unknown keys are errors naming `where`).
nlohmann::json stage_times_to_json(const std::vector<StageTimes>& times);
std::vector<StageTimes> stage_times_from_json(const nlohmann::json& j, const std::string& where);

// Per plan stage, the all-reduces one forward makes under `analysis` (row-
// parallel linears and vocabulary-parallel embeddings whose weight the stage
// holds) and the bytes they carry (their outputs, one tp rank's).
std::vector<std::pair<int, double>> tensor_parallel_allreduces(const ShardingAnalysis& analysis,
                                                               const StagePlan& plan);

// Measured here: every stage of the plan runs its own instructions of the
// plan's schedule (forwards, F*, R and backwards in the schedule's order, so
// that other microbatches' work comes between a forward and its backward as
// in a run; transfers left out, received activations and output gradients
// made up), `warmup` + `repeats` times, each compute instruction timed;
// medians. Once as planned and once with `recompute`'s checkpointed
// segments: recompute_s is the difference of the backwards that follow a
// plain forward. The optimizer step (norm, clip, AdamW) is timed on the
// gradients that accumulated, by `optimizer` as make_optimizer makes it. With `sharding` (tp > 1) the stages are
// rewritten for tp rank 0 and run with its parameter slices, their
// all-reduces going nowhere; the all-reduces each forward makes are counted
// for the simulator (tensor_parallel_allreduces).
// With `tp_group` (a RegisteredGroup's id, e.g. Trainer::tensor_parallel_group_id)
// the stages are rewritten for `tp_rank` and their all-reduces are real:
// every member of the group must profile at once, and the times then hold
// what the all-reduces cost between busy ranks, so none are counted for the
// simulator.
// With `cpu_clock` every time is the profiling thread's CPU time instead of
// the wall's: on a host whose cores the job's ranks share, that is each
// instruction's work as if it ran alone (simulate with profiled_processes
// 1), whatever the load while it was measured. Not with a real tp group,
// whose waits in all-reduces take no CPU.
struct ProfileSettings {
  int warmup = 1, repeats = 2;
  OptimizerConfig optimizer;  // the optimizer step timed, as the trainer makes it
  bool cpu_clock = false;
  const ShardingAnalysis* sharding = nullptr;
  int64_t tp_group = -1;
  int tp_rank = 0;
};
std::vector<StageWork> profile_stage_work(const TracedModel& model, const ProxyGraph& proxy, const StagePlan& plan,
                                          const std::vector<StageRecompute>& recompute, const SampleBatch& microbatch,
                                          const ProfileSettings& settings = {});

// Compute times as given (an emulation's, a profile from elsewhere) with the
// bytes the plan's stages move (per tp rank): the work to simulate them with.
std::vector<StageWork> work_of_times(const std::vector<StageTimes>& times, const StagePlan& plan, int tp = 1);

// A GPT (pre-LayerNorm blocks, vocabulary-sized head) for devices not here:
// forward FLOPs per block 24 b s h^2 + 4 b s^2 h, head 2 b s h V; backward
// twice the forward; half-precision activations and gradients (2 bytes),
// fp32 AdamW state; blocks split evenly over pp x v stages, embedding on the
// first, head on the last; tp splits every block's matmuls (2 all-reduces of
// b s h per block forward). Recompute `policy`: none | full (a stage reruns
// its whole forward) | stage_aware (ratio r0, Merak's rule).
struct GptShape {
  int64_t layers = 48, hidden = 1600, heads = 25, seq = 1024, vocab = 50257;
  int64_t parameters() const;
};
std::vector<StageWork> gpt_stage_work(const GptShape& gpt, int64_t microbatch_rows, const Layout& layout,
                                      const MachineDescription& machine, const RecomputeSettings& recompute);

}  // namespace trine
