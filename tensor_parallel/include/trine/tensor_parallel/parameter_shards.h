// Which slice of every parameter a tensor-parallel rank holds, from the
// sharding analysis (docs/design.md §5a): a column-parallel linear's weight
// by its output features (per fused block), a row-parallel one's by its input
// features, a bias added to a split output along that split; everything else
// whole. Slices come from the same initial weights as the whole model, so a
// tp run starts where single-process training does.
#pragma once
#include "trine/tensor_parallel/sharding_analysis.h"

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace trine {

struct ParameterShard {
  int dim = -1;    // the parameter's dimension cut in t; -1: whole on every rank
  int blocks = 1;  // equal blocks of `dim`, each cut in t (fused q/k/v)
  bool whole() const { return dim < 0; }
};

// Per parameter name (the graph input's), its shard; parameters not listed are whole.
std::map<std::string, ParameterShard> parameter_shards(const TracedModel& model, const ShardingAnalysis& analysis);

// The shard of parameter `name` (whole when `shards` does not list it).
ParameterShard shard_named(const std::map<std::string, ParameterShard>& shards, const std::string& name);

// The runs of dimension `shard.dim` (of `size` rows) that rank `rank` of `tp`
// holds, in order, one per fused block: (first row, rows). Its slice is
// their concatenation along that dimension.
std::vector<std::pair<int64_t, int64_t>> shard_rows(int64_t size, const ParameterShard& shard, int rank, int tp);

// The shape of rank `rank` of `tp`'s slice of a parameter of shape `whole`.
std::vector<int64_t> shard_sizes(c10::IntArrayRef whole, const ParameterShard& shard, int rank, int tp);
// Rank `rank` of `tp`'s slice of `whole` (a copy; `whole` itself when not cut).
torch::Tensor shard_of(const torch::Tensor& whole, const ParameterShard& shard, int rank, int tp);
// The inverse: the whole tensor from every rank's slice (rank order), as
// checkpoints re-cut parameters for another tp degree.
torch::Tensor whole_of(const std::vector<torch::Tensor>& slices, const ParameterShard& shard);

}  // namespace trine
