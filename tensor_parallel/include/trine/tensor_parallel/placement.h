// Where a value lives across the t ranks of a tensor-parallel group
// (docs/design.md §5a): whole on every rank (replicated), cut along one
// dimension (split: rank i holds the i-th of t equal pieces; with `blocks`
// b > 1 the dimension is b equal blocks, each cut in t, as the output of a
// fused q/k/v projection is), or a partial sum (every rank holds a term; the
// value is their sum, which an all-reduce makes whole).
#pragma once
#include <string>

namespace trine {

struct Placement {
  enum class Kind { Replicated, Split, Partial };
  Kind kind = Kind::Replicated;
  int dim = -1;    // Split: the dimension cut (non-negative)
  int blocks = 1;  // Split: equal blocks of `dim`, each cut in t

  static Placement replicated() { return {}; }
  static Placement split(int dim, int blocks = 1) { return {Kind::Split, dim, blocks}; }
  static Placement partial() { return {Kind::Partial, -1, 1}; }
  bool is_replicated() const { return kind == Kind::Replicated; }
  bool is_split() const { return kind == Kind::Split; }
  bool is_partial() const { return kind == Kind::Partial; }
  bool operator==(const Placement& o) const { return kind == o.kind && dim == o.dim && blocks == o.blocks; }
  bool operator!=(const Placement& o) const { return !(*this == o); }
};

// "replicated", "split(2)", "split(2, 3 blocks)", "partial".
std::string to_string(const Placement& p);

}  // namespace trine
