#include "trine/tensor_parallel/sub_microbatches.h"

#include "graph_edit.h"
#include "graph_ops.h"
#include "random_ops.h"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <unordered_map>
#include <vector>

namespace trine {

namespace {

using torch::jit::Node;
using torch::jit::Value;

// A graph's ops other than constants: a trace may record equal constants
// once or apart depending on the sizes it saw, and constants draw nothing.
template <typename N, typename G>
std::vector<N*> ops_of(G& graph) {
  std::vector<N*> out;
  for (N* n : graph.nodes())
    if (n->kind() != c10::prim::Constant) out.push_back(n);
  return out;
}

class SubMicrobatchRewrite {
 public:
  SubMicrobatchRewrite(StageProgram& part, const StageProgram& whole, int index, int parts)
      : part_(part), whole_(whole), index_(index), parts_(parts) {}

  void run() {
    size_t position = 0;
    for (const Node* n : part_.graph->nodes()) id_of_[n] = part_.runner.op_id(position++);
    const std::vector<Node*> mine = ops_of<Node>(*part_.graph);
    const std::vector<const Node*> theirs = ops_of<const Node>(*whole_.graph);
    TORCH_INTERNAL_ASSERT(mine.size() == theirs.size(), "stage ", part_.stage, " has ", theirs.size(),
                          " ops whole and ", mine.size(), " in a part");
    for (size_t k = 0; k < mine.size(); ++k)
      TORCH_INTERNAL_ASSERT(mine[k]->kind() == theirs[k]->kind(), "stage ", part_.stage, "'s op ", k,
                            " differs in a part");
    for (size_t k = 0; k < mine.size(); ++k) rewrite(mine[k], theirs[k]);
    std::vector<int64_t> ids;  // inserted constants have none
    for (const Node* n : part_.graph->nodes()) {
      auto it = id_of_.find(n);
      ids.push_back(it == id_of_.end() ? -1 : it->second);
    }
    part_.runner = GraphRunner(part_.graph, std::move(ids));
  }

 private:
  void rewrite(Node* n, const Node* w) {
    if (n->kind() == c10::aten::dropout || n->kind() == c10::aten::dropout_) return rewrite_dropout(n, w);
    if (n->kind() == tp_ops::dropout()) return rewrite_tp_dropout(n, w);
    if (n->kind() == tp_ops::shard_dropout()) return rewrite_shard_dropout(n);
    TORCH_INTERNAL_ASSERT(!draws_random_numbers_when_run(n), n->kind().toQualString(), " in a part of stage ",
                          part_.stage, " draws random numbers");
  }

  // Where the rows run in a dropout's input: -1 when the value does not depend on them.
  int rows_dimension(const Node* n, const Node* w) const {
    return batch_dimension(w->input(0), n->input(0), parts_,
                           std::string("the input of ") + n->kind().toQualString() + " in stage " +
                               std::to_string(part_.stage));
  }

  Value* constant(const c10::IValue& value, Node* before) { return insert_constant(*part_.graph, value, before); }

  // aten::dropout of a whole value: trine_tp::dropout with no tp piece, the
  // whole microbatch's mask and this part's rows of it.
  void rewrite_dropout(Node* n, const Node* w) {
    const int dim = rows_dimension(n, w);
    if (dim < 0) return;  // the same value in every part: the same mask as the whole stage
    Value* x = n->input(0);
    check_in_place_dropout_read_last(n, "sub-microbatches: the in-place dropout in stage " +
                                            std::to_string(part_.stage));
    const auto whole = w->input(0)->type()->expectRef<c10::TensorType>().sizes().concrete_sizes();
    TORCH_INTERNAL_ASSERT(whole, "a dropout input without a traced shape");
    Node* d = insert_op(*part_.graph, tp_ops::dropout(),
                        {x, n->input(1), n->input(2), constant(*whole, n), constant(int64_t{0}, n),
                         constant(int64_t{1}, n), constant(int64_t{0}, n), constant(int64_t{1}, n),
                         constant(int64_t{dim}, n), constant(int64_t{index_}, n), constant(int64_t{parts_}, n)},
                        n->output()->type(), n);
    n->output()->replaceAllUsesWith(d->output());
    id_of_[d] = id_of_.at(n);
    id_of_.erase(n);
    n->destroy();
  }

  // trine_tp::dropout of a split value: the whole microbatch's whole value
  // (its arguments in the whole stage) and this part's rows.
  void rewrite_tp_dropout(Node* n, const Node* w) {
    const int dim = rows_dimension(n, w);
    if (dim < 0) return;
    n->replaceInput(3, constant(*torch::jit::toIValue(w->input(3)), n));
    n->replaceInput(8, constant(int64_t{dim}, n));
    n->replaceInput(9, constant(int64_t{index_}, n));
    n->replaceInput(10, constant(int64_t{parts_}, n));
  }

  // Per-shard dropout: a stream per rank and part.
  void rewrite_shard_dropout(Node* n) {
    const int64_t rank = torch::jit::toIValue(n->input(3))->toInt();
    n->replaceInput(3, constant(rank * parts_ + index_, n));
  }

  StageProgram& part_;
  const StageProgram& whole_;
  int index_, parts_;
  std::unordered_map<const Node*, int64_t> id_of_;  // the ops' ids (runner), which seed their random draws
};

void check_not_batch_norm(const Node* n) {
  if (n->kind() != c10::aten::batch_norm || n->inputs().size() < 6) return;
  const auto training = torch::jit::toIValue(n->input(5));
  TORCH_CHECK(training && training->isBool() && !training->toBool(), "sub-microbatches: the model has a BatchNorm in "
              "training mode (", n->input(1)->debugName(), "), whose statistics are taken over the whole microbatch: a "
              "part of it would normalize by its own rows and train differently; set tensor_parallel.sub_microbatches "
              "to 1");
}

}  // namespace

void check_sub_microbatch_model(const TracedModel& whole, const TracedModel& part, int parts) {
  const std::vector<const Node*> mine = ops_of<const Node>(*part.graph);
  const std::vector<const Node*> theirs = ops_of<const Node>(*whole.graph);
  for (size_t k = 0; k < std::min(mine.size(), theirs.size()); ++k)
    TORCH_CHECK(mine[k]->kind() == theirs[k]->kind(), "sub-microbatches: the model's op ", k, " is ",
                theirs[k]->kind().toQualString(), " traced at a microbatch's rows and ", mine[k]->kind().toQualString(),
                " at 1/", parts, " of them: its graph depends on the batch size; set tensor_parallel.sub_microbatches "
                "to 1");
  TORCH_CHECK(mine.size() == theirs.size(), "sub-microbatches: the model traced at a microbatch's rows has ",
              theirs.size(), " ops, at 1/", parts, " of them ", mine.size(), ": its graph depends on the batch size; "
              "set tensor_parallel.sub_microbatches to 1");
  for (const Node* n : mine) {
    check_not_batch_norm(n);
    const bool dropout = n->kind() == c10::aten::dropout || n->kind() == c10::aten::dropout_;
    TORCH_CHECK(dropout || !draws_random_numbers_when_run(n),
                "sub-microbatches: the model's ", n->kind().toQualString(), " draws random numbers, and only dropout "
                "has a form that draws, for a part of a microbatch, what the whole microbatch would; set "
                "tensor_parallel.sub_microbatches to 1");
  }
}

void make_sub_microbatch_stage(StageProgram& part, const StageProgram& whole, int index, int parts) {
  TORCH_INTERNAL_ASSERT(parts >= 2 && index >= 0 && index < parts, "part ", index, " of ", parts);
  SubMicrobatchRewrite(part, whole, index, parts).run();
}

}  // namespace trine
