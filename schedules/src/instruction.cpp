#include "trine/schedules/instruction.h"

#include <sstream>

namespace trine {

std::string to_string(const Transfer& t) {
  static const char* names[] = {"sA", "rA", "sG", "rG"};
  return names[static_cast<int>(t.kind)] + std::to_string(t.microbatch);
}

std::string to_string(const Instruction& i) {
  switch (i.op) {
    case Instruction::Op::Forward: return "F" + std::to_string(i.microbatch);
    case Instruction::Op::Backward: return "B" + std::to_string(i.microbatch);
    case Instruction::Op::ReduceGrads: return "reduce";
    case Instruction::Op::OptimizerStep: return "step";
    case Instruction::Op::Communicate: {
      std::string s = "[";
      for (size_t k = 0; k < i.transfers.size(); ++k) s += (k ? " " : "") + to_string(i.transfers[k]);
      return s + "]";
    }
  }
  return "?";
}

std::string to_string(const std::vector<Instruction>& program) {
  std::ostringstream os;
  for (size_t k = 0; k < program.size(); ++k) os << (k ? " " : "") << to_string(program[k]);
  return os.str();
}

}  // namespace trine
