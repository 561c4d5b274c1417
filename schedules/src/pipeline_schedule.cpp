#include "trine/schedules/pipeline_schedule.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace trine {

namespace {

using Kind = Transfer::Kind;

void check_shape(int stages, int microbatches, int stage) {
  TORCH_CHECK(stages >= 1, "a pipeline needs at least one stage, got ", stages);
  TORCH_CHECK(microbatches >= 1, "a pipeline needs at least one microbatch, got ", microbatches);
  TORCH_CHECK(stage >= 0 && stage < stages, "stage ", stage, " is outside the pipeline's ", stages, " stages");
}

// Builds one stage's list; transfers a stage cannot have (the first stage
// receives no activations, the last sends none) are left out, and transfers
// added back to back share one Communicate batch.
class ProgramBuilder {
 public:
  ProgramBuilder(int stages, int stage) : first_(stage == 0), last_(stage == stages - 1) {}

  ProgramBuilder& transfer(Kind kind, int mb) {
    const bool upstream = kind == Kind::RecvAct || kind == Kind::SendGrad;
    if (upstream ? first_ : last_) return *this;
    if (!open_) {
      program_.push_back(Instruction::communicate({}));
      open_ = true;
    }
    program_.back().transfers.push_back({kind, mb});
    return *this;
  }
  ProgramBuilder& compute(Instruction i) {
    open_ = false;
    program_.push_back(std::move(i));
    return *this;
  }
  // Ends a batch: the next transfer starts a new one.
  ProgramBuilder& flush() {
    open_ = false;
    return *this;
  }
  std::vector<Instruction> finish() {
    compute(Instruction::reduce_grads());
    compute(Instruction::optimizer_step());
    return std::move(program_);
  }

 private:
  bool first_, last_;
  bool open_ = false;
  std::vector<Instruction> program_;
};

}  // namespace

std::vector<Instruction> gpipe_schedule(int stages, int microbatches, int stage) {
  check_shape(stages, microbatches, stage);
  ProgramBuilder b(stages, stage);
  for (int mb = 0; mb < microbatches; ++mb)
    b.transfer(Kind::RecvAct, mb).compute(Instruction::forward(mb)).transfer(Kind::SendAct, mb).flush();
  for (int mb = 0; mb < microbatches; ++mb)
    b.transfer(Kind::RecvGrad, mb).compute(Instruction::backward(mb)).transfer(Kind::SendGrad, mb).flush();
  return b.finish();
}

std::vector<Instruction> one_f_one_b_schedule(int stages, int microbatches, int stage) {
  check_shape(stages, microbatches, stage);
  const int warmup = std::min(stages - stage - 1, microbatches);
  const int steady = microbatches - warmup;
  ProgramBuilder b(stages, stage);
  for (int mb = 0; mb < warmup; ++mb)
    b.transfer(Kind::RecvAct, mb).compute(Instruction::forward(mb)).transfer(Kind::SendAct, mb).flush();
  if (steady > 0) b.transfer(Kind::RecvAct, warmup);
  for (int k = 0; k < steady; ++k) {
    const int fwd = warmup + k;
    // Forward the next microbatch, then in one batch send it on and receive
    // the gradient of the oldest one in flight; backward that one, then in one
    // batch send its gradient back and receive the next forward's input.
    b.compute(Instruction::forward(fwd)).transfer(Kind::SendAct, fwd).transfer(Kind::RecvGrad, k);
    b.compute(Instruction::backward(k)).transfer(Kind::SendGrad, k);
    if (k + 1 < steady) b.transfer(Kind::RecvAct, fwd + 1);
    b.flush();
  }
  for (int mb = steady; mb < microbatches; ++mb)
    b.transfer(Kind::RecvGrad, mb).compute(Instruction::backward(mb)).transfer(Kind::SendGrad, mb).flush();
  return b.finish();
}

}  // namespace trine
