#include "trine/schedules/instruction.h"

#include <sstream>

namespace trine {

std::string to_string(const Transfer& t) {
  static const char* names[] = {"sA", "rA", "sG", "rG"};
  return names[static_cast<int>(t.kind)] + std::to_string(t.microbatch);
}

namespace {

std::string to_string(const std::vector<Transfer>& batch) {
  std::string s = "[";
  for (size_t k = 0; k < batch.size(); ++k) s += (k ? " " : "") + to_string(batch[k]);
  return s + "]";
}

}  // namespace

std::string to_string(const Instruction& i) {
  switch (i.op) {
    case Instruction::Op::Forward: return "F" + std::to_string(i.microbatch);
    case Instruction::Op::ForwardCheckpoint: return "F*" + std::to_string(i.microbatch);
    case Instruction::Op::Recompute:
      return "R" + std::to_string(i.microbatch) + (i.transfers.empty() ? "" : "+" + to_string(i.transfers));
    case Instruction::Op::Backward: return "B" + std::to_string(i.microbatch);
    case Instruction::Op::ReduceGrads: return "reduce";
    case Instruction::Op::OptimizerStep: return "step";
    case Instruction::Op::Communicate: return to_string(i.transfers);
  }
  return "?";
}

std::string to_string(const std::vector<Instruction>& program) {
  std::ostringstream os;
  for (size_t k = 0; k < program.size(); ++k) os << (k ? " " : "") << to_string(program[k]);
  return os.str();
}

}  // namespace trine
