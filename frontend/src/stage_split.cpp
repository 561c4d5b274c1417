#include "trine/frontend/stage_split.h"

#include "graph_index.h"

#include <algorithm>
#include <functional>
#include <set>
#include <unordered_map>

namespace trine {

namespace jit = torch::jit;

int check_stage_assignment(const ProxyGraph& proxy, const std::vector<int>& stage_of_layer) {
  const int n = static_cast<int>(proxy.layers.size());
  TORCH_CHECK(static_cast<int>(stage_of_layer.size()) == n, "stage assignment names ", stage_of_layer.size(),
              " layers, but the model has ", n);
  int k = 0;
  for (int l = 0; l < n; ++l) {
    TORCH_CHECK(stage_of_layer[l] >= 0, "layer '", proxy.layers[l].name, "' has no stage (", stage_of_layer[l], ")");
    k = std::max(k, stage_of_layer[l] + 1);
  }
  std::vector<bool> used(k, false);
  for (int s : stage_of_layer) used[s] = true;
  for (int s = 0; s < k; ++s)
    TORCH_CHECK(used[s], "stage ", s, " of ", k, " has no layer: every stage must hold at least one");
  for (const auto& [from, to] : proxy.layer_edges())
    TORCH_CHECK(stage_of_layer[from] <= stage_of_layer[to], "layer '", proxy.layers[from].name, "' (stage ",
                stage_of_layer[from], ") feeds layer '", proxy.layers[to].name, "' (stage ", stage_of_layer[to],
                "): data must flow from a stage to itself or a later one");
  for (int v : proxy.outputs) {
    const int op = proxy.values[v].producer;
    if (op >= 0 && !proxy.ops[op].param_only) {
      const int l = proxy.ops[op].layer;
      TORCH_CHECK(stage_of_layer[l] == k - 1, "the model's output is computed in layer '", proxy.layers[l].name,
                  "' on stage ", stage_of_layer[l], ", but it must be on the last stage (", k - 1, ")");
    }
  }
  return k;
}

namespace {

class StageBuilder {
 public:
  StageBuilder(const TracedModel& model, const ProxyGraph& proxy, const detail::GraphIndex& idx,
               const std::vector<int>& stage_of_op, int stage)
      : model_(model), proxy_(proxy), idx_(idx), stage_of_op_(stage_of_op), prog_() {
    prog_.stage = stage;
    prog_.graph = std::make_shared<jit::Graph>();
  }

  StageProgram build() {
    for (size_t o = 0; o < idx_.ops.size(); ++o)
      if (stage_of_op_[o] == prog_.stage) append(idx_.ops[o], static_cast<int>(o));
    add_outputs();
    for (const auto& [traced, mine] : env_) prog_.source[mine] = traced;
    prog_.runner = GraphRunner(prog_.graph, op_ids_);
    return std::move(prog_);
  }

 private:
  void append(jit::Node* node, int op_id) {
    jit::Node* clone = prog_.graph->createClone(node, [this](jit::Value* v) { return map(v); });
    prog_.graph->appendNode(clone);
    op_ids_.push_back(op_id);
    for (size_t i = 0; i < node->outputs().size(); ++i) env_[node->output(i)] = clone->output(i);
  }

  jit::Value* add_input(jit::Value* v, const StageInput& in, const std::string& name) {
    jit::Value* x = prog_.graph->addInput();
    x->setType(v->type());
    // Debug names may not be plain numbers ("%8"): prefix those.
    const bool numeric = !name.empty() && name.find_first_not_of("0123456789") == std::string::npos;
    x->setDebugName(numeric ? "v" + name : name);
    prog_.inputs.push_back(in);
    return env_[v] = x;
  }

  jit::Value* map(jit::Value* v) {
    auto it = env_.find(v);
    if (it != env_.end()) return it->second;
    const int id = idx_.id(v);
    if (id < 0) {  // a constant: every stage has its own copy
      jit::Node* c = prog_.graph->createClone(v->node(), [](jit::Value*) -> jit::Value* {
        TORCH_INTERNAL_ASSERT(false, "constant with inputs");
      });
      prog_.graph->appendNode(c);
      op_ids_.push_back(-1);
      return env_[v] = c->output();
    }
    const ProxyValue& pv = proxy_.values[id];
    if (pv.input_index >= 0) {
      const GraphInput& gi = model_.inputs[pv.input_index];
      StageInput in;
      in.value = id;
      switch (gi.kind) {
        case InputKind::Data:
        case InputKind::Target: {
          in.kind = gi.kind == InputKind::Data ? StageInput::Kind::Data : StageInput::Kind::Target;
          const auto& list = gi.kind == InputKind::Data ? proxy_.data_inputs : proxy_.target_inputs;
          in.index = static_cast<int>(std::find(list.begin(), list.end(), id) - list.begin());
          break;
        }
        case InputKind::Parameter:
        case InputKind::Buffer:
          in.kind = StageInput::Kind::Parameter;
          for (size_t p = 0; p < proxy_.params.size(); ++p)
            if (proxy_.params[p].value == id) in.index = static_cast<int>(p);
          prog_.params.push_back(in.index);
          break;
      }
      return add_input(v, in, gi.name);
    }
    const ProxyOp& op = proxy_.ops[pv.producer];
    if (op.param_only) {  // recompute here rather than receive
      append(idx_.ops[pv.producer], pv.producer);
      return env_.at(v);
    }
    const int from = stage_of_op_[pv.producer];
    TORCH_INTERNAL_ASSERT(from < prog_.stage, "value %", pv.name, " flows from stage ", from, " back to stage ",
                          prog_.stage);
    TORCH_CHECK(pv.is_tensor, "value %", pv.name, " (", v->type()->str(), ") produced by ", op.kind, " in layer '",
                proxy_.layers[op.layer].name, "' (stage ", from, ") is read on stage ", prog_.stage,
                ": only tensors can cross stage boundaries; put the two layers on one stage");
    StageInput in;
    in.kind = StageInput::Kind::Activation;
    in.value = id;
    in.from_stage = from;
    return add_input(v, in, pv.name);
  }

  void add_outputs() {
    for (size_t o = 0; o < idx_.ops.size(); ++o) {
      if (stage_of_op_[o] != prog_.stage) continue;
      for (int v : proxy_.ops[o].outputs) {
        StageOutput out;
        out.value = v;
        std::set<int> to;
        for (int c : proxy_.values[v].consumers)
          if (stage_of_op_[c] > prog_.stage) to.insert(stage_of_op_[c]);
        out.to_stages.assign(to.begin(), to.end());
        auto pos = std::find(proxy_.outputs.begin(), proxy_.outputs.end(), v);
        if (pos != proxy_.outputs.end()) out.model_output = static_cast<int>(pos - proxy_.outputs.begin());
        if (out.to_stages.empty() && out.model_output < 0) continue;
        prog_.graph->registerOutput(env_.at(idx_.values[v]));
        prog_.outputs.push_back(std::move(out));
      }
    }
  }

  const TracedModel& model_;
  const ProxyGraph& proxy_;
  const detail::GraphIndex& idx_;
  const std::vector<int>& stage_of_op_;
  StageProgram prog_;
  std::unordered_map<const jit::Value*, jit::Value*> env_;
  std::vector<int64_t> op_ids_;
};

}  // namespace

std::vector<StageProgram> split_into_stages(const TracedModel& model, const ProxyGraph& proxy,
                                            const std::vector<int>& stage_of_layer) {
  const int k = check_stage_assignment(proxy, stage_of_layer);
  detail::GraphIndex idx(*model.graph);
  TORCH_CHECK(idx.ops.size() == proxy.ops.size(), "the proxy graph (", proxy.ops.size(),
              " ops) was not built from this traced model (", idx.ops.size(), " ops)");
  // Parameter-only ops belong to no stage (-1): they are cloned where needed.
  std::vector<int> stage_of_op(proxy.ops.size(), -1);
  for (size_t o = 0; o < proxy.ops.size(); ++o)
    if (!proxy.ops[o].param_only) stage_of_op[o] = stage_of_layer[proxy.ops[o].layer];
  std::vector<StageProgram> stages;
  for (int s = 0; s < k; ++s) {
    stages.push_back(StageBuilder(model, proxy, idx, stage_of_op, s).build());
    for (size_t l = 0; l < stage_of_layer.size(); ++l)
      if (stage_of_layer[l] == s) stages.back().layers.push_back(static_cast<int>(l));
  }
  return stages;
}

int batch_dimension(const jit::Value* whole, const jit::Value* part, int parts, const std::string& what) {
  const auto w = whole->type()->cast<c10::TensorType>(), p = part->type()->cast<c10::TensorType>();
  const auto ws = w ? w->sizes().concrete_sizes() : std::nullopt, ps = p ? p->sizes().concrete_sizes() : std::nullopt;
  TORCH_CHECK(ws && ps && ws->size() == ps->size(), "sub-microbatches: ", what, " has no traced shape to split");
  int dim = -1;
  for (size_t d = 0; d < ws->size(); ++d) {
    if ((*ws)[d] == (*ps)[d]) continue;
    TORCH_CHECK(dim < 0 && (*ws)[d] == (*ps)[d] * parts, "sub-microbatches: ", what, " has shape ",
                c10::IntArrayRef(*ws), " for a microbatch and ", c10::IntArrayRef(*ps), " for 1/", parts,
                " of its rows: not one dimension that shrinks ", parts, " times (the batch), so its parts cannot be ",
                "told apart; set tensor_parallel.sub_microbatches to 1");
    dim = static_cast<int>(d);
  }
  return dim;
}

namespace {

int crossing_batch_dimension(const jit::Value* whole, const jit::Value* part, int parts, const std::string& what) {
  const int dim = batch_dimension(whole, part, parts, what);
  TORCH_CHECK(dim >= 0, "sub-microbatches: ", what, " has one shape whatever the rows: it does not carry the batch, "
              "and sub-pipelining splits every value that crosses stages along the batch; set "
              "tensor_parallel.sub_microbatches to 1 (or cut the stages elsewhere)");
  return dim;
}

}  // namespace

CrossingBatchDimensions crossing_batch_dimensions(const StageProgram& whole, const StageProgram& part, int parts) {
  TORCH_INTERNAL_ASSERT(part.stage == whole.stage && part.inputs.size() == whole.inputs.size() &&
                            part.outputs.size() == whole.outputs.size() && part.params == whole.params,
                        "a part of stage ", whole.stage, " that is not the same stage");
  CrossingBatchDimensions dims;
  dims.inputs.assign(whole.inputs.size(), -1);
  dims.outputs.assign(whole.outputs.size(), -1);
  const std::string stage = "stage " + std::to_string(whole.stage);
  for (size_t i = 0; i < whole.inputs.size(); ++i)
    if (whole.inputs[i].kind == StageInput::Kind::Activation)
      dims.inputs[i] = crossing_batch_dimension(whole.graph->inputs()[i], part.graph->inputs()[i], parts,
                                                "the activation " + stage + " receives from stage " +
                                                    std::to_string(whole.inputs[i].from_stage) + " (input " +
                                                    std::to_string(i) + ")");
  for (size_t o = 0; o < whole.outputs.size(); ++o)
    if (whole.outputs[o].model_output != 0)
      dims.outputs[o] = crossing_batch_dimension(whole.graph->outputs()[o], part.graph->outputs()[o], parts,
                                                 "output " + std::to_string(o) + " of " + stage);
  return dims;
}

}  // namespace trine
