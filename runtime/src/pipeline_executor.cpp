#include "trine/runtime/pipeline_executor.h"

#include "buffer_sync.h"
#include "trine/frontend/allocation_counter.h"

#include <algorithm>
#include <set>
#include <chrono>

namespace trine {

namespace {

uint32_t tag_of(int mb, bool grad, int slot) {
  TORCH_CHECK(slot < 1024, "a stage exchanges more than 1024 tensors with one peer");
  return (static_cast<uint32_t>(mb) * 2 + (grad ? 1 : 0)) * 1024 + static_cast<uint32_t>(slot);
}

std::string describe(bool grad, int mb) {
  return std::string(grad ? "the gradient" : "the activation") + " of microbatch " + std::to_string(mb);
}

// The microbatches a step has: those the program forwards, which must be
// 0 .. m-1, each once (the schedule checker proves this of every schedule).
int count_microbatches(const std::vector<Instruction>& program, int stage) {
  std::set<int> forwarded;
  size_t forwards = 0;
  for (const Instruction& ins : program)
    if (is_forward(ins.op)) {
      forwarded.insert(ins.microbatch);
      ++forwards;
    }
  const int m = static_cast<int>(forwarded.size());
  TORCH_INTERNAL_ASSERT(m >= 1 && forwards == forwarded.size() && *forwarded.begin() == 0 && *forwarded.rbegin() == m - 1,
                        "stage ", stage, "'s program does not forward microbatches 0 .. m-1 once each");
  return m;
}

}  // namespace

struct PipelineExecutor::Microbatch {
  std::vector<torch::Tensor> received;        // per stage input: received activations (leaves), else undefined
  StageActivations activations;               // from its forward until its backward
  std::map<int, torch::Tensor> output_grads;  // output index -> gradient summed over its readers
  std::map<int, torch::Tensor> input_grads;   // input index -> gradient to send back
};

PipelineExecutor::PipelineExecutor(const TracedModel& model, const ProxyGraph& proxy, std::vector<StageProgram> stages,
                                   int stage, std::vector<Instruction> program, ExecutorGroups groups,
                                   ExecutorOptions options)
    : stages_(std::move(stages)), stage_(stage), program_(std::move(program)), groups_(groups), options_(options) {
  const StageProgram& me = stages_.at(stage_);
  std::map<int, int> first_holder;  // parameter id -> first stage holding it
  for (const auto& s : stages_)
    for (int p : s.params) first_holder.emplace(p, s.stage);
  microbatches_ = count_microbatches(program_, stage_);
  execution_ = std::make_unique<StageExecution>(me, model, proxy, options_.device);
  execution_->checkpoint_layers(options_.checkpointed_layers, options_.checkpoint_attention_cores);
  const auto& held = execution_->parameters();
  // Gradients become final last layer first: bucket them in reverse.
  for (auto it = me.params.rbegin(); it != me.params.rend(); ++it)
    if (held.at(*it).requires_grad()) {
      trainable_.push_back(held.at(*it));
      owned_.push_back(first_holder[*it] == stage_);
    }
  buckets_ = std::make_unique<GradientBuckets>(trainable_, groups_.dp, options_.bucket_bytes);
  buffers_ = std::make_unique<BufferSync>(me, proxy, held, groups_.dp, microbatches_);

  // Who sends what to whom, each list in value-id order on both sides.
  std::map<int, std::vector<std::pair<int, int>>> from, to;  // peer -> (value, position)
  for (size_t i = 0; i < me.inputs.size(); ++i)
    if (me.inputs[i].kind == StageInput::Kind::Activation)
      from[me.inputs[i].from_stage].emplace_back(me.inputs[i].value, static_cast<int>(i));
  for (size_t o = 0; o < me.outputs.size(); ++o)
    for (int c : me.outputs[o].to_stages) to[c].emplace_back(me.outputs[o].value, static_cast<int>(o));
  auto positions = [](std::map<int, std::vector<std::pair<int, int>>>& m) {
    std::vector<std::pair<int, std::vector<int>>> out;
    for (auto& [peer, list] : m) {
      std::sort(list.begin(), list.end());
      std::vector<int> pos;
      for (auto& [v, p] : list) pos.push_back(p);
      out.emplace_back(peer, pos);
    }
    return out;
  };
  recv_from_ = positions(from);
  send_to_ = positions(to);
  for (size_t i = 0; i < program_.size(); ++i)
    if (program_[i].op == Instruction::Op::Backward) last_backward_ = static_cast<int>(i);
  // The traced shapes of received activations: known before they arrive.
  input_shapes_.resize(me.inputs.size());
  for (size_t i = 0; i < me.inputs.size(); ++i) {
    if (me.inputs[i].kind != StageInput::Kind::Activation) continue;
    const auto type = me.graph->inputs()[i]->type()->cast<c10::TensorType>();
    if (!type || !type->scalarType()) continue;
    if (auto sizes = type->sizes().concrete_sizes()) input_shapes_[i] = {*sizes, *type->scalarType()};
  }
}

PipelineExecutor::~PipelineExecutor() = default;

std::vector<std::string> PipelineExecutor::buffers_from_replica_0() const { return buffers_->broadcast_buffers(); }

void PipelineExecutor::undo_buffer_updates() { buffers_->undo_step(); }

torch::Tensor PipelineExecutor::parameter(int id) const {
  const auto& held = execution_->parameters();
  auto it = held.find(id);
  return it == held.end() ? torch::Tensor() : it->second;
}

void PipelineExecutor::run_step(const SampleBatch& batch, int64_t first_microbatch,
                                  const std::function<void()>& optimizer_step) {
  loss_sum_ = torch::zeros({}, torch::TensorOptions(torch::kFloat64).device(options_.device));
  timings_ = {};
  std::shared_ptr<AllocationCounter> counter;
  std::optional<AllocationCounting> counting;
  if (options_.measure_memory) {
    counter = std::make_shared<AllocationCounter>();
    counting.emplace(counter);
  }
  buffers_->begin_step();
  for (size_t i = 0; i < program_.size(); ++i) {
    const Instruction& ins = program_[i];
    const auto t0 = std::chrono::steady_clock::now();
    double* account = nullptr;
    switch (ins.op) {
      case Instruction::Op::Forward:
      case Instruction::Op::ForwardCheckpoint:
        forward(ins.microbatch, batch, first_microbatch, ins.op == Instruction::Op::ForwardCheckpoint);
        account = &timings_.forward_s;
        break;
      case Instruction::Op::Recompute:
        recompute(ins);
        account = &timings_.recompute_s;
        break;
      case Instruction::Op::Backward: {
        if (static_cast<int>(i) == last_backward_) buckets_->arm();
        const double recomputed_before = execution_->recompute_seconds();
        backward(ins.microbatch);
        const double inline_recompute = execution_->recompute_seconds() - recomputed_before;
        timings_.recompute_s += inline_recompute;
        timings_.backward_s -= inline_recompute;
        account = &timings_.backward_s;
        break;
      }
      case Instruction::Op::Communicate:
        communicate(ins);
        account = &timings_.communicate_s;
        break;
      case Instruction::Op::ReduceGrads:
        reduce_grads();
        account = &timings_.reduce_s;
        break;
      case Instruction::Op::OptimizerStep:
        optimizer_step();
        account = &timings_.optimizer_s;
        break;
    }
    *account += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  TORCH_INTERNAL_ASSERT(live_.empty(), "microbatches left in flight after the step");
  if (counter) timings_.peak_bytes = counter->peak();
}

void PipelineExecutor::forward(int mb, const SampleBatch& batch, int64_t first_microbatch, bool checkpoint) {
  auto& state = live_[mb];
  if (!state) state = std::make_unique<Microbatch>();
  state->received.resize(stages_[stage_].inputs.size());
  const RngPolicy rng{RngPolicy::Mode::PerOp, options_.seed, first_microbatch + mb};
  state->activations = execution_->forward(std::move(state->received), batch, {mb, microbatches_}, rng, !checkpoint);
  if (auto loss = execution_->loss(state->activations); loss.defined())
    loss_sum_ += loss.detach().to(torch::kFloat64);
}

void PipelineExecutor::backward(int mb) {
  auto it = live_.find(mb);
  TORCH_INTERNAL_ASSERT(it != live_.end(), "backward of microbatch ", mb, " that was not forwarded");
  Microbatch& state = *it->second;
  // The step's loss is the mean over microbatches (and replicas: dp averages).
  state.input_grads =
      execution_->backward(std::move(state.activations), state.output_grads, 1.0 / microbatches_);
  state.output_grads.clear();
  // A stage that receives nothing sends no gradients back: the microbatch ends here.
  if (recv_from_.empty()) live_.erase(it);
}

PipelineExecutor::Microbatch& PipelineExecutor::state_of(int mb) {
  auto& s = live_[mb];
  if (!s) s = std::make_unique<Microbatch>();
  return *s;
}

void PipelineExecutor::communicate(const Instruction& ins) { finish_transfers(post_transfers(ins.transfers)); }

void PipelineExecutor::recompute(const Instruction& ins) {
  auto posted = post_transfers(ins.transfers);
  auto it = live_.find(ins.microbatch);
  TORCH_INTERNAL_ASSERT(it != live_.end(), "recompute of microbatch ", ins.microbatch, " that was not forwarded");
  execution_->recompute(it->second->activations);  // only what its forward dropped
  finish_transfers(std::move(posted));
}

PipelineExecutor::PostedTransfers PipelineExecutor::post_transfers(const std::vector<Transfer>& transfers) {
  Communicator& pp = *groups_.pp;
  std::vector<RecvRequest> requests;
  PostedTransfers posted;
  auto& targets = posted.targets;
  for (const Transfer& t : transfers) {
    posted.sends_gradient.push_back(t.kind == Transfer::Kind::SendGrad ? t.microbatch : -1);
    const int mb = t.microbatch;
    switch (t.kind) {
      case Transfer::Kind::SendAct:
        for (const auto& [peer, outs] : send_to_)
          for (size_t k = 0; k < outs.size(); ++k)
            pp.post_send(state_of(mb).activations.outputs.at(outs[k]), peer, tag_of(mb, false, static_cast<int>(k)),
                         describe(false, mb));
        break;
      case Transfer::Kind::RecvAct:
        for (const auto& [peer, ins_] : recv_from_)
          for (size_t k = 0; k < ins_.size(); ++k) {
            requests.push_back({peer, tag_of(mb, false, static_cast<int>(k)), describe(false, mb),
                                input_shapes_.at(ins_[k]).first, input_shapes_.at(ins_[k]).second});
            targets.push_back({mb, false, ins_[k]});
          }
        break;
      case Transfer::Kind::SendGrad:
        for (const auto& [peer, ins_] : recv_from_) {
          auto& s = state_of(mb);
          int slot = 0;
          for (int pos : ins_) {
            auto g = s.input_grads.find(pos);
            if (g != s.input_grads.end()) pp.post_send(g->second, peer, tag_of(mb, true, slot), describe(true, mb));
            ++slot;
          }
        }
        break;
      case Transfer::Kind::RecvGrad:
        for (const auto& [peer, outs] : send_to_) {
          auto& s = state_of(mb);
          for (size_t k = 0; k < outs.size(); ++k)
            if (const auto& out = s.activations.outputs.at(outs[k]); out.requires_grad()) {
              requests.push_back({peer, tag_of(mb, true, static_cast<int>(k)), describe(true, mb),
                                  out.sizes().vec(), out.scalar_type()});
              targets.push_back({mb, true, outs[k]});
            }
        }
        break;
    }
  }
  posted.receives = pp.post_receives(std::move(requests));
  return posted;
}

void PipelineExecutor::finish_transfers(PostedTransfers posted) {
  const auto& targets = posted.targets;
  auto received = groups_.pp->finish_receives(std::move(posted.receives));
  for (size_t r = 0; r < received.size(); ++r) {
    Microbatch& s = state_of(targets[r].mb);
    if (!targets[r].grad) {
      s.received.resize(stages_[stage_].inputs.size());
      s.received[targets[r].position] = received[r];
    } else {
      auto& g = s.output_grads[targets[r].position];
      g = g.defined() ? g + received[r] : received[r];
    }
  }
  // A gradient sent is not needed again; drop the microbatch once both ways are done.
  for (int mb : posted.sends_gradient)
    if (mb >= 0) live_.erase(mb);
}

void PipelineExecutor::reduce_grads() {
  buckets_->finish();
  buffers_->finish_step();  // every forward of the step is done
  torch::NoGradGuard no_grad;
  for (auto& [param, group] : groups_.tied) {
    const auto& p = execution_->parameters().at(param);
    if (!p.requires_grad()) continue;
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    group->allreduce_sum(p.mutable_grad());
  }
  groups_.pp->wait_sends();
}

}  // namespace trine
