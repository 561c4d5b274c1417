#include "trine/runtime/step_prediction.h"

#include "trine/common/json_reader.h"
#include "trine/frontend/deferred_init.h"
#include "trine/frontend/stage_execution.h"
#include "trine/frontend/stage_split.h"
#include "trine/recompute/stage_aware_ratios.h"
#include "trine/runtime/optimizer.h"
#include "trine/schedules/schedule_registry.h"
#include "trine/tensor_parallel/parameter_shards.h"
#include "trine/tensor_parallel/stage_sharding.h"
#include "trine/tensor_parallel/tensor_parallel_group.h"


#include <numeric>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <ctime>
#include <map>
#include <optional>
#include <thread>

namespace trine {

namespace {

double median(std::vector<double> v) {
  TORCH_INTERNAL_ASSERT(!v.empty());
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

Link read_link(JsonObjectReader r, const Link& fallback) {
  Link l;
  l.latency_s = r.get("latency_s", fallback.latency_s);
  l.bytes_per_s = r.get("bytes_per_s", fallback.bytes_per_s);
  r.finish();
  TORCH_CHECK(l.latency_s >= 0 && l.bytes_per_s > 0, r.path(), ": latency_s must be >= 0 and bytes_per_s > 0");
  return l;
}

// A table's value at `bytes` (pairs of bytes, value; bytes ascending):
// interpolated between sizes, extended linearly beyond them.
double by_bytes(const std::vector<std::pair<double, double>>& t, double bytes) {
  TORCH_INTERNAL_ASSERT(!t.empty());
  if (t.size() == 1) return t.front().second;
  size_t i = 1;
  while (i + 1 < t.size() && t[i].first < bytes) ++i;
  const auto& [b0, s0] = t[i - 1];
  const auto& [b1, s1] = t[i];
  return std::max(0.0, s0 + (s1 - s0) * (bytes - b0) / (b1 - b0));
}

// "allreduce_bytes" with another list as long ("allreduce_seconds", ...):
// pairs, bytes ascending, values >= 0.
std::vector<std::pair<double, double>> read_bytes_table(JsonObjectReader& r, const std::vector<double>& bytes,
                                                        const std::string& key) {
  const auto values = r.get(key, std::vector<double>{});
  TORCH_CHECK(values.empty() || bytes.size() == values.size(), r.path(), ": allreduce_bytes and ", key,
              " must be as long");
  std::vector<std::pair<double, double>> table;
  for (size_t i = 0; i < values.size(); ++i) {
    TORCH_CHECK(values[i] >= 0 && (i == 0 || bytes[i] > bytes[i - 1]), r.path(),
                ": allreduce_bytes must ascend and ", key, " be >= 0");
    table.emplace_back(bytes[i], values[i]);
  }
  return table;
}

// A group of `span` consecutive ranks (tp innermost, then dp, then pp) stays
// within a node when it fits in one.
const Link& link_for(int span, const MachineDescription& m) {
  return span <= m.devices_per_node ? m.intra_node : m.inter_node;
}

}  // namespace

MachineDescription MachineDescription::this_host() {
  MachineDescription m;
  m.name = "this host (Gloo over loopback)";
  // bench_p2p (README, Benchmarks (c)): ~3 GB/s for large transfers, 0.1 to
  // 0.2 ms one way for small ones; traces of pipelines here show the same
  // (a receive that waits ends 0.2-0.3 ms after its send was posted).
  m.intra_node = m.inter_node = Link{150e-6, 3e9};
  m.devices_per_node = 1 << 20;
  m.buffered_sends = true;
  m.rendezvous_sends = true;
  // AdamW over a stage of 1.7 MB of parameters took ~2.5 ms here (7 passes over them).
  m.memory_bytes_per_second = 5e9;
  // Emulated runs here (8 ranks, compute asleep): each F or backward took
  // ~42 us beyond its sleep, posting a batch of sends ~72 us.
  m.instruction_overhead_s = 50e-6;
  m.cores = std::max(1u, std::thread::hardware_concurrency());
  return m;
}

MachineDescription MachineDescription::from_json(const nlohmann::json& j, const std::string& where) {
  JsonObjectReader r(j, where);
  MachineDescription m;
  m.name = r.get("name", m.name);
  m.flops_per_second = r.get("flops_per_second", m.flops_per_second);
  m.memory_bytes_per_second = r.get("memory_bytes_per_second", m.memory_bytes_per_second);
  m.devices_per_node = r.get("devices_per_node", m.devices_per_node);
  m.buffered_sends = r.get("buffered_sends", m.buffered_sends);
  m.rendezvous_sends = r.get("rendezvous_sends", m.rendezvous_sends);
  m.instruction_overhead_s = r.get("instruction_overhead_s", m.instruction_overhead_s);
  m.cores = r.get("cores", m.cores);
  m.shared_speed = r.get("shared_speed", m.shared_speed);
  {
    const auto bytes = r.get("allreduce_bytes", std::vector<double>{});
    m.allreduce_seconds = read_bytes_table(r, bytes, "allreduce_seconds");
    m.allreduce_cpu_seconds = read_bytes_table(r, bytes, "allreduce_cpu_seconds");
    TORCH_CHECK(bytes.empty() || !m.allreduce_seconds.empty(), where,
                ": allreduce_bytes needs allreduce_seconds as long");
  }
  m.transfer_cpu_s = r.get("transfer_cpu_s", m.transfer_cpu_s);
  m.transfer_cpu_s_per_byte = r.get("transfer_cpu_s_per_byte", m.transfer_cpu_s_per_byte);
  TORCH_CHECK(m.transfer_cpu_s >= 0 && m.transfer_cpu_s_per_byte >= 0, where,
              ": transfer_cpu_s and transfer_cpu_s_per_byte must be >= 0");
  for (double v : m.shared_speed) TORCH_CHECK(v > 0 && v <= 1.5, where, ".shared_speed: every pace must be in (0, 1.5]");
  m.intra_node = read_link(r.object("intra_node"), m.intra_node);
  m.inter_node = read_link(r.object("inter_node"), m.inter_node);
  r.finish();
  TORCH_CHECK(m.devices_per_node >= 1 && m.cores >= 0 && m.flops_per_second >= 0 && m.memory_bytes_per_second >= 0,
              where, ": devices_per_node must be >= 1 and rates and cores >= 0");
  return m;
}

double MachineDescription::pace(double processes) const {
  const double k = std::max(processes, 1.0);
  auto at = [&](int whole) {
    if (!shared_speed.empty()) {
      const int n = static_cast<int>(shared_speed.size());
      return whole <= n ? shared_speed[whole - 1] : shared_speed.back() * n / whole;
    }
    return cores > 0 ? std::min(1.0, cores / whole) : 1.0;
  };
  const int below = static_cast<int>(std::floor(k));
  const double frac = k - below;
  return frac == 0 ? at(below) : (1 - frac) * at(below) + frac * at(below + 1);
}

double MachineDescription::allreduce(double bytes, int ranks, int span) const {
  if (ranks <= 1) return 0;
  if (allreduce_seconds.empty())
    return ring_allreduce_seconds(bytes, ranks, span <= devices_per_node ? intra_node : inter_node);
  return (ranks - 1) * by_bytes(allreduce_seconds, bytes);
}

double MachineDescription::transfer_cpu(double bytes) const {
  return bytes > 0 ? transfer_cpu_s + transfer_cpu_s_per_byte * bytes : 0;
}

double MachineDescription::allreduce_cpu(double bytes, int ranks) const {
  if (ranks <= 1 || allreduce_cpu_seconds.empty()) return 0;
  return (ranks - 1.0) / ranks * 2 * by_bytes(allreduce_cpu_seconds, bytes);
}

MachineDescription MachineDescription::named(const std::string& name) {
  MachineDescription m;
  m.name = name;
  m.devices_per_node = 8;
  if (name == "a100") {
    m.flops_per_second = 0.5 * 312e12;  // bf16 dense peak 312 TFLOP/s
    m.memory_bytes_per_second = 1.6e12;
    m.intra_node = {10e-6, 240e9};      // NVLink 3: 300 GB/s per direction
    m.inter_node = {20e-6, 25e9};       // 4 x 200 Gb/s HDR per node of 8
  } else if (name == "h100") {
    m.flops_per_second = 0.5 * 989e12;  // bf16 dense peak 989 TFLOP/s
    m.memory_bytes_per_second = 3.35e12;
    m.intra_node = {8e-6, 360e9};       // NVLink 4: 450 GB/s per direction
    m.inter_node = {15e-6, 50e9};       // 8 x 400 Gb/s NDR per node of 8
  } else {
    TORCH_CHECK(false, "no machine description named '", name, "': use a100 or h100, or give a JSON file");
  }
  return m;
}

double ring_allreduce_seconds(double bytes, int ranks, const Link& link) {
  if (ranks <= 1) return 0;
  const double n = ranks;
  return 2 * (n - 1) * link.latency_s + 2 * (n - 1) / n * bytes / link.bytes_per_s;
}

std::vector<StageTimes> stage_times(const std::vector<StageWork>& work, const Layout& layout,
                                    const MachineDescription& machine) {
  const int stages = layout.pp * layout.virtual_stages;
  TORCH_CHECK(static_cast<int>(work.size()) == stages, "work for ", work.size(), " stages, the layout has ", stages);
  const bool last_keeps = find_schedule(layout.schedule).last_stage_keeps_everything;
  const Link& pp_link = link_for(layout.tp * layout.dp * layout.pp, machine);
  std::vector<StageTimes> times(stages);
  for (int s = 0; s < stages; ++s) {
    const StageWork& w = work[s];
    const double tp_comm = w.tp_allreduces > 0 && layout.tp > 1
                               ? w.tp_allreduces * machine.allreduce(w.tp_allreduce_bytes / w.tp_allreduces,
                                                                     layout.tp, layout.tp)
                               : 0;
    StageTimes& t = times[s];
    t.forward = w.forward_s + tp_comm;
    t.backward = w.backward_s + tp_comm;
    const bool keeps = last_keeps && s == stages - 1;
    t.recompute = keeps ? 0 : w.recompute_s + (w.forward_s > 0 ? tp_comm * std::min(1.0, w.recompute_s / w.forward_s) : 0);
    t.activation_transfer = w.output_bytes > 0 ? pp_link.seconds(w.output_bytes) : 0;
    t.gradient_transfer = w.input_bytes > 0 ? pp_link.seconds(w.input_bytes) : 0;
    t.reduce = machine.allreduce(w.gradient_bytes, layout.dp, layout.tp * layout.dp);
    t.optimizer = w.optimizer_s;
  }
  return times;
}

namespace {

// The play whose step time is the median of kJitterSamples draws (one play
// when nothing varies). Each draw is the slowest of `replicas` plays with
// their own draws: data-parallel replicas vary independently, and the
// gradient all-reduce that ends the step waits for the last of them.
SimulationReport play_with_jitter(const std::vector<std::vector<Instruction>>& program, int microbatches,
                                  const StageTopology& topology, const std::vector<StageTimes>& times,
                                  SimulationOptions options, int replicas) {
  if (options.jitter <= 0) return simulate_schedule(program, microbatches, topology, times, options);
  std::vector<SimulationReport> plays;
  for (int k = 0; k < kJitterSamples; ++k) {
    std::optional<SimulationReport> slowest;
    for (int r = 0; r < replicas; ++r) {
      options.seed = static_cast<unsigned>(k * replicas + r + 1);
      SimulationReport play = simulate_schedule(program, microbatches, topology, times, options);
      if (!slowest || play.makespan > slowest->makespan) slowest = std::move(play);
    }
    plays.push_back(std::move(*slowest));
  }
  std::sort(plays.begin(), plays.end(),
            [](const SimulationReport& a, const SimulationReport& b) { return a.makespan < b.makespan; });
  return std::move(plays[plays.size() / 2]);
}

// On shared cores, a rank's communication takes CPU from compute: each
// forward receives its activations and sends its outputs, each backward
// receives the output gradients and sends the input gradients, and the
// gradient all-reduce runs before the optimizer step. Their CPU seconds
// (alone) become time at the profile's pace `profiled_pace`.
void add_communication_cpu(std::vector<StageTimes>& times, const std::vector<StageWork>& work, const Layout& layout,
                           const MachineDescription& machine, double profiled_pace) {
  for (size_t s = 0; s < times.size(); ++s) {
    const StageWork& w = work[s];
    const double transfers = machine.transfer_cpu(w.input_bytes) + machine.transfer_cpu(w.output_bytes);
    times[s].forward += transfers / profiled_pace;
    times[s].backward += transfers / profiled_pace;
    times[s].optimizer += machine.allreduce_cpu(w.gradient_bytes, layout.dp) / profiled_pace;
  }
}

}  // namespace

SimulationReport simulate_layout(const std::vector<StageWork>& work, const Layout& layout,
                                 const MachineDescription& machine, int profiled_processes) {
  SimulationOptions o;
  // Gloo's sends complete once posted (CPU hosts); NCCL's at their receive.
  const bool shared = machine.cores > 0 || !machine.shared_speed.empty();
  o.mode = machine.buffered_sends ? SendMode::Buffered : SendMode::Blocking;
  o.rendezvous = machine.rendezvous_sends;
  o.receives_ahead = true;  // as the executor posts them
  o.instruction_overhead = machine.instruction_overhead_s;
  const int world = layout.dp * layout.pp * layout.tp;
  o.step_sync = machine.allreduce(16, world, world);
  const auto program = pipeline_schedule(layout.schedule, layout.pp, layout.microbatches, layout.virtual_stages);
  const auto topology = StageTopology::chain(layout.pp * layout.virtual_stages);
  auto times = stage_times(work, layout, machine);
  if (shared) add_communication_cpu(times, work, layout, machine, machine.pace(profiled_processes));
  for (const StageWork& w : work) o.jitter += w.jitter / static_cast<double>(work.size());
  // k simulated ranks computing are k tp groups in each replica: replicas
  // run the same program in step, so they compute (and wait) together.
  if (shared)
    for (int k = 1; k <= layout.pp; ++k)
      o.speed.push_back(machine.pace(layout.dp * layout.tp * k) / machine.pace(profiled_processes));
  return play_with_jitter(program, layout.microbatches, topology, times, o, layout.dp);
}

nlohmann::json stage_times_to_json(const std::vector<StageTimes>& times) {
  nlohmann::json list = nlohmann::json::array();
  for (const StageTimes& t : times)
    list.push_back({{"forward", t.forward}, {"backward", t.backward}, {"recompute", t.recompute},
                    {"activation_transfer", t.activation_transfer}, {"gradient_transfer", t.gradient_transfer},
                    {"reduce", t.reduce}, {"optimizer", t.optimizer}});
  return {{"stages", list}};
}

std::vector<StageTimes> stage_times_from_json(const nlohmann::json& j, const std::string& where) {
  JsonObjectReader root(j, where);
  std::vector<StageTimes> times;
  for (JsonObjectReader& r : root.objects("stages")) {
    StageTimes t;
    t.forward = r.required<double>("forward");
    t.backward = r.required<double>("backward");
    t.recompute = r.get<double>("recompute", 0);
    t.activation_transfer = r.get<double>("activation_transfer", 0);
    t.gradient_transfer = r.get<double>("gradient_transfer", 0);
    t.reduce = r.get<double>("reduce", 0);
    t.optimizer = r.get<double>("optimizer", 0);
    r.finish();
    for (double v : {t.forward, t.backward, t.recompute, t.activation_transfer, t.gradient_transfer, t.reduce,
                     t.optimizer})
      TORCH_CHECK(std::isfinite(v) && v >= 0, r.path(), ": every time must be a finite number of seconds >= 0");
    times.push_back(t);
  }
  root.finish();
  TORCH_CHECK(!times.empty(), where, ": \"stages\" lists no stage");
  return times;
}

// ---- Measured here ----------------------------------------------------------

namespace {

// A received activation or an output gradient the profile makes up: random
// values of the stage graph's traced type.
torch::Tensor stand_in(const c10::TypePtr& type, c10::Device device) {
  const auto t = type->cast<c10::TensorType>();
  TORCH_INTERNAL_ASSERT(t && t->scalarType() && t->sizes().concrete_sizes(), "a stage value without a known shape");
  const auto options = torch::TensorOptions(*t->scalarType()).device(device);
  const auto sizes = *t->sizes().concrete_sizes();
  return c10::isFloatingType(*t->scalarType()) ? torch::randn(sizes, options) : torch::zeros(sizes, options);
}

// Seconds of each kind of compute instruction a stage ran.
struct InstructionTimes {
  std::vector<double> forward, backward_after_forward, backward_after_recompute, recompute;
  // Wall seconds of the forwards and backwards after a forward, whatever the
  // clock above: how much an instruction's time varies in a run includes
  // waiting for a core, which a CPU clock does not see.
  std::vector<double> forward_wall, backward_after_forward_wall;
};

double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool is_compute(Instruction::Op op) {
  return is_forward(op) || op == Instruction::Op::Recompute || op == Instruction::Op::Backward;
}

// What stage `exec` gets from its neighbours for one instruction, made up:
// the activations a forward receives, the output gradients a backward does.
struct MadeUpTransfers {
  std::vector<torch::Tensor> received;
  std::map<int, torch::Tensor> grads;
};

MadeUpTransfers made_up_transfers(const StageExecution& exec, Instruction::Op op, c10::Device device) {
  const StageProgram& me = exec.program();
  MadeUpTransfers t{std::vector<torch::Tensor>(me.inputs.size()), {}};
  if (is_forward(op)) {
    for (size_t i = 0; i < me.inputs.size(); ++i)
      if (me.inputs[i].kind == StageInput::Kind::Activation) {
        t.received[i] = stand_in(me.graph->inputs()[i]->type(), device);
        if (t.received[i].is_floating_point()) t.received[i].requires_grad_(true);
      }
  } else if (op == Instruction::Op::Backward) {
    for (size_t o = 0; o < me.outputs.size(); ++o)
      if (me.outputs[o].model_output != 0 && !me.outputs[o].to_stages.empty()) {
        auto g = stand_in(me.graph->outputs()[o]->type(), device);
        if (g.is_floating_point()) t.grads[static_cast<int>(o)] = g;
      }
  }
  return t;
}

// Seconds on the profile's clock: the wall's, or with `cpu_clock` the
// calling thread's CPU time.
double profile_clock(const ProfileSettings& settings) {
  if (settings.cpu_clock) {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
  }
  return wall_seconds();
}

// One pipeline rank runs its instructions of the step (`program`: forwards,
// F*, R, backwards of each of its chunks, `chunks[c]` running chunk c, in the
// schedule's order, so that other microbatches' and chunks' work comes
// between a forward and its backward as in a run; transfers left out,
// received activations and output gradients made up), `warmup` + `repeats`
// times; each compute instruction of the timed runs is timed, per chunk.
std::vector<InstructionTimes> time_rank_program(const std::vector<const StageExecution*>& chunks,
                                                const std::vector<Instruction>& program, const SampleBatch& batch,
                                                int microbatches, const ProfileSettings& settings) {
  const c10::Device device = batch.inputs.empty() ? c10::Device(c10::kCPU) : batch.inputs[0].device();
  std::vector<InstructionTimes> times(chunks.size());
  for (int run = 0; run < settings.warmup + settings.repeats; ++run) {
    std::map<std::pair<int, int>, StageActivations> live;  // (chunk, microbatch)
    std::map<std::pair<int, int>, bool> recomputed;
    for (const Instruction& ins : program) {
      if (!is_compute(ins.op)) continue;
      const std::pair<int, int> key{ins.chunk, ins.microbatch};
      const StageExecution& exec = *chunks.at(ins.chunk);
      InstructionTimes& mine = times[ins.chunk];
      const RngPolicy rng{RngPolicy::Mode::PerOp, 0, ins.microbatch};
      MadeUpTransfers made_up = made_up_transfers(exec, ins.op, device);
      const double t0 = profile_clock(settings), wall0 = wall_seconds();
      std::vector<double>* into = nullptr;
      std::vector<double>* wall_into = nullptr;
      if (is_forward(ins.op)) {
        live[key] = exec.forward(std::move(made_up.received), batch, {}, rng, ins.op == Instruction::Op::Forward);
        recomputed[key] = false;
        into = &mine.forward;
        wall_into = &mine.forward_wall;
      } else if (ins.op == Instruction::Op::Recompute) {
        exec.recompute(live.at(key));
        recomputed[key] = true;
        into = &mine.recompute;
      } else {
        exec.backward(std::move(live.at(key)), made_up.grads, 1.0 / microbatches);
        live.erase(key);
        into = recomputed[key] ? &mine.backward_after_recompute : &mine.backward_after_forward;
        if (!recomputed[key]) wall_into = &mine.backward_after_forward_wall;
      }
      if (run >= settings.warmup) {
        into->push_back(profile_clock(settings) - t0);
        if (wall_into) wall_into->push_back(wall_seconds() - wall0);
      }
    }
  }
  return times;
}

std::vector<const StageExecution*> pointers(const std::vector<std::unique_ptr<StageExecution>>& execs) {
  std::vector<const StageExecution*> out;
  for (const auto& e : execs) out.push_back(e.get());
  return out;
}

// Coefficient of variation, robust to a rare outlier: 1.4826 x the median
// absolute deviation over the median (0 for fewer than 3 samples).
double variation(std::vector<double> v) {
  if (v.size() < 3) return 0;
  const double mid = median(v);
  for (double& x : v) x = std::abs(x - mid);
  return mid > 0 ? 1.4826 * median(v) / mid : 0;
}

// The mean: a step pays for every instruction, its slow first ones included.
double mean_or(const std::vector<double>& v, double otherwise) {
  return v.empty() ? otherwise : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

// The stage's optimizer step as the trainer takes it: the squared gradient
// norm, clipping, AdamW over its trainable parameters (copies, with the
// gradients the profile accumulated), median of `repeats`.
double time_optimizer(const StageExecution& exec, const ProfileSettings& settings) {
  std::vector<torch::Tensor> copies;
  for (const auto& [id, p] : exec.parameters())
    if (p.requires_grad() && p.grad().defined()) {
      auto c = p.detach().clone().requires_grad_(true);
      c.mutable_grad() = p.grad().clone();
      copies.push_back(c);
    }
  if (copies.empty()) return 0;
  const auto optimizer = make_optimizer(settings.optimizer, copies);
  std::vector<double> seconds;
  for (int r = 0; r < settings.warmup + settings.repeats; ++r) {
    const double t0 = profile_clock(settings);
    {
      torch::NoGradGuard no_grad;
      auto sq = torch::zeros({}, torch::kFloat64);
      for (const auto& c : copies) sq += squared_sum(c.grad()).cpu();
      const double clip = settings.optimizer.grad_clip;
      const double coef = clip / (std::sqrt(sq.item<double>()) + 1e-6);
      if (clip > 0) for (const auto& c : copies) c.grad().mul_(std::min(1.0, coef));
    }
    optimizer->step();
    if (r >= settings.warmup) seconds.push_back(profile_clock(settings) - t0);
  }
  return median(seconds);
}

double largest_peer_bytes(const std::vector<PlanTransfer>& transfers) {
  std::map<int, double> per_peer;
  for (const auto& t : transfers) per_peer[t.peer] += static_cast<double>(t.bytes);
  double most = 0;
  for (const auto& [peer, bytes] : per_peer) most = std::max(most, bytes);
  return most;
}

// The stages as one tp rank runs them: rewritten for rank 0 of `tp`, with
// its parameter slices, their all-reduces going nowhere (the simulator adds
// what they cost), or for this rank of a real group.
struct ShardedStages {
  std::unique_ptr<RegisteredGroup> group;
  std::map<std::string, ParameterShard> shards;
  TracedModel model;
};

}  // namespace

std::vector<StageWork> profile_stage_work(const TracedModel& model, const ProxyGraph& proxy, const StagePlan& plan,
                                          const std::vector<StageRecompute>& recompute, const SampleBatch& microbatch,
                                          const ProfileSettings& settings) {
  TORCH_CHECK(settings.repeats >= 1 && settings.warmup >= 0, "profile needs repeats >= 1 and warmup >= 0");
  check_not_deferred(model, "profiling stage times");
  const int n = plan.num_stages();
  TORCH_CHECK(static_cast<int>(recompute.size()) == n, "recompute plan for ", recompute.size(), " stages, the plan has ", n);
  const int tp = settings.sharding ? settings.sharding->tp : 1;
  std::vector<StageProgram> stages = split_into_stages(model, proxy, plan.stage_of_layer(proxy));
  ShardedStages sharded;
  const bool real_group = tp > 1 && settings.tp_group >= 0;
  TORCH_CHECK(!(real_group && settings.cpu_clock),
              "profile: cpu_clock cannot time a real tp group (its waits in all-reduces take no CPU); use the wall clock");
  if (tp > 1) {
    const int rank = real_group ? settings.tp_rank : 0;
    if (!real_group)
      sharded.group = std::make_unique<RegisteredGroup>(TensorParallelGroup{0, tp, [](torch::Tensor&) {}});
    const int64_t group = real_group ? settings.tp_group : sharded.group->id();
    sharded.shards = parameter_shards(model, *settings.sharding);
    sharded.model = with_parameter_shards(model, sharded.shards, rank, tp);
    for (StageProgram& stage : stages)
      shard_stage(stage, {&model, settings.sharding, &sharded.shards, rank, tp, group, true});
  }
  const TracedModel& rank_model = tp > 1 ? sharded.model : model;
  const c10::Device device = microbatch.inputs.empty() ? c10::Device(c10::kCPU) : microbatch.inputs[0].device();
  const int m = plan.pipeline.microbatches > 0 ? plan.pipeline.microbatches : n / plan.pipeline.virtual_stages;
  std::vector<std::pair<int, double>> allreduces(n, {0, 0.0});
  if (tp > 1 && !real_group) allreduces = tensor_parallel_allreduces(*settings.sharding, plan);
  const int v = plan.pipeline.virtual_stages, ranks = n / v;
  std::vector<StageWork> work(n);
  for (int r = 0; r < ranks; ++r) {
    const std::vector<Instruction> program = stage_schedule(plan.pipeline.schedule, ranks, m, r, v);
    std::vector<std::unique_ptr<StageExecution>> plain, checkpointed;
    bool any_recompute = false;
    for (int c = 0; c < v; ++c) {
      const int s = c * ranks + r;
      plain.push_back(std::make_unique<StageExecution>(stages[s], rank_model, proxy, device));
      checkpointed.push_back(std::make_unique<StageExecution>(stages[s], rank_model, proxy, device));
      if (!recompute[s].layer_segments.empty() || recompute[s].attention_cores) {
        checkpointed.back()->checkpoint_layers(recompute[s].layer_segments, recompute[s].attention_cores);
        any_recompute = true;
      }
    }
    const auto kept = time_rank_program(pointers(plain), program, microbatch, m, settings);
    const auto dropped = any_recompute ? time_rank_program(pointers(checkpointed), program, microbatch, m, settings)
                                       : std::vector<InstructionTimes>(v);
    for (int c = 0; c < v; ++c) {
      const int s = c * ranks + r;
      StageWork& w = work[s];
      w.forward_s = mean_or(kept[c].forward, 0);
      w.backward_s = mean_or(kept[c].backward_after_forward, mean_or(kept[c].backward_after_recompute, 0));
      if (!recompute[s].layer_segments.empty() || recompute[s].attention_cores) {
        w.forward_s = mean_or(dropped[c].forward, w.forward_s);
        w.recompute_s = std::max(0.0, mean_or(dropped[c].backward_after_forward, w.backward_s) - w.backward_s);
      }
      w.optimizer_s = time_optimizer(*plain[c], settings);
      w.jitter = (variation(kept[c].forward_wall) + variation(kept[c].backward_after_forward_wall)) / 2;
    }
  }
  for (int s = 0; s < n; ++s) {
    StageWork& w = work[s];
    w.output_bytes = largest_peer_bytes(plan.stages[s].sends) / tp;
    w.input_bytes = largest_peer_bytes(plan.stages[s].receives) / tp;
    w.gradient_bytes = static_cast<double>(plan.stages[s].param_bytes) / tp;
    w.tp_allreduces = allreduces[s].first;
    w.tp_allreduce_bytes = allreduces[s].second;
  }
  return work;
}

std::vector<std::pair<int, double>> tensor_parallel_allreduces(const ShardingAnalysis& analysis,
                                                               const StagePlan& plan) {
  std::map<std::string, int> stage_of_param;
  for (int s = 0; s < plan.num_stages(); ++s)
    for (const auto& p : plan.stages[s].params) stage_of_param.emplace(p, s);
  std::vector<std::pair<int, double>> out(plan.num_stages(), {0, 0.0});
  for (const LinearDecision& d : analysis.linears) {
    if (d.mode != LinearDecision::Mode::Row && d.mode != LinearDecision::Mode::Vocab) continue;
    auto it = stage_of_param.find(d.weight);
    if (it == stage_of_param.end() || !d.node) continue;
    double bytes = 0;
    if (auto type = d.node->output()->type()->cast<c10::TensorType>(); type && type->numel() && type->scalarType())
      bytes = static_cast<double>(*type->numel()) * static_cast<double>(c10::elementSize(*type->scalarType()));
    out[it->second].first += 1;
    out[it->second].second += bytes;
  }
  return out;
}

std::vector<StageWork> work_of_times(const std::vector<StageTimes>& times, const StagePlan& plan, int tp) {
  TORCH_CHECK(static_cast<int>(times.size()) == plan.num_stages(), "times for ", times.size(),
              " stages, the plan has ", plan.num_stages());
  std::vector<StageWork> work(times.size());
  for (size_t s = 0; s < times.size(); ++s) {
    StageWork& w = work[s];
    w.forward_s = times[s].forward;
    w.backward_s = times[s].backward;
    w.recompute_s = times[s].recompute;
    w.optimizer_s = times[s].optimizer;
    w.output_bytes = largest_peer_bytes(plan.stages[s].sends) / tp;
    w.input_bytes = largest_peer_bytes(plan.stages[s].receives) / tp;
    w.gradient_bytes = static_cast<double>(plan.stages[s].param_bytes) / tp;
  }
  return work;
}

// ---- Derived for a device ---------------------------------------------------

int64_t GptShape::parameters() const {
  return layers * (12 * hidden * hidden + 13 * hidden) + vocab * hidden + seq * hidden + 2 * hidden;
}

std::vector<StageWork> gpt_stage_work(const GptShape& gpt, int64_t microbatch_rows, const Layout& layout,
                                      const MachineDescription& machine, const RecomputeSettings& recompute) {
  TORCH_CHECK(machine.flops_per_second > 0 && machine.memory_bytes_per_second > 0, "machine '", machine.name,
              "' needs flops_per_second and memory_bytes_per_second for analytic GPT costs");
  const int n = layout.pp * layout.virtual_stages;
  TORCH_CHECK(gpt.layers >= n, "a GPT of ", gpt.layers, " blocks cannot fill ", n, " stages");
  const double b = static_cast<double>(microbatch_rows), s = static_cast<double>(gpt.seq),
               h = static_cast<double>(gpt.hidden), v = static_cast<double>(gpt.vocab), tp = layout.tp;
  const double block_flops = 24 * b * s * h * h + 4 * b * s * s * h;
  const double head_flops = 2 * b * s * h * v;
  const double block_params = 12 * h * h + 13 * h;
  std::vector<double> share(n, 0);  // of the forward a plain F drops
  if (recompute.policy == "full") {
    std::fill(share.begin(), share.end(), 1.0);
  } else if (recompute.policy == "stage_aware") {
    share = stage_aware_ratios_for(peak_in_flight(layout.schedule, layout.pp, layout.microbatches, layout.virtual_stages),
                                   recompute.ratio);
  } else {
    TORCH_CHECK(recompute.policy == "none", "analytic GPT costs know recompute none, full and stage_aware, not '",
                recompute.policy, "'");
  }
  std::vector<StageWork> work(n);
  for (int k = 0; k < n; ++k) {
    const int64_t blocks = gpt.layers / n + (k < gpt.layers % n ? 1 : 0);
    const bool first = k == 0, last = k == n - 1;
    const double flops = blocks * block_flops + (last ? head_flops : 0);
    double params = blocks * block_params + (first ? (v + s) * h : 0) + (last ? v * h + 2 * h : 0);
    StageWork& w = work[k];
    w.forward_s = flops / tp / machine.flops_per_second;
    w.backward_s = 2 * w.forward_s;
    w.recompute_s = share[k] * blocks * block_flops / tp / machine.flops_per_second;
    w.output_bytes = last ? 0 : 2 * b * s * h;
    w.input_bytes = first ? 0 : 2 * b * s * h;
    w.gradient_bytes = 2 * params / tp;
    w.tp_allreduces = static_cast<int>(2 * blocks + (first ? 1 : 0));
    w.tp_allreduce_bytes = w.tp_allreduces * 2 * b * s * h;
    // Mixed-precision AdamW streams ~32 bytes per parameter (fp32 master,
    // two moments and gradient read; master, moments and bf16 copy written).
    w.optimizer_s = 32 * params / tp / machine.memory_bytes_per_second;
  }
  return work;
}

}  // namespace trine
