#include "trine/tensor_parallel/placement.h"

namespace trine {

std::string to_string(const Placement& p) {
  switch (p.kind) {
    case Placement::Kind::Replicated: return "replicated";
    case Placement::Kind::Partial: return "partial";
    case Placement::Kind::Split:
      return "split(" + std::to_string(p.dim) + (p.blocks > 1 ? ", " + std::to_string(p.blocks) + " blocks" : "") +
             ")";
  }
  return "?";
}

}  // namespace trine
