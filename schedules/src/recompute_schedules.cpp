// Merak's 1F1B variants that move recomputation into time a stage would
// otherwise spend waiting (docs/design.md §6). Each is the 1F1B pattern with
// some microbatches forwarded by F* and recomputed by an R overlapping the
// receive of their gradient, and with special openings on stages p-2 and p-3.
#include "trine/schedules/pipeline_schedule.h"

#include "program_builder.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace trine {

namespace {

using Kind = Transfer::Kind;

int warmup_of(int stages, int microbatches, int stage) { return std::min(stages - stage - 1, microbatches); }

// The microbatches whose backward comes in the drain (the last `warmup`
// ones): their gradients arrive one by one while the stage has nothing else
// to do, so they are forwarded by F* and recomputed while waiting.
std::vector<bool> drain_checkpointed(int stages, int microbatches, int stage) {
  std::vector<bool> out(microbatches, false);
  for (int mb = microbatches - warmup_of(stages, microbatches, stage); mb < microbatches; ++mb) out[mb] = true;
  return out;
}

std::vector<Instruction> plain_one_f_one_b(ProgramBuilder& b, int stages, int microbatches, int stage,
                                           const OneFOneBVariant& v) {
  const int warmup = warmup_of(stages, microbatches, stage);
  one_f_one_b_warmup(b, warmup, v);
  one_f_one_b_steady_and_drain(b, microbatches, warmup, 0, v);
  return b.finish();
}

void check_recompute_schedule(const char* name, int stages, int microbatches, int stage, int min_stages) {
  check_pipeline_shape(stages, microbatches, stage);
  TORCH_CHECK(stages >= min_stages, "schedule '", name, "' needs at least ", min_stages,
              " pipeline stages (it moves recomputation into the bubbles between stages), got ", stages,
              "; use \"1f1b\" with fewer stages");
  TORCH_CHECK(microbatches >= stages, "schedule '", name, "' needs at least as many microbatches as stages, got ",
              microbatches, " microbatches for ", stages, " stages; raise \"microbatches\" or use \"1f1b\"");
}

}  // namespace

std::vector<Instruction> pre_recompute_schedule(int stages, int microbatches, int stage) {
  check_recompute_schedule("pre_recompute_1f1b", stages, microbatches, stage, 2);
  ProgramBuilder b(stages, stage);
  return plain_one_f_one_b(b, stages, microbatches, stage, {drain_checkpointed(stages, microbatches, stage), 0});
}

std::vector<Instruction> last_no_recompute_schedule(int stages, int microbatches, int stage) {
  check_recompute_schedule("last_no_recompute_1f1b", stages, microbatches, stage, 2);
  ProgramBuilder b(stages, stage);
  if (stage < stages - 2)
    return plain_one_f_one_b(b, stages, microbatches, stage, {drain_checkpointed(stages, microbatches, stage), 0});
  if (stage == stages - 1) return plain_one_f_one_b(b, stages, microbatches, stage, {{}, 1});
  // Stage p-2: microbatch 0 by F*, recomputed after forwarding microbatch 1
  // and while its gradient travels; microbatch 1's activation goes on after.
  b.transfer(Kind::RecvAct, 0).compute(Instruction::forward_checkpoint(0)).transfer(Kind::SendAct, 0).flush();
  b.transfer(Kind::RecvAct, 1).compute(Instruction::forward(1));
  b.recompute_while_receiving_grad(0).transfer(Kind::SendAct, 1).flush();
  b.compute(Instruction::backward(0)).transfer(Kind::SendGrad, 0);
  one_f_one_b_steady_and_drain(b, microbatches, 2, 1, {});
  return b.finish();
}

std::vector<Instruction> shifted_critical_path_schedule(int stages, int microbatches, int stage) {
  check_recompute_schedule("shifted_critical_path", stages, microbatches, stage, 3);
  ProgramBuilder b(stages, stage);
  if (stage < stages - 2) {
    auto checkpointed = drain_checkpointed(stages, microbatches, stage);
    if (stage == stages - 3) checkpointed[0] = true;  // recomputed while stage p-2 hoists its third forward
    return plain_one_f_one_b(b, stages, microbatches, stage, {checkpointed, 0});
  }
  if (stage == stages - 1) return plain_one_f_one_b(b, stages, microbatches, stage, {{}, 2});
  // Stage p-2: microbatches 0 and 1 by F*, their activations held back; the
  // third forward comes before the first backward, and each of the first two
  // backwards is preceded by its recompute overlapping its gradient's receive,
  // then the next activation sent. The stage holds three microbatches.
  b.transfer(Kind::RecvAct, 0).compute(Instruction::forward_checkpoint(0)).transfer(Kind::SendAct, 0).flush();
  b.transfer(Kind::RecvAct, 1).compute(Instruction::forward_checkpoint(1)).flush();
  b.transfer(Kind::RecvAct, 2).compute(Instruction::forward(2));
  b.recompute_while_receiving_grad(0).transfer(Kind::SendAct, 1).flush();
  b.compute(Instruction::backward(0)).transfer(Kind::SendGrad, 0).flush();
  b.recompute_while_receiving_grad(1).transfer(Kind::SendAct, 2).flush();
  b.compute(Instruction::backward(1)).transfer(Kind::SendGrad, 1);
  one_f_one_b_steady_and_drain(b, microbatches, 3, 2, {});
  return b.finish();
}

}  // namespace trine
