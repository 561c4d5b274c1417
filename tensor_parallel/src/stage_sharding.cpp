#include "trine/tensor_parallel/stage_sharding.h"

#include "graph_edit.h"
#include "graph_ops.h"
#include "parameter_behind.h"
#include "random_ops.h"
#include "traced_shape.h"

#include "trine/frontend/deferred_init.h"
#include "trine/frontend/graph_runner.h"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>

#include <c10/util/Exception.h>

#include <map>
#include <tuple>
#include <unordered_map>

namespace trine {

namespace {

using torch::jit::Node;
using torch::jit::Value;
using Mode = LinearDecision::Mode;

bool is_floating_tensor(const Value* v) {
  const auto t = v->type()->cast<c10::TensorType>();
  return t && (!t->scalarType() || c10::isFloatingType(*t->scalarType()));
}

class StageRewrite {
 public:
  StageRewrite(StageProgram& stage, const StageShardingContext& c) : stage_(stage), c_(c), graph_(*stage.graph) {
    size_t position = 0;
    for (const Node* n : graph_.nodes()) id_of_[n] = stage.runner.op_id(position++);
    for (const LinearDecision& d : c.analysis->linears) decision_of_[d.node] = &d;
  }

  void run() {
    for (Value* in : graph_.inputs()) localize_input(in);
    std::vector<Node*> nodes(graph_.nodes().begin(), graph_.nodes().end());
    for (Node* n : nodes) rewrite(n);
    std::vector<int64_t> ids;
    for (const Node* n : graph_.nodes()) {
      auto it = id_of_.find(n);
      ids.push_back(it == id_of_.end() ? -1 : it->second);
    }
    stage_.runner = GraphRunner(stage_.graph, std::move(ids));
  }

 private:
  const Value* source(const Value* v) const {
    auto it = stage_.source.find(v);
    return it == stage_.source.end() ? nullptr : it->second;
  }

  Placement placement(const Value* v) const {
    const Value* s = source(v);
    if (!s) return Placement::replicated();
    auto it = c_.analysis->placements.find(s);
    return it == c_.analysis->placements.end() ? Placement::replicated() : it->second;
  }

  // The cut of the parameter `v` is (seen through aten::t and the like), or nullopt.
  std::optional<ParameterShard> shard_behind(const Value* v) const {
    const Value* s = source(v);
    if (!s) return std::nullopt;
    const ParameterUse use = parameter_behind(*c_.model, s);
    if (use.input < 0) return std::nullopt;
    auto it = c_.shards->find(c_.model->inputs[use.input].name);
    if (it == c_.shards->end()) return std::nullopt;
    return it->second;
  }

  // Whole sizes as traced, and this rank's when `v` is split.
  std::optional<std::vector<int64_t>> whole_sizes(const Value* v) const {
    const Value* s = source(v);
    return s ? traced_shape(s) : std::nullopt;
  }
  std::optional<std::vector<int64_t>> local_sizes(const Value* v) const {
    auto sizes = whole_sizes(v);
    const Placement p = placement(v);
    if (!sizes || !p.is_split()) return sizes;
    TORCH_CHECK((*sizes)[p.dim] % c_.tp == 0, "tensor parallelism: ", describe(v), " has ", (*sizes)[p.dim],
                " along its split dimension ", p.dim, ", which does not divide by tp = ", c_.tp);
    (*sizes)[p.dim] /= c_.tp;
    return sizes;
  }

  std::string describe(const Value* v) const {
    return "value %" + v->debugName() + " (" + std::string(v->node()->kind().toQualString()) + ")";
  }

  void set_sizes(Value* v, const std::vector<int64_t>& sizes) {
    if (auto t = v->type()->cast<c10::TensorType>()) v->setType(t->withSizes(sizes));
  }

  void localize_input(Value* in) {
    localize_parameter_view(in);
    if (placement(in).is_split())
      if (auto sizes = local_sizes(in)) set_sizes(in, *sizes);
  }

  // A cut parameter, itself or seen through aten::t and the like: its type takes the slice's shape.
  void localize_parameter_view(Value* v) {
    const Value* s = source(v);
    if (!s) return;
    const ParameterUse use = parameter_behind(*c_.model, s);
    const auto shard = shard_behind(v);
    const auto sizes = traced_shape(v);
    if (use.input < 0 || !shard || shard->whole() || !sizes) return;
    auto local = *sizes;
    const int dim = use.transposed && local.size() == 2 ? 1 - shard->dim : shard->dim;
    local[dim] /= c_.tp;
    set_sizes(v, local);
  }

  const LinearDecision* decision(const Node* n) const {
    if (n->outputs().empty()) return nullptr;
    const Value* s = source(n->output(0));
    if (!s) return nullptr;
    auto it = decision_of_.find(s->node());
    return it == decision_of_.end() ? nullptr : it->second;
  }

  Value* constant(const c10::IValue& value, Node* before) { return insert_constant(graph_, value, before); }

  Node* insert_op(c10::Symbol kind, const std::vector<Value*>& inputs, const c10::TypePtr& type, Node* before,
                  int64_t op_id) {
    Node* node = trine::insert_op(graph_, kind, inputs, type, before);
    id_of_[node] = op_id;
    return node;
  }

  void rewrite(Node* n) {
    if (n->kind() == c10::prim::Constant) return;
    if (n->outputs().size() == 1) localize_parameter_view(n->output());
    const LinearDecision* d = decision(n);
    if (d && d->mode == Mode::Row) return rewrite_row(n);
    if (d && d->mode == Mode::Vocab) return rewrite_embedding(n);
    if (n->kind() == c10::aten::cross_entropy_loss && placement(n->input(0)).is_split())
      return rewrite_cross_entropy(n);
    bool split_out = false;
    for (const Value* o : n->outputs()) split_out = split_out || placement(o).is_split();
    if (!split_out) return check_not_random_on_split(n);
    enter_whole_inputs(n);
    if (n->kind() == c10::aten::dropout || n->kind() == c10::aten::dropout_) {
      rewrite_dropout(n);
      return;
    }
    check_not_random_on_split(n);
    rewrite_sizes(n);
    for (Value* o : n->outputs())
      if (auto sizes = local_sizes(o)) set_sizes(o, *sizes);
  }

  void check_not_random_on_split(const Node* n) const {
    if (!draws_random_numbers_when_run(n)) return;
    for (const Value* v : n->inputs())
      TORCH_CHECK(!placement(v).is_split(), "tensor parallelism cannot give ", n->kind().toQualString(),
                  " the random numbers one process would draw: its input ", describe(v),
                  " is split across the tp ranks (only aten::dropout has a rank-local form). Keep its linears whole "
                  "with tensor_parallel.replicate, or run without tp");
    for (const Value* v : n->outputs())
      TORCH_CHECK(!placement(v).is_split(), "tensor parallelism cannot split the random op ", n->kind().toQualString(),
                  "; keep its linears whole with tensor_parallel.replicate, or run without tp");
  }

  // Whole tensors that `n` turns into split ones: their gradient, a sum of
  // every rank's part, is summed over the group on the way back. A whole
  // operand of an op whose output is split along a dimension it has at full
  // size (not broadcast) is cut to this rank's piece first.
  void enter_whole_inputs(Node* n) {
    const LinearDecision* linear = decision(n);
    for (size_t i = 0; i < n->inputs().size(); ++i) {
      Value* v = n->input(i);
      if (!is_floating_tensor(v) || !placement(v).is_replicated()) continue;
      if (auto shard = shard_behind(v); shard && !shard->whole()) continue;
      auto it = entered_.find(v);
      if (it == entered_.end()) {
        Value* g = constant(c_.group, n);
        it = entered_.emplace(v, insert_op(tp_ops::enter(), {v, g}, v->type(), n, id_of_[n])->output()).first;
      }
      Value* operand = it->second;
      if (!linear)
        if (auto cut = full_size_split_of(v, n)) operand = piece_of(operand, v, *cut, n);
      n->replaceInput(i, operand);
    }
  }

  // The cut of whole operand `v` of `n` that lines up with n's split output
  // (broadcast from the right), when v has that dimension at full size.
  std::optional<ParameterShard> full_size_split_of(const Value* v, const Node* n) const {
    const Value* out = nullptr;
    for (const Value* o : n->outputs())
      if (placement(o).is_split()) out = o;
    const auto in_sizes = whole_sizes(v), out_sizes = out ? whole_sizes(out) : std::nullopt;
    if (!in_sizes || !out_sizes) return std::nullopt;
    const Placement p = placement(out);
    const int aligned = p.dim - static_cast<int>(out_sizes->size()) + static_cast<int>(in_sizes->size());
    if (aligned < 0 || (*in_sizes)[aligned] == 1) return std::nullopt;
    TORCH_CHECK((*in_sizes)[aligned] == (*out_sizes)[p.dim], "tensor parallelism: ", describe(v), " meets the split ",
                describe(out), " in ", n->kind().toQualString(), " with ", (*in_sizes)[aligned], " along the split "
                "dimension, not ", (*out_sizes)[p.dim]);
    return ParameterShard{aligned, p.blocks};
  }

  Value* piece_of(Value* entered, const Value* whole, const ParameterShard& cut, Node* before) {
    const auto key = std::make_tuple(whole, cut.dim, cut.blocks);
    auto it = pieces_.find(key);
    if (it != pieces_.end()) return it->second;
    auto sizes = *whole_sizes(whole);
    sizes[cut.dim] /= c_.tp;
    const auto type = whole->type()->cast<c10::TensorType>()->withSizes(sizes);
    Node* piece = insert_op(tp_ops::piece(),
                            {entered, constant(int64_t{cut.dim}, before), constant(int64_t{cut.blocks}, before),
                             constant(int64_t{c_.rank}, before), constant(int64_t{c_.tp}, before)},
                            type, before, id_of_[before]);
    return pieces_[key] = piece->output();
  }

  // linear(x, w, b) -> leave(linear(x, w)) + b; addmm(b, x, w) -> leave(mm(x, w)) + b;
  // matmul/mm(x, w) -> leave(matmul/mm(x, w)).
  void rewrite_row(Node* n) {
    const int64_t id = id_of_[n];
    const c10::TypePtr type = n->output()->type();
    Value* bias = nullptr;
    Value* product = n->output();
    Node* after = n->next();
    if (n->kind() == c10::aten::linear) {
      bias = n->inputs().size() > 2 && !n->input(2)->mustBeNone() ? n->input(2) : nullptr;
      if (bias) {
        Value* none = constant(c10::IValue(), n);
        product = insert_op(c10::aten::linear, {n->input(0), n->input(1), none}, type, n, id)->output();
      }
    } else if (n->kind() == c10::aten::addmm) {
      for (size_t i = 3; i < n->inputs().size(); ++i) {
        const auto scale = torch::jit::toIValue(n->input(i));
        TORCH_CHECK(scale && (scale->isInt() || scale->isDouble()) && scale->toScalar().to<double>() == 1,
                    "tensor parallelism: a row-parallel aten::addmm must have beta = alpha = 1");
      }
      bias = n->input(0);
      product = insert_op(c10::aten::mm, {n->input(1), n->input(2)}, type, n, id)->output();
    }
    Value* g = constant(c_.group, after);
    Node* leave = insert_op(tp_ops::leave(), {product, g}, type, after, id);
    Value* out = leave->output();
    if (bias) out = insert_op(c10::aten::add, {out, bias, constant(int64_t{1}, after)}, type, after, id)->output();
    stage_.source[out] = source(n->output());  // the linear's whole output, as the analysis knows it
    if (product == n->output()) {
      n->output()->replaceAllUsesWith(out);
      leave->replaceInput(0, n->output());
    } else {
      n->output()->replaceAllUsesWith(out);
      id_of_.erase(n);
      n->destroy();
    }
  }

  // embedding(w, ids, padding_idx, ...) -> vocab_embedding over this rank's rows.
  void rewrite_embedding(Node* n) {
    const auto rows = whole_sizes(n->input(0));
    TORCH_INTERNAL_ASSERT(rows && !rows->empty(), "embedding table without a traced shape");
    const int64_t first_row = c_.rank * ((*rows)[0] / c_.tp);
    Value* padding = n->inputs().size() > 2 ? n->input(2) : constant(int64_t{-1}, n);
    replace_with(n, insert_op(tp_ops::vocab_embedding(),
                              {n->input(0), n->input(1), padding, constant(first_row, n), constant(c_.group, n)},
                              n->output()->type(), n, id_of_[n]));
  }

  // cross_entropy_loss(logits, target, None, reduction, ignore_index, 0.) over split classes.
  void rewrite_cross_entropy(Node* n) {
    const auto whole = whole_sizes(n->input(0));
    TORCH_INTERNAL_ASSERT(whole && whole->size() == 2, "split logits without a [rows, classes] shape");
    const int64_t first_class = c_.rank * ((*whole)[1] / c_.tp);
    replace_with(n, insert_op(tp_ops::vocab_cross_entropy(),
                              {n->input(0), n->input(1), n->input(3), n->input(4), constant(first_class, n),
                               constant(c_.group, n)},
                              n->output()->type(), n, id_of_[n]));
  }

  // `replacement` (inserted before `n`) computes n's output from now on.
  void replace_with(Node* n, Node* replacement) {
    stage_.source[replacement->output()] = source(n->output());
    n->output()->replaceAllUsesWith(replacement->output());
    id_of_.erase(n);
    n->destroy();
  }

  void rewrite_dropout(Node* n) {
    Value* x = n->input(0);
    const Placement p = placement(x);
    const auto whole = whole_sizes(x);
    TORCH_CHECK(whole, "tensor parallelism: the dropout of ", describe(x), " has no traced shape");
    check_in_place_dropout_read_last(n, "tensor parallelism: the in-place dropout of " + describe(x));
    const auto type = n->output()->type()->cast<c10::TensorType>()->withSizes(*local_sizes(x));
    if (!c_.exact_dropout)
      return replace_with(n, insert_op(tp_ops::shard_dropout(),
                                       {x, n->input(1), n->input(2), constant(int64_t{c_.rank}, n)}, type, n,
                                       id_of_[n]));
    Node* d = insert_op(tp_ops::dropout(),
                        {x, n->input(1), n->input(2), constant(*whole, n), constant(int64_t{p.dim}, n),
                         constant(int64_t{p.blocks}, n), constant(int64_t{c_.rank}, n), constant(int64_t{c_.tp}, n),
                         constant(int64_t{0}, n), constant(int64_t{0}, n), constant(int64_t{1}, n)},
                        type, n, id_of_[n]);
    replace_with(n, d);
  }

  // Size arguments that carry a split dimension take this rank's sizes.
  void rewrite_sizes(Node* n) {
    const std::string kind = n->kind().toQualString();
    if (kind == "aten::view" || kind == "aten::reshape" || kind == "aten::_unsafe_view" || kind == "aten::expand")
      localize_target_shape(n);
    else if (kind == "aten::unflatten")
      localize_unflatten(n);
    else if (kind == "aten::split" || kind == "aten::split_with_sizes")
      localize_split(n, kind);
  }

  // view/reshape/expand(x, sizes): the output's local shape.
  void localize_target_shape(Node* n) {
    if (auto sizes = local_sizes(n->output()); sizes && sizes != whole_sizes(n->output()))
      n->replaceInput(1, constant(*sizes, n));
  }

  // unflatten(x, dim, sizes): the output's local sizes of the dimensions it makes.
  void localize_unflatten(Node* n) {
    const auto sizes = local_sizes(n->output());
    const auto dim = torch::jit::constant_as<int64_t>(n->input(1));
    const auto in = whole_sizes(n->input(0));
    TORCH_CHECK(sizes && dim && in, "tensor parallelism: aten::unflatten of ", describe(n->input(0)),
                " needs constant dimension and traced shapes");
    const int64_t d = *dim < 0 ? *dim + static_cast<int64_t>(in->size()) : *dim;
    const size_t count = sizes->size() - in->size() + 1;
    n->replaceInput(2, constant(std::vector<int64_t>(sizes->begin() + d, sizes->begin() + d + count), n));
  }

  // split/split_with_sizes(x, sizes, dim) along the split dimension: each part's size / t.
  void localize_split(Node* n, const std::string& kind) {
    const Placement p = placement(n->input(0));
    const auto dim = torch::jit::constant_as<int64_t>(n->input(2));
    const auto in = whole_sizes(n->input(0));
    TORCH_CHECK(dim && in, "tensor parallelism: ", kind, " of ", describe(n->input(0)), " needs a constant dimension");
    const int64_t d = *dim < 0 ? *dim + static_cast<int64_t>(in->size()) : *dim;
    if (p.dim != d) return;
    auto local_part = [&](int64_t size) {
      TORCH_CHECK(size % c_.tp == 0, "tensor parallelism: ", kind, " into a part of ", size,
                  ", which does not divide by tp = ", c_.tp);
      return size / c_.tp;
    };
    if (auto size = torch::jit::constant_as<int64_t>(n->input(1))) {
      n->replaceInput(1, constant(local_part(*size), n));
    } else if (auto sizes = torch::jit::constant_as<std::vector<int64_t>>(n->input(1))) {
      for (auto& s : *sizes) s = local_part(s);
      n->replaceInput(1, constant(*sizes, n));
    } else {
      TORCH_CHECK(false, "tensor parallelism: ", kind, " of ", describe(n->input(0)), " needs constant sizes");
    }
  }

  StageProgram& stage_;
  const StageShardingContext& c_;
  torch::jit::Graph& graph_;
  std::unordered_map<const Node*, int64_t> id_of_;
  std::unordered_map<const Node*, const LinearDecision*> decision_of_;
  std::unordered_map<const Value*, Value*> entered_;
  std::map<std::tuple<const Value*, int, int>, Value*> pieces_;
};

}  // namespace

void shard_stage(StageProgram& stage, const StageShardingContext& context) {
  TORCH_CHECK(context.model && context.analysis && context.shards, "shard_stage: incomplete context");
  TORCH_CHECK(context.tp == context.analysis->tp, "shard_stage: the analysis is for tp = ", context.analysis->tp,
              ", the rank is one of ", context.tp);
  if (context.tp == 1) return;
  StageRewrite(stage, context).run();
}

namespace {

int64_t tensor_bytes(const Value* v) {
  const auto t = v->type()->cast<c10::TensorType>();
  const auto sizes = traced_shape(v);
  if (!sizes || !t->scalarType()) return 0;
  int64_t n = 1;
  for (int64_t s : *sizes) n *= s;
  return n * static_cast<int64_t>(c10::elementSize(*t->scalarType()));
}

}  // namespace

ShardedStageBytes sharded_stage_bytes(const StageProgram& stage) {
  ShardedStageBytes b;
  for (size_t i = 0; i < stage.inputs.size(); ++i) {
    if (stage.inputs[i].kind != StageInput::Kind::Parameter) continue;
    const Value* in = stage.graph->inputs()[i];
    b.parameters += tensor_bytes(in);
    auto src = stage.source.find(in);
    b.whole_parameters += src == stage.source.end() ? tensor_bytes(in) : tensor_bytes(src->second);
  }
  for (const Node* n : stage.graph->nodes())
    for (const Value* o : n->outputs()) {
      auto src = stage.source.find(o);
      if (src == stage.source.end()) continue;  // added by the rewrite (collectives): not in the whole stage
      b.activations += tensor_bytes(o);
      b.whole_activations += tensor_bytes(src->second);
    }
  return b;
}

std::vector<ShardedStageBytes> sharded_stage_bytes(const TracedModel& model, const ProxyGraph& proxy,
                                                   const std::vector<int>& stage_of_layer,
                                                   const ShardingAnalysis& analysis) {
  const auto shards = parameter_shards(model, analysis);
  std::vector<ShardedStageBytes> out;
  for (StageProgram& stage : split_into_stages(model, proxy, stage_of_layer)) {
    shard_stage(stage, {&model, &analysis, &shards, 0, analysis.tp, 0});  // group 0: never run
    out.push_back(sharded_stage_bytes(stage));
  }
  return out;
}

TracedModel with_parameter_shards(const TracedModel& model, const std::map<std::string, ParameterShard>& shards,
                                  int rank, int tp) {
  TracedModel local = model;
  for (GraphInput& in : local.inputs) {
    auto it = shards.find(in.name);
    if (it == shards.end() || it->second.whole()) continue;
    torch::NoGradGuard no_grad;
    // A deferred parameter's slice is a stand-in too: the rank allocates it once it knows it holds it.
    in.value = is_deferred(in.value)
                   ? deferred_tensor(shard_sizes(in.value.sizes(), it->second, rank, tp), in.value.options())
                   : shard_of(in.value, it->second, rank, tp).contiguous().clone().requires_grad_(
                         in.value.requires_grad());
  }
  return local;
}

}  // namespace trine
