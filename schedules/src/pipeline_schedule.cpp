#include "trine/schedules/pipeline_schedule.h"

#include "program_builder.h"

#include <algorithm>

namespace trine {

using Kind = Transfer::Kind;

std::vector<Instruction> gpipe_schedule(int stages, int microbatches, int stage) {
  check_pipeline_shape(stages, microbatches, stage);
  ProgramBuilder b(stages, stage);
  for (int mb = 0; mb < microbatches; ++mb)
    b.transfer(Kind::RecvAct, mb).compute(Instruction::forward(mb)).transfer(Kind::SendAct, mb).flush();
  for (int mb = 0; mb < microbatches; ++mb)
    b.transfer(Kind::RecvGrad, mb).compute(Instruction::backward(mb)).transfer(Kind::SendGrad, mb).flush();
  return b.finish();
}

std::vector<Instruction> one_f_one_b_schedule(int stages, int microbatches, int stage) {
  check_pipeline_shape(stages, microbatches, stage);
  const int warmup = std::min(stages - stage - 1, microbatches);
  ProgramBuilder b(stages, stage);
  const OneFOneBVariant plain;
  one_f_one_b_warmup(b, warmup, plain);
  one_f_one_b_steady_and_drain(b, microbatches, warmup, 0, plain);
  return b.finish();
}

}  // namespace trine
