#include "program_builder.h"

#include <c10/util/Exception.h>

namespace trine {

using Kind = Transfer::Kind;

void check_pipeline_shape(int stages, int microbatches, int stage) {
  TORCH_CHECK(stages >= 1, "a pipeline needs at least one stage, got ", stages);
  TORCH_CHECK(microbatches >= 1, "a pipeline needs at least one microbatch, got ", microbatches);
  TORCH_CHECK(stage >= 0 && stage < stages, "stage ", stage, " is outside the pipeline's ", stages, " stages");
}

ProgramBuilder::ProgramBuilder(int ranks, int rank, int chunks) : ranks_(ranks), rank_(rank), chunks_(chunks) {}

bool ProgramBuilder::possible(Kind kind, int chunk) const {
  const int stage = stage_of_chunk(chunk, rank_, ranks_);
  const bool upstream = kind == Kind::RecvAct || kind == Kind::SendGrad;
  return upstream ? stage > 0 : stage < ranks_ * chunks_ - 1;
}

ProgramBuilder& ProgramBuilder::transfer(Kind kind, int mb, int chunk) {
  if (!possible(kind, chunk)) return *this;
  if (!open_) {
    program_.push_back(Instruction::communicate({}));
    open_ = true;
  }
  program_.back().transfers.push_back({kind, mb, chunk});
  return *this;
}

ProgramBuilder& ProgramBuilder::compute(Instruction i) {
  open_ = false;
  program_.push_back(std::move(i));
  return *this;
}

ProgramBuilder& ProgramBuilder::recompute_while_receiving_grad(int mb) {
  std::vector<Transfer> overlapped;
  if (possible(Kind::RecvGrad)) overlapped.push_back({Kind::RecvGrad, mb});
  return compute(Instruction::recompute(mb, std::move(overlapped)));
}

ProgramBuilder& ProgramBuilder::flush() {
  open_ = false;
  return *this;
}

std::vector<Instruction> ProgramBuilder::finish() {
  compute(Instruction::reduce_grads());
  compute(Instruction::optimizer_step());
  return std::move(program_);
}

namespace {

bool checkpointed(const OneFOneBVariant& v, int mb) {
  return mb < static_cast<int>(v.checkpointed.size()) && v.checkpointed[mb];
}

Instruction forward_of(const OneFOneBVariant& v, int mb) {
  return checkpointed(v, mb) ? Instruction::forward_checkpoint(mb) : Instruction::forward(mb);
}

// The gradient of `mb` arrives: recomputing meanwhile if its forward was F*.
void receive_grad(ProgramBuilder& b, const OneFOneBVariant& v, int mb) {
  if (checkpointed(v, mb))
    b.recompute_while_receiving_grad(mb);
  else
    b.transfer(Kind::RecvGrad, mb);
}

}  // namespace

void one_f_one_b_warmup(ProgramBuilder& b, int warmup, const OneFOneBVariant& v) {
  for (int mb = 0; mb < warmup; ++mb)
    b.transfer(Kind::RecvAct, mb).compute(forward_of(v, mb)).transfer(Kind::SendAct, mb).flush();
}

void one_f_one_b_steady_and_drain(ProgramBuilder& b, int microbatches, int next_forward, int next_backward,
                                  const OneFOneBVariant& v) {
  if (next_forward < microbatches)
    b.transfer(Kind::RecvAct, next_forward);
  else
    b.flush();
  for (int step = 0; next_forward < microbatches; ++step) {
    const int f = next_forward++, k = next_backward++;
    b.compute(forward_of(v, f)).transfer(Kind::SendAct, f);
    receive_grad(b, v, k);
    b.compute(Instruction::backward(k)).transfer(Kind::SendGrad, k);
    if (step < v.unbatched_steps) b.flush();
    if (next_forward < microbatches) b.transfer(Kind::RecvAct, next_forward);
    b.flush();
  }
  for (int k = next_backward; k < microbatches; ++k) {
    receive_grad(b, v, k);
    b.compute(Instruction::backward(k)).transfer(Kind::SendGrad, k).flush();
  }
}

}  // namespace trine
