// Test helper: one stage running its own instruction list of a schedule for
// one step on its StageExecution (forwards, F*, R, backwards in the
// schedule's order; transfers left out: received activations and output
// gradients are random, drawn from `seed`), measuring the bytes it holds
// between instructions and, with `keep_results`, keeping the losses and input
// gradients (which then count among the bytes held).
#pragma once
#include "trine/frontend/allocation_counter.h"
#include "trine/frontend/stage_execution.h"
#include "trine/schedules/instruction.h"
#include "trine/schedules/schedule_registry.h"

#include <map>
#include <vector>

namespace trine::testing {

inline torch::Tensor random_like_type(const c10::TypePtr& type) {
  const auto t = type->cast<c10::TensorType>();
  TORCH_INTERNAL_ASSERT(t && t->scalarType() && t->sizes().concrete_sizes(), "a stage value without a known shape");
  const auto sizes = *t->sizes().concrete_sizes();
  if (c10::isFloatingType(*t->scalarType())) return torch::randn(sizes, torch::TensorOptions(*t->scalarType()));
  return torch::zeros(sizes, torch::TensorOptions(*t->scalarType()));
}

// Stage s's own instructions of `schedule` over p stages, m microbatches:
// under interleaving (v chunks per rank), its rank's for its chunk.
inline std::vector<Instruction> stage_instructions(const std::string& schedule, int p, int m, int s, int v) {
  const int ranks = p / v;
  std::vector<Instruction> mine;
  for (const Instruction& ins : stage_schedule(schedule, ranks, m, s % ranks, v))
    if (ins.chunk == s / ranks) mine.push_back(ins);
  return mine;
}

struct StageProgramRun {
  int64_t peak_bytes = 0;  // the most bytes held between instructions (inputs and gradients made beforehand)
  std::vector<torch::Tensor> losses;                     // per microbatch on the loss stage (keep_results)
  std::vector<std::map<int, torch::Tensor>> input_grads;  // per microbatch (keep_results)
  std::map<int, torch::Tensor> param_grads;               // after the step (and a warm-up microbatch before it)
};

inline StageProgramRun run_stage_program(const StageExecution& exec, const std::vector<Instruction>& program,
                                         const SampleBatch& batch, int microbatches, bool keep_results = false,
                                         uint64_t seed = 0) {
  torch::manual_seed(seed);
  const StageProgram& me = exec.program();
  std::vector<std::vector<torch::Tensor>> received(microbatches);
  std::vector<std::map<int, torch::Tensor>> grads(microbatches);
  for (int mb = 0; mb < microbatches; ++mb) {
    received[mb].resize(me.inputs.size());
    for (size_t i = 0; i < me.inputs.size(); ++i)
      if (me.inputs[i].kind == StageInput::Kind::Activation) {
        received[mb][i] = random_like_type(me.graph->inputs()[i]->type());
        if (received[mb][i].is_floating_point()) received[mb][i].requires_grad_(true);
      }
    for (size_t o = 0; o < me.outputs.size(); ++o)
      if (me.outputs[o].model_output != 0 && !me.outputs[o].to_stages.empty()) {
        auto g = random_like_type(me.graph->outputs()[o]->type());
        if (g.is_floating_point()) grads[mb][static_cast<int>(o)] = g;
      }
  }
  auto rng_of = [](int mb) { return RngPolicy{RngPolicy::Mode::PerOp, 5, mb}; };
  // A warm-up microbatch allocates the parameter gradients, which the step accumulates into.
  {
    auto warm = received[0];
    for (auto& t : warm)
      if (t.defined()) t = t.detach().requires_grad_(t.requires_grad());
    exec.backward(exec.forward(std::move(warm), batch, {}, rng_of(0)), grads[0], 1.0);
  }

  StageProgramRun out;
  out.losses.resize(microbatches);
  out.input_grads.resize(microbatches);
  auto counter = std::make_shared<AllocationCounter>();
  {
    AllocationCounting counting(counter);
    std::map<int, StageActivations> live;
    for (const Instruction& ins : program) {
      const int mb = ins.microbatch;
      switch (ins.op) {
        case Instruction::Op::Forward:
        case Instruction::Op::ForwardCheckpoint:
          // Moved in: the received leaves (and the gradients autograd
          // leaves on them) go when the backward is done, as in the executor.
          live[mb] = exec.forward(std::move(received[mb]), batch, {}, rng_of(mb), ins.op == Instruction::Op::Forward);
          if (auto loss = exec.loss(live[mb]); loss.defined() && keep_results) out.losses[mb] = loss.detach().clone();
          break;
        case Instruction::Op::Recompute: exec.recompute(live.at(mb)); break;
        case Instruction::Op::Backward: {
          auto input_grads = exec.backward(std::move(live.at(mb)), grads[mb], 1.0 / microbatches);
          if (keep_results) out.input_grads[mb] = std::move(input_grads);
          live.erase(mb);
          break;
        }
        default: continue;
      }
      out.peak_bytes = std::max(out.peak_bytes, counter->live());
    }
  }
  for (const auto& [id, t] : exec.parameters())
    if (t.grad().defined()) out.param_grads[id] = t.grad().clone();
  return out;
}

}  // namespace trine::testing
