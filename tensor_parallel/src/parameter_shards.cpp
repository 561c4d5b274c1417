#include "trine/tensor_parallel/parameter_shards.h"

#include "parameter_behind.h"
#include "traced_shape.h"

#include <c10/util/Exception.h>

#include <set>

namespace trine {

namespace {

using Mode = LinearDecision::Mode;

// Positions of a linear's weight and fused bias, and the weight's layout as used.
struct LinearOperands {
  int weight = 1, bias = -1;
  bool in_by_out = false;  // as used: [in, out] (addmm, matmul); else [out, in] (linear)
};

LinearOperands operands_of(const torch::jit::Node* n) {
  if (n->kind() == c10::aten::linear) return {1, n->inputs().size() > 2 ? 2 : -1, false};
  if (n->kind() == c10::aten::addmm) return {2, 0, true};
  return {1, -1, true};  // matmul, mm
}

void record(std::map<std::string, ParameterShard>& out, const TracedModel& model, int input, ParameterShard shard) {
  const std::string& name = model.inputs[input].name;
  auto [it, fresh] = out.emplace(name, shard);
  TORCH_INTERNAL_ASSERT(fresh || (it->second.dim == shard.dim && it->second.blocks == shard.blocks), "parameter '",
                        name, "' is cut two ways");
}

void shard_linears(std::map<std::string, ParameterShard>& out, const TracedModel& model, const ShardingAnalysis& a) {
  for (const LinearDecision& d : a.linears) {
    if (d.mode == Mode::Replicated) continue;
    if (d.mode == Mode::Vocab) {  // an embedding table, cut by rows
      record(out, model, parameter_behind(model, d.node->input(0)).input, {0, 1});
      continue;
    }
    const LinearOperands ops = operands_of(d.node);
    const ParameterUse w = parameter_behind(model, d.node->input(ops.weight));
    TORCH_INTERNAL_ASSERT(w.input >= 0, "linear without a parameter weight");
    // The weight's output-feature dimension as the parameter is stored.
    const int out_dim_used = ops.in_by_out ? 1 : 0;
    const int out_dim = w.transposed ? 1 - out_dim_used : out_dim_used;
    if (d.mode == Mode::Column) {
      record(out, model, w.input, {out_dim, d.blocks});
    } else {
      record(out, model, w.input, {1 - out_dim, 1});
    }
    if (ops.bias < 0) continue;
    const ParameterUse b = parameter_behind(model, d.node->input(ops.bias));
    if (b.input >= 0 && d.mode == Mode::Column) record(out, model, b.input, {0, d.blocks});
  }
}

// A parameter added to (or multiplied with) a split value, at full size along
// the split: each rank takes its slice (a bias after a traced matmul).
void shard_operands_of_split_values(std::map<std::string, ParameterShard>& out, const TracedModel& model,
                                    const ShardingAnalysis& a) {
  std::set<const torch::jit::Node*> linears;
  for (const LinearDecision& d : a.linears) linears.insert(d.node);
  for (const torch::jit::Node* n : model.graph->nodes()) {
    if (linears.count(n)) continue;
    if (n->outputs().size() != 1) continue;
    auto placed = a.placements.find(n->output());
    if (placed == a.placements.end() || !placed->second.is_split()) continue;
    const auto out_shape = traced_shape(n->output());
    if (!out_shape) continue;
    for (const torch::jit::Value* in : n->inputs()) {
      const ParameterUse p = parameter_behind(model, in);
      if (p.input < 0 || p.transposed) continue;
      const auto shape = model.inputs[p.input].value.sizes();
      const int aligned = placed->second.dim - static_cast<int>(out_shape->size()) + static_cast<int>(shape.size());
      if (aligned >= 0 && shape[aligned] == (*out_shape)[placed->second.dim])
        record(out, model, p.input, {aligned, placed->second.blocks});
    }
  }
}

}  // namespace

std::map<std::string, ParameterShard> parameter_shards(const TracedModel& model, const ShardingAnalysis& analysis) {
  std::map<std::string, ParameterShard> out;
  shard_linears(out, model, analysis);
  shard_operands_of_split_values(out, model, analysis);
  return out;
}

ParameterShard shard_named(const std::map<std::string, ParameterShard>& shards, const std::string& name) {
  auto it = shards.find(name);
  return it == shards.end() ? ParameterShard{} : it->second;
}

std::vector<std::pair<int64_t, int64_t>> shard_rows(int64_t size, const ParameterShard& shard, int rank, int tp) {
  TORCH_CHECK(rank >= 0 && rank < tp, "tensor-parallel rank ", rank, " of ", tp);
  TORCH_CHECK(size % (shard.blocks * tp) == 0, "dimension ", shard.dim, " of ", size, " does not split in ",
              shard.blocks, " x ", tp);
  const int64_t block = size / shard.blocks, piece = block / tp;
  std::vector<std::pair<int64_t, int64_t>> rows;
  for (int b = 0; b < shard.blocks; ++b) rows.emplace_back(b * block + rank * piece, piece);
  return rows;
}

std::vector<int64_t> shard_sizes(c10::IntArrayRef whole, const ParameterShard& shard, int rank, int tp) {
  std::vector<int64_t> sizes = whole.vec();
  if (shard.whole()) return sizes;
  int64_t rows = 0;
  for (const auto& run : shard_rows(whole[shard.dim], shard, rank, tp)) rows += run.second;
  sizes[shard.dim] = rows;
  return sizes;
}

torch::Tensor shard_of(const torch::Tensor& whole, const ParameterShard& shard, int rank, int tp) {
  if (shard.whole()) return whole;
  std::vector<torch::Tensor> parts;
  for (const auto& [first, rows] : shard_rows(whole.size(shard.dim), shard, rank, tp))
    parts.push_back(whole.narrow(shard.dim, first, rows));
  return torch::cat(parts, shard.dim);
}

torch::Tensor whole_of(const std::vector<torch::Tensor>& slices, const ParameterShard& shard) {
  TORCH_CHECK(!slices.empty(), "no slices to join");
  if (shard.whole()) return slices.front();
  std::vector<torch::Tensor> blocks;
  for (int b = 0; b < shard.blocks; ++b) {
    std::vector<torch::Tensor> pieces;
    for (const auto& s : slices) pieces.push_back(s.chunk(shard.blocks, shard.dim).at(b));
    blocks.push_back(torch::cat(pieces, shard.dim));
  }
  return torch::cat(blocks, shard.dim);
}

}  // namespace trine
