#include "trine/schedules/instruction.h"

#include <sstream>

namespace trine {

namespace {

std::string chunk_suffix(int chunk) { return chunk ? "@" + std::to_string(chunk) : ""; }

}  // namespace

std::string to_string(const Transfer& t) {
  static const char* names[] = {"sA", "rA", "sG", "rG"};
  return names[static_cast<int>(t.kind)] + std::to_string(t.microbatch) + chunk_suffix(t.chunk);
}

namespace {

std::string to_string(const std::vector<Transfer>& batch) {
  std::string s = "[";
  for (size_t k = 0; k < batch.size(); ++k) s += (k ? " " : "") + to_string(batch[k]);
  return s + "]";
}

}  // namespace

std::string to_string(const Instruction& i) {
  const std::string mb = std::to_string(i.microbatch) + chunk_suffix(i.chunk);
  switch (i.op) {
    case Instruction::Op::Forward: return "F" + mb;
    case Instruction::Op::ForwardCheckpoint: return "F*" + mb;
    case Instruction::Op::Recompute: return "R" + mb + (i.transfers.empty() ? "" : "+" + to_string(i.transfers));
    case Instruction::Op::Backward: return "B" + mb;
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
