#include "trine/runtime/trainer.h"

#include "auto_layout.h"
#include "trine/runtime/checkpoint.h"
#include "step_trace.h"
#include "trine/runtime/step_prediction.h"

#include "trine/common/files.h"
#include "trine/frontend/proxy_graph.h"
#include "trine/frontend/stage_split.h"
#include "trine/frontend/turns.h"
#include "trine/partitioner/cost_model.h"
#include "trine/partitioner/profiler.h"
#include "trine/partitioner/stage_plan.h"
#include "trine/recompute/memory_model.h"
#include "trine/recompute/recompute_policy.h"
#include "trine/runtime/communicator.h"
#include "trine/runtime/distributed_session.h"
#include "trine/runtime/optimizer.h"
#include "trine/runtime/pretrained_weights.h"
#include "trine/runtime/pipeline_executor.h"
#include "trine/runtime/tensor_parallel_report.h"
#include "trine/schedules/schedule_registry.h"
#include "trine/schedules/schedule_checker.h"
#include "trine/tensor_parallel/parameter_shards.h"
#include "trine/tensor_parallel/sharding_analysis.h"
#include "trine/tensor_parallel/stage_sharding.h"
#include "trine/tensor_parallel/sub_microbatches.h"
#include "trine/tensor_parallel/tensor_parallel_group.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <set>
#include <thread>
#include <unistd.h>

namespace trine {

namespace {

using Clock = std::chrono::steady_clock;

// Rows [begin, begin + rows) of every input and target.
SampleBatch rows_of(const SampleBatch& b, int64_t begin, int64_t rows) {
  SampleBatch out;
  for (const auto& t : b.inputs) out.inputs.push_back(t.narrow(0, begin, rows));
  for (const auto& t : b.targets) out.targets.push_back(t.narrow(0, begin, rows));
  return out;
}

int64_t rows_in(const SampleBatch& b) {
  TORCH_CHECK(!b.inputs.empty() && b.inputs[0].dim() >= 1, "a batch needs at least one input with a batch dimension");
  const int64_t n = b.inputs[0].size(0);
  for (const auto* list : {&b.inputs, &b.targets})
    for (const auto& t : *list)
      TORCH_CHECK(t.dim() >= 1 && t.size(0) == n, "every input and target of a batch must have the same number of ",
                  "rows (dim 0); found ", n, " and ", t.dim() ? t.size(0) : 0);
  return n;
}

// Checkpoints and traces are written after training steps: find out now
// whether they can be. `key` names the setting in the message.
void check_writable_directory(const std::string& dir, const std::string& key, const std::string& otherwise) {
  try {
    make_directories(dir);
    const std::string probe = dir + "/.trine-write-check-" + std::to_string(::getpid());
    write_file_atomically(probe, "");
    ::unlink(probe.c_str());
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, key, " '", dir, "' cannot be written (", e.what_without_backtrace(),
                "): choose a directory this process can create and write to, or ", otherwise);
  }
}

// The directory a file goes to ("." for a bare name).
std::string directory_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(slash, 1));
}

// Every batch must have the shapes and dtypes the model was traced with
// (rows aside): checked on every rank, before any rank sends or waits.
void check_batch_like_trace(const SampleBatch& b, const TracedModel& traced) {
  size_t d = 0, t = 0;
  for (const auto& in : traced.inputs) {
    if (in.kind != InputKind::Data && in.kind != InputKind::Target) continue;
    const bool data = in.kind == InputKind::Data;
    const auto& list = data ? b.inputs : b.targets;
    const size_t i = data ? d++ : t++;
    TORCH_CHECK(i < list.size(), "the batch has ", list.size(), " ", data ? "input" : "target", "(s), but the model "
                "was traced with more: every batch needs the sample's inputs and targets");
    const auto got = list[i].sizes().slice(1), want = in.value.sizes().slice(1);
    TORCH_CHECK(got == want && list[i].scalar_type() == in.value.scalar_type(), data ? "input " : "target ", i,
                " of the batch has rows of shape ", got, " (", list[i].scalar_type(), "), but the model was traced "
                "with rows of shape ", want, " (", in.value.scalar_type(), "): shapes are fixed when tracing, so "
                "every batch must have the sample's row shape and dtype (or trace again with a sample of the new "
                "shape)");
  }
  TORCH_CHECK(d == b.inputs.size() && t == b.targets.size(), "the batch has ", b.inputs.size(), " input(s) and ",
              b.targets.size(), " target(s), but the model was traced with ", d, " and ", t);
}

}  // namespace

// How a global batch is cut, decided once (split_batch) from the config and
// the sample: the one source of the microbatch count. It reaches the plan's
// pipeline shape, from there the schedule program, and the executor counts it
// from the program; Trainer::init checks that the count came back unchanged.
struct BatchSplit {
  int64_t global_rows = 0;      // rows of one step's batch, all replicas
  int64_t replica_rows = 0;     // rows each data-parallel replica takes
  int64_t microbatch_rows = 0;  // rows of one microbatch (the traced shape)
  int microbatches = 0;         // microbatches per replica per step
};

struct Trainer::Impl {
  TrainConfig config;
  DistributedSession* session = nullptr;
  std::unique_ptr<ProcessGrid> grid;
  int rank = 0, stage = 0, replica = 0;
  BatchSplit split;
  TracedModel traced;
  ProxyGraph proxy;
  std::unique_ptr<StagePlan> plan;
  std::unique_ptr<Communicator> world, dp, pp, tp;
  std::vector<std::unique_ptr<Communicator>> tied_groups;
  // Tensor parallelism (tp > 1): the layout, every parameter's cut, this
  // rank's place in its tp group, the group as the stage graphs' ops see it
  // (it outlives the executor, whose autograd graphs name it), and the traced
  // model with this rank's parameter slices (what its stages start from).
  ShardingAnalysis tp_analysis;
  std::map<std::string, ParameterShard> tp_shards;
  int tp_rank = 0;
  std::unique_ptr<RegisteredGroup> tp_group;
  TracedModel rank_model;
  // Deferred parameters (frontend/deferred_init.h): their initial values.
  ParameterInit init;
  std::vector<ShardedStageBytes> tp_stage_bytes;  // per stage: what one tp rank holds of it
  std::atomic<int64_t> tp_ns{0};  // spent in tp all-reduces since the step began
  // Sub-microbatches (tensor_parallel.sub_microbatches > 1): the model traced
  // at a part's rows, its proxy and layout, and this rank's part programs
  // (per model chunk, one per part) for the executor.
  TracedModel part_traced;
  ProxyGraph part_proxy;
  ShardingAnalysis part_analysis;
  std::vector<std::vector<StageProgram>> part_stages;
  StepTimings timings;     // the executor's for the last step, with tensor_parallel_s
  std::unique_ptr<PipelineExecutor> executor;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  int64_t step = 0;
  double last_loss = 0;
  c10::intrusive_ptr<c10d::Store> store;  // this trainer's prefix of the session's store
  std::chrono::steady_clock::time_point trace_origin;  // logging.trace: time 0, after the start-up barrier
  bool trace_written = false;
  int64_t skipped_in_a_row = 0, skipped_total = 0;
  bool last_skipped = false;

  // Whether this step's loss and gradient norm (the same on every rank) are
  // finite; if not, drops the step's gradients and buffer updates, counts it,
  // and stops training once max_skipped_steps came in a row.
  bool accept_step(double loss, double norm);

  void optimizer_step();
  void check_memory_budget();
  // logging.trace: gathers the traced steps' timelines on rank 0 and writes them.
  void write_trace();
  // config.emulate: rank 0 reads or profiles every stage's compute times and
  // publishes them (or its error) through the store; every rank keeps them.
  void agree_on_emulation(c10d::Store& store, const std::vector<StageProgram>& stages, const SampleBatch& first);
  std::vector<StageTimes> emulation_times_on_rank_0(const std::vector<StageProgram>& stages,
                                                    const SampleBatch& first) const;
  std::vector<StageTimes> emulate_times;

  // The construction steps, in the order Trainer::init runs them.
  void split_batch(const SampleBatch& sample);
  std::string trace_model(const Tracer& tracer, const SampleBatch& first, c10::Device device);
  std::string plan_on_rank_0(const SampleBatch& first) const;
  void agree_on_plan(c10d::Store& store, const std::string& trace_error, const SampleBatch& first,
                     std::chrono::milliseconds timeout);
  ExecutorGroups make_groups(const std::vector<StageProgram>& stages, const std::string& prefix, c10::Device device,
                             std::chrono::milliseconds timeout);
  // The tensor-parallel layout, found on the traced model alike on every rank
  // (so that its errors are raised on every rank before any group forms).
  void plan_tensor_parallel();
  // The model traced again at 1/sub_microbatches of the rows, checked
  // against the whole trace (before the plan, so its errors reach every rank).
  void trace_parts(const Tracer& tracer, const SampleBatch& first, c10::Device device);
  // Every stage cut from that trace and rewritten for each part (checked on
  // every rank); keeps this rank's chunks' parts for the executor.
  void cut_parts(const std::vector<StageProgram>& stages);
  // This rank's stages rewritten for its tp rank, and its parameter slices.
  void shard_stages(std::vector<StageProgram>& stages);
  // Allocates this rank's deferred parameters (its stages', its tp slices)
  // in rank_model with their initial values; returns their graph inputs.
  std::vector<int64_t> materialize_deferred(const std::vector<StageProgram>& stages, c10::Device device);
  // Back to stand-ins once the executor holds its own copies.
  void release_materialized(const std::vector<int64_t>& inputs);
  void build_executor(std::vector<StageProgram> stages, const ExecutorGroups& groups, c10::Device device);
  CheckpointParts checkpoint_parts() const;
  void resume(c10d::Store& store);
  void load_weights();
  // Per stage, the layers it recomputes (config.recompute under this schedule).
  std::vector<StageRecompute> recompute_plan(const std::vector<StageProgram>& stages) const;
};

Trainer::Trainer(torch::nn::AnyModule module, const LossFn& loss, const SampleBatch& sample, const TrainConfig& config,
                 ParameterInit init)
    : impl_(std::make_unique<Impl>()) {
  impl_->init = init ? std::move(init) : torch_default_init(*module.ptr());
  this->init(
      [&](const SampleBatch& mb, c10::Device device) {
        if (!device.is_cpu()) move_module(*module.ptr(), device);
        return trace(module, loss, mb);
      },
      sample, config);
}

Trainer::Trainer(torch::jit::Module module, const LossFn& loss, const SampleBatch& sample, const TrainConfig& config)
    : impl_(std::make_unique<Impl>()) {
  init(
      [&](const SampleBatch& mb, c10::Device device) {
        if (!device.is_cpu()) module.to(device);
        return trace(module, loss, mb);
      },
      sample, config);
}

Trainer::~Trainer() = default;

// ---- Construction, as named steps (Trainer::init runs them in order) --------

namespace {

c10::Device device_of(const TrainConfig& config, const LaunchInfo& launch) {
  if (config.device != "cuda") return c10::Device(c10::kCPU);
  TORCH_CHECK(torch::cuda::is_available(), "config.device is \"cuda\" but no CUDA device is available here");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(launch.local_rank % torch::cuda::device_count()));
}

// The stage topology a plan gives the schedule: who sends activations to whom.
StageTopology topology_of(const std::vector<StageProgram>& stages, int num_stages) {
  StageTopology topology;
  topology.consumers.resize(num_stages);
  for (const auto& st : stages) {
    std::set<int> to;
    for (const auto& o : st.outputs) to.insert(o.to_stages.begin(), o.to_stages.end());
    topology.consumers[st.stage].assign(to.begin(), to.end());
  }
  return topology;
}

// Proves the schedule on this plan's topology before running it: skip
// transfers (stage i straight to i+2 or later) are safe with Gloo's
// background sends, but can deadlock 1F1B under NCCL's blocking ones.
void prove_schedule(const TrainConfig& config, const StagePlan& plan, const std::vector<StageProgram>& stages,
                    c10::Device device) {
  const int p = config.parallel.pp, m = plan.pipeline.microbatches, v = plan.pipeline.virtual_stages;
  try {
    check_schedule(pipeline_schedule(plan.pipeline.schedule, p, m, v), m, topology_of(stages, p * v),
                   device.is_cpu() ? SendMode::Buffered : SendMode::Blocking);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "the ", plan.pipeline.schedule, " schedule cannot run this plan on ", device, ": ",
                e.what_without_backtrace(), "\n(try \"schedule\": \"gpipe\", or a plan whose stages send only to the next)");
  }
}

}  // namespace

void Trainer::Impl::split_batch(const SampleBatch& sample) {
  const auto& par = config.parallel;
  const int64_t sample_rows = rows_in(sample);
  split.global_rows = config.global_batch > 0 ? config.global_batch : sample_rows;
  split.microbatches = config.microbatches;
  const int64_t parts = static_cast<int64_t>(par.dp) * split.microbatches;
  TORCH_CHECK(split.global_rows % parts == 0, "global batch ", split.global_rows, " does not split into dp (", par.dp,
              ") x microbatches (", split.microbatches, ") = ", parts, " equal microbatches: make it a multiple of ",
              parts);
  split.replica_rows = split.global_rows / par.dp;
  split.microbatch_rows = split.global_rows / parts;
  TORCH_CHECK(sample_rows >= split.microbatch_rows, "the sample batch has ", sample_rows,
              " rows, fewer than one microbatch (", split.microbatch_rows, ")");
  const int parts_per_microbatch = config.tensor_parallel.sub_microbatches;
  TORCH_CHECK(split.microbatch_rows % parts_per_microbatch == 0, "a microbatch of ", split.microbatch_rows,
              " rows does not split into config.tensor_parallel.sub_microbatches (", parts_per_microbatch,
              ") equal parts: make the microbatch rows (global_batch / (dp x microbatches)) a multiple of it");
}

// Every rank traces the same model on the same microbatch: identical graphs
// (on the device, so that constants such as a position arange live there),
// and finds the same tensor-parallel layout on it.
// Returns the error instead of throwing it: rank 0 must publish it first.
std::string Trainer::Impl::trace_model(const Tracer& tracer, const SampleBatch& first, c10::Device device) {
  try {
    traced = tracer(first, device);
    TORCH_CHECK(traced.has_loss, "the trainer needs a loss function");
    proxy = build_proxy_graph(traced);
    plan_tensor_parallel();
    trace_parts(tracer, first, device);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Rank 0 plans and publishes the plan, or its error (or its own trace error),
// so that every rank uses the same plan even when planning measures this
// machine. A rank other than 0 whose trace failed says it is done with the
// plan before failing; rank 0, which hosts the store, stays after an error
// until every rank has read it (or the timeout passed), so that none of them
// waits on a store that is gone.
std::string Trainer::Impl::plan_on_rank_0(const SampleBatch& first) const {
  const auto& par = config.parallel;
  try {
    PlanOptions o;
    o.stages = par.pp * config.virtual_stages;
    o.memory_limit_bytes = config.partition.memory_limit_bytes;
    o.pipeline.schedule = config.schedule;
    o.pipeline.microbatches = split.microbatches;
    o.pipeline.virtual_stages = config.virtual_stages;
    o.seed = config.seed;
    o.manual_starts = config.partition.starts;
    CostModel costs = config.partition.profile ? profile_layers(traced, proxy, first) : analytic_costs(proxy);
    // Memory as this run's optimizer will use it (AdamW 2x, SGD 1x or 0x).
    costs.optimizer_state_factor = optimizer_state_factor(config.optimizer);
    const std::string method = o.stages == 1 ? "uniform" : config.partition.method;
    return "plan:" + plan_stages(proxy, costs, method, o).to_json().dump();
  } catch (const c10::Error& e) {
    return std::string("error:") + e.what_without_backtrace();
  } catch (const std::exception& e) {
    return std::string("error:") + e.what();
  }
}

void Trainer::Impl::agree_on_plan(c10d::Store& store, const std::string& trace_error, const SampleBatch& first,
                                  std::chrono::milliseconds timeout) {
  if (!trace_error.empty() && rank != 0) {
    store.add("plan_read", 1);
    TORCH_CHECK(false, trace_error);
  }
  if (rank == 0) {
    const std::string published = trace_error.empty() ? plan_on_rank_0(first) : "error:" + trace_error;
    store.set("plan", std::vector<uint8_t>(published.begin(), published.end()));
  }
  const auto bytes = store.get("plan");
  const std::string text(bytes.begin(), bytes.end());
  const bool failed = text.rfind("error:", 0) == 0;
  store.add("plan_read", 1);
  if (failed && rank == 0) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (store.add("plan_read", 0) < grid->world_size() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  TORCH_CHECK(trace_error.empty(), trace_error);
  TORCH_CHECK(!failed, "planning failed on rank 0: ", text.substr(6));
  plan = std::make_unique<StagePlan>(StagePlan::from_json(nlohmann::json::parse(text.substr(5))));
}

// Groups, created in the same order on every rank (construction blocks until
// all members arrive): world, data-parallel, pipeline, then one per set of
// ranks whose stages hold the same tied parameters (stage s is on pipeline
// rank s mod pp; copies on one rank are summed by the executor).
ExecutorGroups Trainer::Impl::make_groups(const std::vector<StageProgram>& stages, const std::string& prefix,
                                          c10::Device device, std::chrono::milliseconds timeout) {
  auto make_group = [&](const std::string& kind, const std::vector<int>& ranks) {
    std::string name = prefix + "/" + kind;
    for (int r : ranks) name += "-" + std::to_string(r);
    return ranks.size() == 1 ? std::make_unique<Communicator>()
                             : std::make_unique<Communicator>(session->store, name, ranks, rank, device, timeout);
  };
  std::vector<int> all(grid->world_size());
  for (int r = 0; r < grid->world_size(); ++r) all[r] = r;
  world = make_group("world", all);
  dp = make_group("dp", grid->group(rank, Dim::DP));
  pp = make_group("pp", grid->group(rank, Dim::PP));
  tp = make_group("tp", grid->group(rank, Dim::TP));
  const int pipeline_ranks = config.parallel.pp;
  std::map<std::vector<int>, std::vector<int>> tied;  // holding pipeline ranks -> parameter ids
  for (size_t p = 0; p < proxy.params.size(); ++p) {
    std::set<int> holders;
    int copies = 0;
    for (const auto& s : stages)
      if (std::count(s.params.begin(), s.params.end(), static_cast<int>(p))) {
        holders.insert(s.stage % pipeline_ranks);
        ++copies;
      }
    if (copies > 1 && proxy.params[p].requires_grad)
      tied[std::vector<int>(holders.begin(), holders.end())].push_back(static_cast<int>(p));
  }
  ExecutorGroups groups{pp.get(), dp.get(), {}};
  for (const auto& [holders, params] : tied) {
    if (!std::count(holders.begin(), holders.end(), stage)) continue;
    std::vector<int> ranks;
    for (int s : holders) ranks.push_back(grid->rank_of(replica, s, grid->coord(rank, Dim::TP)));
    tied_groups.push_back(make_group("tied", ranks));
    for (int p : params) groups.tied[p] = tied_groups.back().get();
  }
  return groups;
}

void Trainer::Impl::plan_tensor_parallel() {
  tp_rank = grid->coord(rank, Dim::TP);
  rank_model = traced;
  const int t = config.parallel.tp;
  if (t == 1) return;
  const auto& c = config.tensor_parallel;
  try {
    tp_analysis = analyze_sharding(traced, t, {c.column, c.row, c.replicate});
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "config.tensor_parallel: ", e.what_without_backtrace());
  }
  check_tensor_parallel_layout(tp_analysis, "config.parallel.tp", "config.tensor_parallel.replicate");
  tp_shards = parameter_shards(traced, tp_analysis);
  rank_model = with_parameter_shards(traced, tp_shards, tp_rank, t);
}

void Trainer::Impl::trace_parts(const Tracer& tracer, const SampleBatch& first, c10::Device device) {
  const int n = config.tensor_parallel.sub_microbatches;
  if (n == 1) return;
  part_traced = tracer(rows_of(first, 0, split.microbatch_rows / n), device);
  check_sub_microbatch_model(traced, part_traced, n);
  part_proxy = build_proxy_graph(part_traced);
  const auto& c = config.tensor_parallel;
  part_analysis = analyze_sharding(part_traced, config.parallel.tp, {c.column, c.row, c.replicate});
  TORCH_CHECK(part_analysis.linears.size() == tp_analysis.linears.size(), "sub-microbatches: the tensor-parallel "
              "layout differs at 1/", n, " of the rows; set tensor_parallel.sub_microbatches to 1");
  for (size_t i = 0; i < tp_analysis.linears.size(); ++i) {
    const LinearDecision &whole = tp_analysis.linears[i], &part = part_analysis.linears[i];
    TORCH_CHECK(whole.weight == part.weight && whole.mode == part.mode && whole.blocks == part.blocks,
                "sub-microbatches: ", whole.weight, " is ", to_string(whole.mode), " at a microbatch's rows but ",
                to_string(part.mode), " at 1/", n, " of them (", part.why, "); force it with "
                "tensor_parallel.column/row/replicate, or set tensor_parallel.sub_microbatches to 1");
  }
}

void Trainer::Impl::cut_parts(const std::vector<StageProgram>& stages) {
  const int n = config.tensor_parallel.sub_microbatches;
  if (n == 1) return;
  const int p = config.parallel.pp, v = plan->pipeline.virtual_stages;
  part_stages.assign(static_cast<size_t>(v), {});
  for (int h = 0; h < n; ++h) {
    auto cut = split_into_stages(part_traced, part_proxy, plan->stage_of_layer(part_proxy));
    for (StageProgram& part : cut) {
      const StageProgram& whole = stages.at(static_cast<size_t>(part.stage));
      shard_stage(part, {&part_traced, &part_analysis, &tp_shards, tp_rank, config.parallel.tp, tp_group->id(),
                         config.tensor_parallel.dropout == "exact"});
      make_sub_microbatch_stage(part, whole, h, n);
      crossing_batch_dimensions(whole, part, n);  // checked for every stage, on every rank
    }
    for (int c = 0; c < v; ++c)
      part_stages[static_cast<size_t>(c)].push_back(std::move(cut.at(stage_of_chunk(c, stage, p))));
  }
}

void Trainer::Impl::shard_stages(std::vector<StageProgram>& stages) {
  const int t = config.parallel.tp;
  if (t == 1) return;
  Communicator* group = tp.get();
  std::atomic<int64_t>* ns = &tp_ns;
  // With sub-microbatches the next part computes while this one's all-reduce
  // travels (frontend/turns.h); the time counted is the wait that compute
  // did not hide (all of it without parts).
  tp_group = std::make_unique<RegisteredGroup>(TensorParallelGroup{tp_rank, t, [group, ns](torch::Tensor& x) {
    auto work = group->allreduce_sum_async(x);
    pass_turn_then_wait([&] {
      const auto t0 = std::chrono::steady_clock::now();
      group->wait(work, "a tensor-parallel all-reduce");
      *ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    });
  }});
  for (StageProgram& stage : stages) {
    shard_stage(stage, {&traced, &tp_analysis, &tp_shards, tp_rank, t, tp_group->id(),
                        config.tensor_parallel.dropout == "exact"});
    tp_stage_bytes.push_back(sharded_stage_bytes(stage));
  }
}

std::vector<StageRecompute> Trainer::Impl::recompute_plan(const std::vector<StageProgram>& stages) const {
  PipelineRecomputeInputs in;
  in.proxy = &proxy;
  if (plan->layer_activation_bytes.size() == proxy.layers.size()) {
    in.layer_bytes = plan->layer_activation_bytes;
    in.layer_bytes_selective = plan->layer_selective_bytes;
  } else {  // a plan file without them: the analytic estimate, the same on every rank
    for (const LayerCost& c : analytic_costs(proxy).layers) in.layer_bytes.push_back(c.activation_bytes);
  }
  for (const auto& s : stages) in.layers_of_stage.push_back(s.layers);
  in.schedule = plan->pipeline.schedule;
  in.microbatches = plan->pipeline.microbatches;
  in.virtual_stages = plan->pipeline.virtual_stages;
  return recompute_for_pipeline(config.recompute, in);
}

std::vector<int64_t> Trainer::Impl::materialize_deferred(const std::vector<StageProgram>& stages, c10::Device device) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> done;
  const int p = config.parallel.pp, t = config.parallel.tp;
  for (int c = 0; c < plan->pipeline.virtual_stages; ++c)
    for (int param : stages.at(stage_of_chunk(c, stage, p)).params) {
      const int64_t input = proxy.params[param].value;
      GraphInput& mine = rank_model.inputs.at(input);
      if (!is_deferred(mine.value)) continue;
      const GraphInput& whole = traced.inputs.at(input);
      torch::Tensor value =
          initial_value(init, whole.name, whole.value.sizes(), whole.value.scalar_type(), config.seed);
      auto cut = tp_shards.find(whole.name);
      if (cut != tp_shards.end() && !cut->second.whole())
        value = shard_of(value, cut->second, tp_rank, t);  // a copy (parameter_shards.h)
      mine.value = value.to(device).requires_grad_(whole.value.requires_grad());
      done.push_back(input);
    }
  return done;
}

void Trainer::Impl::release_materialized(const std::vector<int64_t>& inputs) {
  for (int64_t input : inputs) {
    torch::Tensor& v = rank_model.inputs.at(input).value;
    v = deferred_tensor(v.sizes(), v.options());
  }
}

void Trainer::Impl::build_executor(std::vector<StageProgram> stages, const ExecutorGroups& groups,
                                   c10::Device device) {
  ExecutorOptions eo;
  eo.seed = config.seed;
  eo.emulate = emulate_times;
  const int p = config.parallel.pp, v = plan->pipeline.virtual_stages;
  const auto recompute = recompute_plan(stages);
  for (int c = 0; c < v; ++c) {
    const StageRecompute& mine = recompute.at(stage_of_chunk(c, stage, p));
    eo.checkpointing.push_back({mine.layer_segments, mine.attention_cores});
  }
  eo.measure_memory = config.measure_memory;
  eo.memory = config.memory;
  eo.bucket_bytes = config.bucket_bytes;
  eo.device = device;
  auto program = stage_schedule(plan->pipeline.schedule, p, plan->pipeline.microbatches, stage, v);
  // Whole parameters every tp rank holds count once in the global norm: on tp rank 0.
  if (tp_rank != 0)
    for (size_t i = 0; i < proxy.params.size(); ++i)
      if (!tp_shards.count(proxy.params[i].name)) eo.not_counted_in_norm.insert(static_cast<int>(i));
  eo.sub_microbatch_stages = std::move(part_stages);
  executor = std::make_unique<PipelineExecutor>(rank_model, proxy, std::move(stages), stage, p, std::move(program),
                                                groups, eo);
  TORCH_INTERNAL_ASSERT(executor->microbatches() == split.microbatches, "the schedule program runs ",
                        executor->microbatches(), " microbatches per step, the batch is split into ",
                        split.microbatches);
  if (config.parallel.dp > 1 && replica == 0)
    for (const auto& name : executor->buffers_from_replica_0())
      std::fprintf(stderr, "trine: note (rank %d): buffer '%s' is updated in place in a way that cannot be combined "
                   "across data-parallel replicas exactly; after every step each replica takes replica 0's value\n",
                   rank, name.c_str());
  optimizer = make_optimizer(config.optimizer, executor->parameters());
}

void Trainer::init(const Tracer& tracer, const SampleBatch& sample, const TrainConfig& given) {
  Impl& m = *impl_;
  // Checks that need no other process come first: they fail on every rank at once.
  given.check();
  if (!given.checkpoint_dir.empty())
    check_writable_directory(given.checkpoint_dir, "config.checkpoint.dir", "leave it empty for no checkpoints");
  TORCH_CHECK(given.weights_file.empty() || path_exists(given.weights_file), "config.weights '", given.weights_file,
              "' does not exist (give a .safetensors or TorchScript file, or leave the key out for the model's own "
              "initial weights)");
  if (!given.trace_file.empty())
    check_writable_directory(directory_of(given.trace_file), "the directory of config.logging.trace",
                             "leave config.logging.trace out for no trace");
  if (!given.emulate.write_times.empty())
    check_writable_directory(directory_of(given.emulate.write_times), "the directory of config.emulate.write_times",
                             "leave it out");
  const TrainConfig config = given.parallel.auto_layout ? resolve_auto_layout(tracer, sample, given) : given;
  m.config = config;
  const auto& par = config.parallel;
  m.grid = std::make_unique<ProcessGrid>(par.dp, par.pp, par.tp, par.order, detect_launch().world_size);
  m.split_batch(sample);

  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000));
  m.session = &DistributedSession::get(timeout);
  m.rank = m.session->launch.rank;
  m.stage = m.grid->coord(m.rank, Dim::PP);
  m.replica = m.grid->coord(m.rank, Dim::DP);
  const c10::Device device = device_of(config, m.session->launch);
  const std::string prefix = m.session->next_prefix();
  auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, m.session->store);
  m.store = store;

  SampleBatch first = rows_of(sample, 0, m.split.microbatch_rows);
  for (auto* list : {&first.inputs, &first.targets})
    for (auto& t : *list) t = t.to(device);
  const std::string trace_error = m.trace_model(tracer, first, device);
  m.agree_on_plan(*store, trace_error, first, timeout);
  auto stages = split_into_stages(m.traced, m.proxy, m.plan->stage_of_layer(m.proxy));
  const ExecutorGroups groups = m.make_groups(stages, prefix, device, timeout);
  m.shard_stages(stages);
  m.cut_parts(stages);
  prove_schedule(config, *m.plan, stages, device);
  m.agree_on_emulation(*store, stages, first);
  const std::vector<int64_t> materialized = m.materialize_deferred(stages, device);
  m.build_executor(std::move(stages), groups, device);
  m.release_materialized(materialized);
  if (!config.weights_file.empty()) m.load_weights();
  if (config.checkpoint_resume) m.resume(*store);
  // Everyone is ready before the first step (and a missing rank shows here).
  m.world->barrier();
  m.trace_origin = std::chrono::steady_clock::now();
}

std::vector<StageTimes> Trainer::Impl::emulation_times_on_rank_0(const std::vector<StageProgram>& stages,
                                                                const SampleBatch& first) const {
  const std::string& file = config.emulate.times_file;
  std::vector<StageTimes> times;
  if (!file.empty()) {
    times = stage_times_from_json(nlohmann::json::parse(read_file(file)), "config.emulate.times '" + file + "'");
  } else {
    ProfileSettings settings;
    settings.sharding = config.parallel.tp > 1 ? &tp_analysis : nullptr;
    settings.optimizer = config.optimizer;
    const auto work = profile_stage_work(traced, proxy, *plan, recompute_plan(stages), first, settings);
    const Layout layout{config.parallel.dp, config.parallel.pp, config.parallel.tp, plan->pipeline.virtual_stages,
                        split.microbatches, config.schedule};
    times = stage_times(work, layout, MachineDescription::this_host());
    // Communication stays real: only compute is emulated.
    for (auto& t : times) t.activation_transfer = t.gradient_transfer = t.reduce = 0;
  }
  TORCH_CHECK(static_cast<int>(times.size()) == plan->num_stages(), "config.emulate.times '", file, "' has times for ",
              times.size(), " stages; the plan has ", plan->num_stages(),
              ": write them for this layout (emulate.write_times)");
  if (!config.emulate.write_times.empty())
    write_file_atomically(config.emulate.write_times, stage_times_to_json(times).dump(2) + "\n");
  return times;
}

void Trainer::Impl::agree_on_emulation(c10d::Store& store, const std::vector<StageProgram>& stages,
                                       const SampleBatch& first) {
  if (!config.emulate.on) return;
  if (rank == 0) {
    std::string published;
    try {
      published = "times:" + stage_times_to_json(emulation_times_on_rank_0(stages, first)).dump();
    } catch (const c10::Error& e) {
      published = std::string("error:") + e.what_without_backtrace();
    } catch (const std::exception& e) {
      published = std::string("error:") + e.what();
    }
    store.set("emulate", std::vector<uint8_t>(published.begin(), published.end()));
  }
  const auto bytes = store.get("emulate");
  const std::string text(bytes.begin(), bytes.end());
  TORCH_CHECK(text.rfind("times:", 0) == 0, "emulation failed on rank 0: ", text.substr(6));
  emulate_times = stage_times_from_json(nlohmann::json::parse(text.substr(6)), "emulation times");
}

void Trainer::Impl::write_trace() {
  trace_written = true;
  executor->stop_tracing();
  std::vector<std::string> names;
  for (int r = 0; r < grid->world_size(); ++r)
    names.push_back("rank " + std::to_string(r) + " (dp " + std::to_string(grid->coord(r, Dim::DP)) + ", pp " +
                    std::to_string(grid->coord(r, Dim::PP)) + ", tp " + std::to_string(grid->coord(r, Dim::TP)) +
                    ")");
  const size_t events = write_step_trace(*store, rank, grid->world_size(), executor->take_timeline(), names,
                                         config.trace_file,
                                         std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000)));
  if (rank == 0) {
    std::printf("trace of %lld step(s), %zu instructions of %d ranks, written to %s\n",
                static_cast<long long>(std::min(step, config.trace_steps)), events, grid->world_size(),
                config.trace_file.c_str());
    std::fflush(stdout);
  }
}

// "parallel": "auto": rank 0 plans the layout on the model traced here
// (runtime/src/auto_layout.h); every rank continues with it.
TrainConfig Trainer::resolve_auto_layout(const Tracer& tracer, const SampleBatch& sample, const TrainConfig& config) {
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000));
  DistributedSession& session = DistributedSession::get(timeout);
  const c10::Device device = device_of(config, session.launch);
  c10d::PrefixStore store(session.next_prefix(), session.store);
  auto trace_rows = [&](const SampleBatch& rows) {
    SampleBatch on_device = rows;
    for (auto* list : {&on_device.inputs, &on_device.targets})
      for (auto& t : *list) t = t.to(device);
    return tracer(on_device, device);
  };
  return choose_layout(config, sample, trace_rows, store, session.launch.rank, session.launch.world_size);
}

// Clip by the global norm (each parameter counted once: by its first holder,
// in one replica's worth, and a whole one on tp rank 0 only; a cut one by
// every tp rank, each its slice), then step. One all-reduce over every rank
// carries both the squared norm and the step's loss (which every tp rank of
// the last stage holds).
void Trainer::Impl::optimizer_step() {
  torch::NoGradGuard no_grad;
  check_memory_budget();
  const auto& params = executor->parameters();
  const auto& owns = executor->owns();
  // Summed on the device; one copy to the host per step.
  auto sq = torch::zeros({}, torch::TensorOptions(torch::kFloat64).device(executor->device()));
  for (size_t i = 0; i < params.size(); ++i)
    if (owns[i] && params[i].grad().defined()) sq += squared_sum(params[i].grad());
  const double replicas = config.parallel.dp, loss_copies = replicas * config.parallel.tp;
  auto both = torch::stack({executor->mean_loss() / loss_copies, sq / replicas});
  world->allreduce_sum(both);
  both = both.cpu();
  last_loss = both[0].item<double>();
  const double norm = std::sqrt(both[1].item<double>());
  if (!accept_step(last_loss, norm)) return;
  if (config.optimizer.grad_clip > 0) {
    const double coef = config.optimizer.grad_clip / (norm + 1e-6);
    if (coef < 1)
      for (const auto& p : params)
        if (p.grad().defined()) p.grad().mul_(coef);
  }
  const double lr = learning_rate(config.optimizer, config.lr_schedule, step, config.steps);
  set_learning_rate(*optimizer, config.optimizer, lr);
  optimizer->step();
  optimizer->zero_grad(true);
}

// Every rank learns each stage's least budget when some rank could not keep
// config.memory.budget_bytes this step, and all raise the same error, before
// the step changes anything.
void Trainer::Impl::check_memory_budget() {
  if (config.memory.bytes == 0) return;
  const int stages = config.parallel.pp * plan->pipeline.virtual_stages;
  auto needed = torch::zeros({stages}, torch::TensorOptions(torch::kFloat64).device(executor->device()));
  for (int s : executor->stages()) needed[s] = static_cast<double>(executor->memory_needed_bytes());
  world->allreduce_max(needed);
  needed = needed.cpu();
  const int worst = static_cast<int>(needed.argmax().item<int64_t>());
  const auto least = static_cast<int64_t>(needed[worst].item<double>());
  const bool combined = config.memory.policy == MemoryPolicy::Combined;
  TORCH_CHECK(least == 0, "config.memory.budget_bytes is ", config.memory.bytes, " but stage ", worst, " needed ",
              least, " bytes of saved activations on the device at once in step ", step, " (the most of any stage: "
              "tensors in use right then, held elsewhere too, or not releasable under policy \"",
              memory_policy_name(config.memory.policy), "\"); raise config.memory.budget_bytes to at least ", least,
              combined ? "" : ", or set config.memory.policy to \"combined\"",
              ", or give the stage fewer layers or microbatches in flight");
}

bool Trainer::Impl::accept_step(double loss, double norm) {
  last_skipped = !std::isfinite(loss) || !std::isfinite(norm);
  if (!last_skipped) {
    skipped_in_a_row = 0;
    return true;
  }
  optimizer->zero_grad(true);
  executor->undo_buffer_updates();
  ++skipped_in_a_row;
  ++skipped_total;
  if (rank == 0)
    std::fprintf(stderr, "trine: step %lld skipped: loss %g, global gradient norm %g; no parameter, optimizer state "
                 "or buffer changed (%lld in a row, %lld in all)\n", static_cast<long long>(step), loss, norm,
                 static_cast<long long>(skipped_in_a_row), static_cast<long long>(skipped_total));
  TORCH_CHECK(skipped_in_a_row < config.max_skipped_steps, "training stopped at step ", step, ": the loss or the "
              "global gradient norm was NaN or infinite in ", skipped_in_a_row, " steps in a row (steps ",
              step + 1 - skipped_in_a_row, " to ", step, "; last loss ", loss, ", gradient norm ", norm,
              "). Lower the learning rate (config.optimizer.lr) or clip gradients (config.optimizer.grad_clip), look "
              "for bad values in the data, or allow more with config.max_skipped_steps.");
  return false;
}

double Trainer::step(const SampleBatch& global_batch) {
  Impl& m = *impl_;
  const int64_t rows = rows_in(global_batch);
  TORCH_CHECK(rows == m.split.global_rows, "step() got a batch of ", rows, " rows; this trainer's global batch is ",
              m.split.global_rows);
  check_batch_like_trace(global_batch, m.traced);
  const int64_t per_replica = m.split.replica_rows;
  const SampleBatch mine = rows_of(global_batch, m.replica * per_replica, per_replica);
  const int64_t mbs = m.split.microbatches;
  const int64_t first = (m.step * m.config.parallel.dp + m.replica) * mbs;
  m.tp_ns = 0;
  const bool tracing = !m.config.trace_file.empty() && m.step < m.config.trace_steps;
  if (tracing) m.executor->start_tracing(m.trace_origin);
  m.executor->run_step(mine, first, [&] { m.optimizer_step(); });
  m.timings = m.executor->timings();
  m.timings.tensor_parallel_s = static_cast<double>(m.tp_ns.load()) * 1e-9;
  ++m.step;
  if (tracing && m.step == m.config.trace_steps) m.write_trace();
  return m.last_loss;
}

namespace {

// Rank 0's saved activations in a step under a memory budget, for the progress line.
std::string memory_note(const StepTimings& t) {
  if (t.saved_peak_bytes == 0) return "";
  return "  saved activations " + std::to_string(t.saved_peak_bytes) + " B (" + std::to_string(t.memory.swapped_out) +
         " swapped, " + std::to_string(t.memory.dropped) + " dropped)";
}

}  // namespace

FitReport Trainer::fit(const std::function<SampleBatch(int64_t)>& data, int64_t steps) {
  Impl& m = *impl_;
  if (steps < 0) steps = m.config.steps;
  FitReport report;
  const auto t0 = Clock::now();
  const int64_t start = m.step;
  for (int64_t s = m.step; s < steps; ++s) {
    report.losses.push_back(step(data(s)));
    report.skipped_steps = m.skipped_total;
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    report.seconds = secs;
    report.samples_per_second = static_cast<double>((s + 1 - start) * m.split.global_rows) / secs;
    report.flops_per_second = report.samples_per_second * 3 * forward_flops_per_sample();
    const bool last = s + 1 == steps;
    if (m.rank == 0 && m.config.log_every > 0 && (s % m.config.log_every == 0 || last)) {
      std::printf("step %5lld  loss %.4f  lr %.2e  %.1f samples/s  %.3f GFLOP/s%s\n", static_cast<long long>(s),
                  report.losses.back(), learning_rate(m.config.optimizer, m.config.lr_schedule, s, m.config.steps),
                  report.samples_per_second, report.flops_per_second / 1e9, memory_note(m.timings).c_str());
      std::fflush(stdout);
    }
    if (!m.config.checkpoint_dir.empty() &&
        (last || (m.config.checkpoint_every > 0 && (s + 1) % m.config.checkpoint_every == 0)))
      save_checkpoint(m.config.checkpoint_dir);
  }
  // Fewer steps than logging.trace_steps: the trace holds those run.
  if (!m.config.trace_file.empty() && !m.trace_written && m.step > 0) m.write_trace();
  return report;
}

void Trainer::save_checkpoint(const std::string& dir) const {
  const Impl& m = *impl_;
  write_checkpoint(m.checkpoint_parts(), {m.step, m.skipped_total}, m.plan->to_json(), dir,
                   static_cast<int>(m.config.checkpoint_keep));
}

CheckpointParts Trainer::Impl::checkpoint_parts() const {
  CheckpointParts parts;
  parts.proxy = &proxy;
  parts.executor = executor.get();
  parts.optimizer = optimizer.get();
  parts.config = &config;
  parts.shards = &tp_shards;
  parts.tp_rank = tp_rank;
  parts.replica = replica;
  parts.rank = rank;
  parts.world = world.get();
  return parts;
}

// config.weights: this rank's parameters and buffers from the file.
void Trainer::Impl::load_weights() {
  const int64_t bytes = load_pretrained_weights(checkpoint_parts(), config.weights_file);
  if (rank == 0)
    std::fprintf(stderr, "trine: weights from '%s' (%lld bytes read on rank 0)\n", config.weights_file.c_str(),
                 static_cast<long long>(bytes));
}

// config.checkpoint.resume: rank 0 picks the newest complete checkpoint and
// tells the others through the store (all read the same one, even if a
// directory appeared meanwhile); none is a fresh start.
void Trainer::Impl::resume(c10d::Store& store) {
  if (rank == 0) {
    const std::string newest = newest_checkpoint(config.checkpoint_dir);
    store.set("resume_from", std::vector<uint8_t>(newest.begin(), newest.end()));
  }
  const auto bytes = store.get("resume_from");
  const std::string from(bytes.begin(), bytes.end());
  if (from.empty()) {
    if (rank == 0) std::fprintf(stderr, "trine: no complete checkpoint in '%s': starting afresh\n",
                                config.checkpoint_dir.c_str());
    return;
  }
  const CheckpointProgress progress = read_checkpoint(checkpoint_parts(), from);
  step = progress.step;
  skipped_total = progress.skipped_total;
  if (rank == 0)
    std::fprintf(stderr, "trine: resumed from '%s' after step %lld\n", from.c_str(), static_cast<long long>(step));
}

const ProxyGraph& Trainer::proxy() const { return impl_->proxy; }

std::vector<StageRecompute> Trainer::recompute_plan() const {
  const Impl& m = *impl_;
  std::vector<StageProgram> stages(m.plan->num_stages());
  const std::vector<int> stage_of_layer = m.plan->stage_of_layer(m.proxy);
  for (size_t l = 0; l < stage_of_layer.size(); ++l) stages[stage_of_layer[l]].layers.push_back(static_cast<int>(l));
  return m.recompute_plan(stages);
}

int Trainer::rank() const { return impl_->rank; }
int Trainer::world_size() const { return impl_->grid->world_size(); }
const ProcessGrid& Trainer::grid() const { return *impl_->grid; }
int Trainer::stage() const { return impl_->stage; }
int Trainer::replica() const { return impl_->replica; }
int64_t Trainer::steps_done() const { return impl_->step; }
int64_t Trainer::skipped_steps() const { return impl_->skipped_total; }
bool Trainer::last_step_skipped() const { return impl_->last_skipped; }
const StagePlan& Trainer::plan() const { return *impl_->plan; }
const TracedModel& Trainer::traced_model() const { return impl_->traced; }
const TrainConfig& Trainer::config() const { return impl_->config; }
double Trainer::forward_flops_per_sample() const {
  return impl_->proxy.total_flops() / static_cast<double>(impl_->split.microbatch_rows);
}

const StepTimings& Trainer::last_step_timings() const { return impl_->timings; }

torch::Tensor Trainer::parameter(const std::string& name) const {
  const int p = impl_->proxy.find_param(name);
  TORCH_CHECK(p >= 0, "the model has no parameter named '", name, "'");
  return impl_->executor->parameter(p);
}

int Trainer::tensor_parallel_rank() const { return impl_->tp_rank; }
int64_t Trainer::tensor_parallel_group_id() const { return impl_->tp_group ? impl_->tp_group->id() : -1; }

double Trainer::tensor_parallel_divergence() const {
  const Impl& m = *impl_;
  torch::NoGradGuard no_grad;
  double worst = 0;
  for (size_t i = 0; i < m.proxy.params.size(); ++i) {
    const torch::Tensor mine = m.executor->parameter(static_cast<int>(i));
    if (!mine.defined() || m.tp_shards.count(m.proxy.params[i].name)) continue;
    torch::Tensor most = mine.detach().to(torch::kDouble), least = -most;
    m.tp->allreduce_max(most);
    m.tp->allreduce_max(least);
    worst = std::max(worst, (most + least).abs().max().item<double>());
  }
  return worst;
}

std::string Trainer::tensor_parallel_table() const {
  const Impl& m = *impl_;
  if (m.config.parallel.tp == 1) return "";
  return sharding_table(m.tp_analysis) + tensor_parallel_memory_table(*m.plan, m.tp_stage_bytes);
}

torch::Tensor Trainer::tensor_parallel_slice(const std::string& name, const torch::Tensor& whole) const {
  const int p = impl_->proxy.find_param(name);
  TORCH_CHECK(p >= 0, "the model has no parameter named '", name, "'");
  return shard_of(whole, shard_named(impl_->tp_shards, impl_->proxy.params[p].name), impl_->tp_rank,
                  impl_->config.parallel.tp);
}

}  // namespace trine
