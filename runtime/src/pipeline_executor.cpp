#include "trine/runtime/pipeline_executor.h"

#include "buffer_sync.h"
#include "trine/frontend/allocation_counter.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <thread>

#include <sys/prctl.h>

namespace trine {

namespace {

std::string describe(bool grad, int mb) {
  return std::string(grad ? "the gradient" : "the activation") + " of microbatch " + std::to_string(mb);
}

// The microbatches a step has: those the program forwards on each of the
// rank's chunks, which must be 0 .. m-1, each once per chunk (the schedule
// checker proves this of every schedule).
int count_microbatches(const std::vector<Instruction>& program, int chunks, int rank) {
  std::vector<std::set<int>> forwarded(chunks);
  std::vector<size_t> forwards(chunks, 0);
  for (const Instruction& ins : program)
    if (is_forward(ins.op)) {
      TORCH_INTERNAL_ASSERT(ins.chunk >= 0 && ins.chunk < chunks, "rank ", rank, "'s program runs chunk ", ins.chunk,
                            " of ", chunks);
      forwarded[ins.chunk].insert(ins.microbatch);
      ++forwards[ins.chunk];
    }
  const int m = static_cast<int>(forwarded[0].size());
  for (int c = 0; c < chunks; ++c)
    TORCH_INTERNAL_ASSERT(m >= 1 && static_cast<int>(forwarded[c].size()) == m && forwards[c] == forwarded[c].size() &&
                              *forwarded[c].begin() == 0 && *forwarded[c].rbegin() == m - 1,
                          "rank ", rank, "'s program does not forward microbatches 0 .. m-1 once each on chunk ", c);
  return m;
}

using PeerPositions = std::vector<std::pair<int, std::vector<int>>>;  // peer stage -> positions, in value order

PeerPositions positions_by_peer(std::map<int, std::vector<std::pair<int, int>>>& m) {
  PeerPositions out;
  for (auto& [peer, list] : m) {
    std::sort(list.begin(), list.end());
    std::vector<int> pos;
    for (auto& [v, p] : list) pos.push_back(p);
    out.emplace_back(peer, pos);
  }
  return out;
}

}  // namespace

struct PipelineExecutor::Microbatch {
  std::vector<torch::Tensor> received;        // per stage input: received activations (leaves), else undefined
  StageActivations activations;               // from its forward until its backward
  std::map<int, torch::Tensor> output_grads;  // output index -> gradient summed over its readers
  std::map<int, torch::Tensor> input_grads;   // input index -> gradient to send back
};

// One stage this rank holds: its parameters and graph, who it exchanges
// with, and its microbatches in flight.
struct PipelineExecutor::Chunk {
  int stage = 0;
  std::unique_ptr<StageExecution> execution;
  std::vector<StageProgram> parts;  // sub-microbatch programs the execution runs
  PeerPositions recv_from, send_to;  // activations in (gradients out), activations out (gradients in)
  // Per stage input: the traced shape and dtype of a received activation, if known.
  std::vector<std::pair<std::optional<std::vector<int64_t>>, c10::ScalarType>> input_shapes;
  std::map<int, std::unique_ptr<Microbatch>> live;
  std::unique_ptr<BufferSync> buffers;  // in-place buffer updates, combined across replicas
  // Emulation: the first step's outputs and input gradients (stand-ins sent
  // in their place later), and per microbatch whether its forward was F*.
  std::vector<torch::Tensor> output_shapes;
  std::map<int, torch::Tensor> input_grad_shapes;
  std::map<int, bool> checkpointed, recomputed;

  Microbatch& state_of(int mb) {
    auto& s = live[mb];
    if (!s) s = std::make_unique<Microbatch>();
    return *s;
  }
};

// Receives posted and sends started; where each received tensor goes.
struct PipelineExecutor::PostedTransfers {
  struct Target {
    int chunk;
    int mb;
    bool grad;
    int position;  // input index (activation) or output index (gradient)
  };
  std::vector<Target> targets;  // one per posted receive, in order
  PendingReceives receives;
  // Receives from a stage of this rank: the mailbox key and where it goes.
  std::vector<std::pair<std::tuple<bool, int, int, int, int>, Target>> local;
  std::vector<std::pair<int, int>> sent_gradients;  // (chunk, microbatch) whose gradient went out
  // Receives of the same instruction posted ahead of it, and which transfers they are.
  std::unique_ptr<PostedTransfers> ahead;
  std::vector<Transfer> covered;
};

PipelineExecutor::PipelineExecutor(const TracedModel& model, const ProxyGraph& proxy, std::vector<StageProgram> stages,
                                   int rank, int ranks, std::vector<Instruction> program, ExecutorGroups groups,
                                   ExecutorOptions options)
    : stages_(std::move(stages)), rank_(rank), ranks_(ranks), program_(std::move(program)), groups_(groups),
      options_(std::move(options)) {
  const int num_stages = static_cast<int>(stages_.size());
  TORCH_INTERNAL_ASSERT(ranks >= 1 && rank >= 0 && rank < ranks && num_stages % ranks == 0, "pipeline rank ", rank,
                        " of ", ranks, " for ", num_stages, " stages");
  const int num_chunks = num_stages / ranks;
  TORCH_INTERNAL_ASSERT(options_.checkpointing.empty() || static_cast<int>(options_.checkpointing.size()) == num_chunks,
                        "checkpointing for ", options_.checkpointing.size(), " chunks, the rank holds ", num_chunks);
  std::map<int, int> first_holder;  // parameter id -> first stage holding it
  for (const auto& s : stages_)
    for (int p : s.params) first_holder.emplace(p, s.stage);
  microbatches_ = count_microbatches(program_, num_chunks, rank_);
  for (int c = 0; c < num_chunks; ++c) {
    auto chunk = std::make_unique<Chunk>();
    chunk->stage = stage_of_chunk(c, rank_, ranks_);
    const StageProgram& me = stages_.at(chunk->stage);
    chunk->execution = std::make_unique<StageExecution>(me, model, proxy, options_.device);
    if (!options_.checkpointing.empty())
      chunk->execution->checkpoint_layers(options_.checkpointing[c].layer_segments,
                                          options_.checkpointing[c].attention_cores);
    if (!options_.sub_microbatch_stages.empty()) {
      chunk->parts = std::move(options_.sub_microbatch_stages.at(c));
      std::vector<const StageProgram*> parts;
      for (const StageProgram& part : chunk->parts) parts.push_back(&part);
      chunk->execution->split_microbatches(parts);
    }
    chunk->buffers = std::make_unique<BufferSync>(me, proxy, chunk->execution->parameters(), groups_.dp,
                                                  microbatches_);
    // Who sends what to whom, each list in value-id order on both sides.
    std::map<int, std::vector<std::pair<int, int>>> from, to;  // peer stage -> (value, position)
    for (size_t i = 0; i < me.inputs.size(); ++i)
      if (me.inputs[i].kind == StageInput::Kind::Activation)
        from[me.inputs[i].from_stage].emplace_back(me.inputs[i].value, static_cast<int>(i));
    for (size_t o = 0; o < me.outputs.size(); ++o)
      for (int c2 : me.outputs[o].to_stages) to[c2].emplace_back(me.outputs[o].value, static_cast<int>(o));
    chunk->recv_from = positions_by_peer(from);
    chunk->send_to = positions_by_peer(to);
    // The traced shapes of received activations: known before they arrive.
    chunk->input_shapes.resize(me.inputs.size());
    for (size_t i = 0; i < me.inputs.size(); ++i) {
      if (me.inputs[i].kind != StageInput::Kind::Activation) continue;
      const auto type = me.graph->inputs()[i]->type()->cast<c10::TensorType>();
      if (!type || !type->scalarType()) continue;
      if (auto sizes = type->sizes().concrete_sizes()) chunk->input_shapes[i] = {*sizes, *type->scalarType()};
    }
    chunks_.push_back(std::move(chunk));
  }
  // Gradients become final last layer first, and the step's final backward
  // is chunk 0's: its parameters first (their buckets start during that
  // backward), each chunk's in reverse.
  for (const auto& chunk : chunks_) {
    const StageProgram& me = stages_[chunk->stage];
    const auto& held = chunk->execution->parameters();
    for (auto it = me.params.rbegin(); it != me.params.rend(); ++it)
      if (held.at(*it).requires_grad()) {
        trainable_.push_back(held.at(*it));
        owned_.push_back(first_holder[*it] == chunk->stage && !options_.not_counted_in_norm.count(*it));
      }
  }
  buckets_ = std::make_unique<GradientBuckets>(trainable_, groups_.dp, options_.bucket_bytes);
  if (options_.memory.bytes > 0) manage_memory();
  for (size_t i = 0; i < program_.size(); ++i)
    if (program_[i].op == Instruction::Op::Backward) last_backward_ = static_cast<int>(i);
}

PipelineExecutor::~PipelineExecutor() = default;

void PipelineExecutor::manage_memory() {
  std::vector<torch::Tensor> held;
  for (const auto& chunk : chunks_)
    for (const auto& [id, t] : chunk->execution->parameters()) held.push_back(t);
  memory_ = std::make_unique<MemoryManager>(held, options_.memory);
  for (const auto& chunk : chunks_) chunk->execution->set_saved_tensor_policy(memory_.get());
}

PipelineExecutor::Chunk& PipelineExecutor::chunk(int c) { return *chunks_.at(c); }

std::vector<int> PipelineExecutor::stages() const {
  std::vector<int> out;
  for (const auto& c : chunks_) out.push_back(c->stage);
  return out;
}

std::vector<std::string> PipelineExecutor::buffers_from_replica_0() const {
  std::vector<std::string> out;
  for (const auto& c : chunks_)
    for (auto& name : c->buffers->broadcast_buffers()) out.push_back(std::move(name));
  return out;
}

void PipelineExecutor::undo_buffer_updates() {
  for (auto& c : chunks_) c->buffers->undo_step();
}

torch::Tensor PipelineExecutor::parameter(int id) const {
  for (const auto& c : chunks_) {
    const auto& held = c->execution->parameters();
    if (auto it = held.find(id); it != held.end()) return it->second;
  }
  return torch::Tensor();
}

torch::Tensor PipelineExecutor::stage_parameter(int stage, int id) const {
  for (const auto& c : chunks_)
    if (c->stage == stage) {
      const auto& held = c->execution->parameters();
      auto it = held.find(id);
      return it != held.end() ? it->second : torch::Tensor();
    }
  return torch::Tensor();
}

void PipelineExecutor::start_tracing(std::chrono::steady_clock::time_point origin) {
  tracing_ = true;
  trace_origin_ = origin;
}

void PipelineExecutor::record(const Instruction& ins, std::chrono::steady_clock::time_point t0,
                              std::chrono::steady_clock::time_point t1) {
  static const std::map<Instruction::Op, char> kinds = {
      {Instruction::Op::Forward, 'F'},     {Instruction::Op::ForwardCheckpoint, 'C'},
      {Instruction::Op::Recompute, 'R'},   {Instruction::Op::Backward, 'B'},
      {Instruction::Op::Communicate, 'T'}, {Instruction::Op::ReduceGrads, 'G'},
      {Instruction::Op::OptimizerStep, 'O'}};
  const char kind = kinds.at(ins.op);
  const bool compute = kind == 'F' || kind == 'C' || kind == 'R' || kind == 'B';
  auto seconds = [&](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(t - trace_origin_).count();
  };
  TimelineEvent e;
  e.rank = rank_;
  e.stage = compute ? stage_of_chunk(ins.chunk, rank_, ranks_) : -1;
  e.kind = kind;
  e.name = kind == 'O' ? "step" : to_string(ins);
  e.start = seconds(t0);
  e.end = seconds(t1);
  e.compute = compute ? e.end - e.start : 0;
  e.step = traced_steps_;
  timeline_.push_back(std::move(e));
}

void PipelineExecutor::run_step(const SampleBatch& batch, int64_t first_microbatch,
                                const std::function<void()>& optimizer_step) {
  loss_sum_ = torch::zeros({}, torch::TensorOptions(torch::kFloat64).device(options_.device));
  timings_ = {};
  if (memory_) memory_->reset_peak();
  std::shared_ptr<AllocationCounter> counter;
  std::optional<AllocationCounting> counting;
  if (options_.measure_memory) {
    counter = std::make_shared<AllocationCounter>();
    counting.emplace(counter);
  }
  for (auto& c : chunks_) c->buffers->begin_step();
  auto recompute_seconds = [&] {
    double s = 0;
    for (const auto& c : chunks_) s += c->execution->recompute_seconds();
    return s;
  };
  for (size_t i = 0; i < program_.size(); ++i) {
    const Instruction& ins = program_[i];
    const auto t0 = std::chrono::steady_clock::now();
    post_receives_ahead(i);
    double* account = nullptr;
    switch (ins.op) {
      case Instruction::Op::Forward:
      case Instruction::Op::ForwardCheckpoint:
        if (emulating_)
          emulate_compute(ins);
        else
          forward(ins, batch, first_microbatch, ins.op == Instruction::Op::ForwardCheckpoint);
        account = &timings_.forward_s;
        break;
      case Instruction::Op::Recompute:
        recompute(i);
        account = &timings_.recompute_s;
        break;
      case Instruction::Op::Backward: {
        if (static_cast<int>(i) == last_backward_) buckets_->arm(chunk(ins.chunk).execution->sub_microbatches());
        const double recomputed_before = recompute_seconds();
        if (emulating_)
          emulate_compute(ins);
        else
          backward(ins);
        const double inline_recompute = recompute_seconds() - recomputed_before;
        timings_.recompute_s += inline_recompute;
        timings_.backward_s -= inline_recompute;
        account = &timings_.backward_s;
        break;
      }
      case Instruction::Op::Communicate:
        communicate(i);
        account = &timings_.communicate_s;
        break;
      case Instruction::Op::ReduceGrads:
        reduce_grads();
        account = &timings_.reduce_s;
        break;
      case Instruction::Op::OptimizerStep:
        if (emulating_) emulate_compute(ins);
        optimizer_step();
        account = &timings_.optimizer_s;
        break;
    }
    const auto t1 = std::chrono::steady_clock::now();
    *account += std::chrono::duration<double>(t1 - t0).count();
    if (tracing_) record(ins, t0, t1);
  }
  if (tracing_) ++traced_steps_;
  if (!options_.emulate.empty() && !emulating_) {
    emulating_ = true;
    // Sleeps end within microseconds of their time, not the default 50 us
    // timer slack later: the emulated compute is what it says.
    ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  }
  for (const auto& c : chunks_)
    TORCH_INTERNAL_ASSERT(c->live.empty(), "microbatches left in flight on stage ", c->stage, " after the step");
  TORCH_INTERNAL_ASSERT(local_.empty(), "transfers between this rank's stages left unreceived after the step");
  TORCH_INTERNAL_ASSERT(early_.empty(), "receives posted ahead and not finished in the step");
  if (counter) timings_.peak_bytes = counter->peak();
  if (memory_) {
    timings_.saved_peak_bytes = memory_->peak_bytes();
    timings_.memory_needed_bytes = memory_->needed_bytes();
    timings_.memory = memory_->counters();
  }
}

void PipelineExecutor::forward(const Instruction& ins, const SampleBatch& batch, int64_t first_microbatch,
                               bool checkpoint) {
  Chunk& c = chunk(ins.chunk);
  const int mb = ins.microbatch;
  Microbatch& state = c.state_of(mb);
  state.received.resize(stages_[c.stage].inputs.size());
  const RngPolicy rng{RngPolicy::Mode::PerOp, options_.seed, first_microbatch + mb};
  state.activations =
      c.execution->forward(std::move(state.received), batch, {mb, microbatches_}, rng, !checkpoint);
  if (auto loss = c.execution->loss(state.activations); loss.defined())
    loss_sum_ += loss.detach().to(torch::kFloat64);
  if (!options_.emulate.empty()) remember_shapes(ins);
}

void PipelineExecutor::backward(const Instruction& ins) {
  Chunk& c = chunk(ins.chunk);
  auto it = c.live.find(ins.microbatch);
  TORCH_INTERNAL_ASSERT(it != c.live.end(), "backward of microbatch ", ins.microbatch, " that was not forwarded");
  Microbatch& state = *it->second;
  // The step's loss is the mean over microbatches (and replicas: dp averages).
  state.input_grads =
      c.execution->backward(std::move(state.activations), state.output_grads, 1.0 / microbatches_);
  state.output_grads.clear();
  if (!options_.emulate.empty()) remember_shapes(ins);
  // A stage that receives nothing sends no gradients back: the microbatch ends here.
  if (c.recv_from.empty()) c.live.erase(it);
}

// Stand-ins of the first step's tensors: zeros of their shapes, made once,
// requiring grad where the originals did (so that the same gradients flow).
void PipelineExecutor::remember_shapes(const Instruction& ins) {
  Chunk& c = chunk(ins.chunk);
  const Microbatch& state = c.state_of(ins.microbatch);
  auto stand_in = [](const torch::Tensor& t) {
    if (!t.defined()) return torch::Tensor();
    auto z = torch::zeros(t.sizes(), t.options().requires_grad(false));
    return t.requires_grad() ? z.requires_grad_(true) : z;
  };
  if (is_forward(ins.op) && c.output_shapes.empty())
    for (const auto& out : state.activations.outputs) c.output_shapes.push_back(stand_in(out));
  if (ins.op == Instruction::Op::Backward && c.input_grad_shapes.empty())
    for (const auto& [pos, g] : state.input_grads) c.input_grad_shapes[pos] = stand_in(g).detach();
}

// Sleeps for the instruction's compute (ExecutorOptions::emulate) and leaves
// what it would have: a forward's outputs, a backward's input gradients.
void PipelineExecutor::emulate_compute(const Instruction& ins) {
  auto sleep = [](double seconds) { std::this_thread::sleep_for(std::chrono::duration<double>(seconds)); };
  if (ins.op == Instruction::Op::OptimizerStep) {
    double seconds = 0;
    for (const auto& k : chunks_) seconds += options_.emulate.at(k->stage).optimizer;
    return sleep(seconds);
  }
  const StageTimes& t = options_.emulate.at(stage_of_chunk(ins.chunk, rank_, ranks_));
  Chunk& c = chunk(ins.chunk);
  const int mb = ins.microbatch;
  const double redo = c.recomputed[mb] ? 0 : c.checkpointed[mb] ? t.forward : t.recompute;
  double seconds = 0;
  switch (ins.op) {
    case Instruction::Op::Forward:
    case Instruction::Op::ForwardCheckpoint: {
      seconds = t.forward;
      c.checkpointed[mb] = ins.op == Instruction::Op::ForwardCheckpoint;
      c.recomputed[mb] = false;
      Microbatch& state = c.state_of(mb);
      state.received.clear();
      state.activations = StageActivations{};
      state.activations.outputs = c.output_shapes;
      break;
    }
    case Instruction::Op::Recompute:
      seconds = redo;
      c.recomputed[mb] = true;
      break;
    case Instruction::Op::Backward: {
      seconds = t.backward + redo;
      auto it = c.live.find(mb);
      TORCH_INTERNAL_ASSERT(it != c.live.end(), "backward of microbatch ", mb, " that was not forwarded");
      it->second->activations = StageActivations{};
      it->second->output_grads.clear();
      it->second->input_grads = c.input_grad_shapes;
      if (c.recv_from.empty()) c.live.erase(it);
      break;
    }
    default:
      TORCH_INTERNAL_ASSERT(false, "only compute instructions are emulated");
  }
  sleep(seconds);
}

void PipelineExecutor::communicate(size_t index) { finish_transfers(post_transfers(index)); }

void PipelineExecutor::recompute(size_t index) {
  auto posted = post_transfers(index);
  const Instruction& ins = program_[index];
  Chunk& c = chunk(ins.chunk);
  auto it = c.live.find(ins.microbatch);
  TORCH_INTERNAL_ASSERT(it != c.live.end(), "recompute of microbatch ", ins.microbatch, " that was not forwarded");
  if (emulating_)
    emulate_compute(ins);
  else
    c.execution->recompute(it->second->activations);  // only what its forward dropped
  finish_transfers(std::move(posted));
}

// Unique per (microbatch, direction, pair of chunks, slot) between two ranks:
// under interleaving one pair of ranks carries several pairs of stages.
uint32_t PipelineExecutor::tag_of(int mb, bool grad, int from_stage, int to_stage, int slot) const {
  const uint32_t chunks = static_cast<uint32_t>(chunks_.size());
  const uint32_t edge = static_cast<uint32_t>(from_stage / ranks_) * chunks + static_cast<uint32_t>(to_stage / ranks_);
  TORCH_CHECK(slot < 1024, "a stage exchanges more than 1024 tensors with one peer");
  const uint64_t tag = ((static_cast<uint64_t>(mb) * 2 + (grad ? 1 : 0)) * chunks * chunks + edge) * 1024 + slot;
  TORCH_CHECK(tag <= UINT32_MAX, "microbatch ", mb, " does not fit the transfer tags; use fewer microbatches");
  return static_cast<uint32_t>(tag);
}

void PipelineExecutor::send(const torch::Tensor& t, int from_stage, int to_stage, int mb, bool grad, int slot) {
  // As a receive over the wire gives it: a leaf that requires grad when the
  // sent tensor does (the receiver's backward fills its .grad), else a copy
  // of its own (the receiver may write it in place).
  if (to_stage % ranks_ == rank_)
    local_[{grad, mb, from_stage, to_stage, slot}] = t.requires_grad() ? t.detach().requires_grad_(true) : t.clone();
  else
    groups_.pp->post_send(t, to_stage % ranks_, tag_of(mb, grad, from_stage, to_stage, slot), describe(grad, mb));
}

// A receive from stage `peer` to stage `me` into `target` (shape and dtype
// known when given); tagged and keyed as `send` names it: (from, to).
void PipelineExecutor::post_receive(const Transfer& t, PostedTransfers& posted, std::vector<RecvRequest>& requests) {
  auto receive = [&](int peer, int me, int slot, PostedTransfers::Target target,
                     std::optional<std::vector<int64_t>> shape, c10::ScalarType dtype) {
    if (peer % ranks_ == rank_) {
      posted.local.push_back({{target.grad, target.mb, peer, me, slot}, target});
      return;
    }
    requests.push_back({peer % ranks_, tag_of(target.mb, target.grad, peer, me, slot),
                        describe(target.grad, target.mb), std::move(shape), dtype});
    posted.targets.push_back(target);
  };
  Chunk& c = chunk(t.chunk);
  const int mb = t.microbatch;
  if (t.kind == Transfer::Kind::RecvAct) {
    for (const auto& [peer, ins_] : c.recv_from)
      for (size_t k = 0; k < ins_.size(); ++k)
        receive(peer, c.stage, static_cast<int>(k), {t.chunk, mb, false, ins_[k]}, c.input_shapes.at(ins_[k]).first,
                c.input_shapes.at(ins_[k]).second);
  } else {
    TORCH_INTERNAL_ASSERT(t.kind == Transfer::Kind::RecvGrad, "not a receive");
    for (const auto& [peer, outs] : c.send_to) {
      auto& s = c.state_of(mb);
      for (size_t k = 0; k < outs.size(); ++k)
        if (const auto& out = s.activations.outputs.at(outs[k]); out.requires_grad())
          receive(peer, c.stage, static_cast<int>(k), {t.chunk, mb, true, outs[k]}, out.sizes().vec(),
                  out.scalar_type());
    }
  }
}

bool PipelineExecutor::can_post_early(const Transfer& t) {
  Chunk& c = chunk(t.chunk);
  if (t.kind == Transfer::Kind::RecvAct) {
    for (const auto& [peer, ins_] : c.recv_from) {
      if (peer % ranks_ == rank_) return false;
      for (int pos : ins_)
        if (!c.input_shapes.at(pos).first) return false;
    }
    return true;
  }
  if (t.kind != Transfer::Kind::RecvGrad) return false;
  for (const auto& [peer, outs] : c.send_to)
    if (peer % ranks_ == rank_) return false;
  // The gradients' shapes are the outputs' own: known once the forward ran.
  auto it = c.live.find(t.microbatch);
  return it != c.live.end() && !it->second->activations.outputs.empty();
}

void PipelineExecutor::post_receives_ahead(size_t index) {
  size_t next = index + 1;
  while (next < program_.size() && program_[next].transfers.empty()) ++next;
  if (next >= program_.size() || early_.count(next)) return;
  auto posted = std::make_unique<PostedTransfers>();
  std::vector<RecvRequest> requests;
  for (const Transfer& t : program_[next].transfers)
    if (can_post_early(t)) {
      post_receive(t, *posted, requests);
      posted->covered.push_back(t);
    }
  if (posted->covered.empty()) return;
  posted->receives = groups_.pp->post_receives(std::move(requests));
  early_[next] = std::move(posted);
}

PipelineExecutor::PostedTransfers PipelineExecutor::post_transfers(size_t index) {
  PostedTransfers posted;
  if (auto it = early_.find(index); it != early_.end()) {
    posted.ahead = std::move(it->second);
    early_.erase(it);
  }
  auto covered = [&](const Transfer& t) {
    return posted.ahead && std::find(posted.ahead->covered.begin(), posted.ahead->covered.end(), t) !=
                               posted.ahead->covered.end();
  };
  std::vector<RecvRequest> requests;
  for (const Transfer& t : program_[index].transfers) {
    Chunk& c = chunk(t.chunk);
    const int mb = t.microbatch;
    switch (t.kind) {
      case Transfer::Kind::SendAct:
        for (const auto& [peer, outs] : c.send_to)
          for (size_t k = 0; k < outs.size(); ++k)
            send(c.state_of(mb).activations.outputs.at(outs[k]), c.stage, peer, mb, false, static_cast<int>(k));
        break;
      case Transfer::Kind::SendGrad:
        posted.sent_gradients.emplace_back(t.chunk, mb);
        for (const auto& [peer, ins_] : c.recv_from) {
          auto& s = c.state_of(mb);
          int slot = 0;
          for (int pos : ins_) {
            auto g = s.input_grads.find(pos);
            if (g != s.input_grads.end()) send(g->second, c.stage, peer, mb, true, slot);
            ++slot;
          }
        }
        break;
      case Transfer::Kind::RecvAct:
      case Transfer::Kind::RecvGrad:
        if (!covered(t)) post_receive(t, posted, requests);
        break;
    }
  }
  posted.receives = groups_.pp->post_receives(std::move(requests));
  return posted;
}

void PipelineExecutor::finish_transfers(PostedTransfers posted) {
  if (posted.ahead) finish_transfers(std::move(*posted.ahead));
  auto received = groups_.pp->finish_receives(std::move(posted.receives));
  std::vector<PostedTransfers::Target> targets = std::move(posted.targets);
  for (auto& [key, target] : posted.local) {
    auto it = local_.find(key);
    TORCH_INTERNAL_ASSERT(it != local_.end(), describe(target.grad, target.mb), " is received on stage ",
                          std::get<3>(key), " before stage ", std::get<2>(key), " (the same rank) sent it");
    received.push_back(std::move(it->second));
    local_.erase(it);
    targets.push_back(target);
  }
  for (size_t r = 0; r < received.size(); ++r) {
    Chunk& c = chunk(targets[r].chunk);
    Microbatch& s = c.state_of(targets[r].mb);
    if (!targets[r].grad) {
      s.received.resize(stages_[c.stage].inputs.size());
      s.received[targets[r].position] = received[r];
    } else {
      auto& g = s.output_grads[targets[r].position];
      g = g.defined() ? g + received[r] : received[r];
    }
  }
  // A gradient sent is not needed again; drop the microbatch once both ways are done.
  for (auto [c, mb] : posted.sent_gradients) chunk(c).live.erase(mb);
}

void PipelineExecutor::sum_tied_gradients() {
  torch::NoGradGuard no_grad;
  for (auto& [param, group] : groups_.tied) {
    std::vector<torch::Tensor> copies;  // this rank's copies of the parameter
    for (const auto& c : chunks_)
      if (auto it = c->execution->parameters().find(param); it != c->execution->parameters().end())
        copies.push_back(it->second);
    if (copies.empty() || !copies[0].requires_grad()) continue;
    for (auto& p : copies)
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    for (size_t k = 1; k < copies.size(); ++k) copies[0].mutable_grad().add_(copies[k].grad());
    group->allreduce_sum(copies[0].mutable_grad());
    for (size_t k = 1; k < copies.size(); ++k) copies[k].mutable_grad().copy_(copies[0].grad());
  }
}

void PipelineExecutor::reduce_grads() {
  buckets_->finish();
  for (auto& c : chunks_) c->buffers->finish_step();  // every forward of the step is done
  sum_tied_gradients();
  groups_.pp->wait_sends();
}

}  // namespace trine
