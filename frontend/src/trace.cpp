#include "trine/frontend/trace.h"

#include "trine/frontend/graph_runner.h"

#include <ATen/record_function.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/runtime/operator.h>

#include <cstring>
#include <optional>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

namespace trine {

namespace jit = torch::jit;

const char* to_string(InputKind kind) {
  switch (kind) {
    case InputKind::Data: return "data";
    case InputKind::Target: return "target";
    case InputKind::Parameter: return "parameter";
    case InputKind::Buffer: return "buffer";
  }
  return "?";
}

int64_t TracedModel::count(InputKind kind) const {
  int64_t n = 0;
  for (const auto& in : inputs) n += in.kind == kind;
  return n;
}

int64_t TracedModel::find_input(const std::string& name) const {
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].name == name) return static_cast<int64_t>(i);
    for (const auto& a : inputs[i].aliases)
      if (a == name) return static_cast<int64_t>(i);
  }
  return -1;
}

namespace {

// ---- Detection of values read into C++ while tracing -----------------------
// A traced graph cannot hold control flow: when the forward turns a tensor into
// a C++ number (item(), is_nonzero(), equal(), ...), the branch it takes is
// baked in. That is harmless when the number depends on shapes alone (graphs
// traced in Python carry their shape arithmetic as tensors: aten::size ->
// prim::NumToTensor -> aten::Int), since shapes are fixed per trace. It is
// wrong when the number depends on data, parameters or buffers. LibTorch's C++
// tracer records such reads silently, so we watch the operator calls and look
// at the tensor read: untraced (made from a number, not by a traced op), or
// computed from constants alone, it is a constant of the trace; computed from a
// graph input, it is a data read and the first one is reported.
thread_local std::string g_scalar_read;

// Whether a traced value depends on any input of the graph being traced.
bool depends_on_graph_input(const jit::Value* value) {
  std::vector<const jit::Value*> todo{value};
  std::unordered_set<const jit::Value*> seen{value};
  while (!todo.empty()) {
    const jit::Value* v = todo.back();
    todo.pop_back();
    if (v->node()->kind() == jit::prim::Param) return true;
    for (const jit::Value* in : v->node()->inputs())
      if (seen.insert(in).second) todo.push_back(in);
  }
  return false;
}

bool reads_traced_data(const at::RecordFunction& fn, const std::shared_ptr<jit::tracer::TracingState>& state) {
  for (const c10::IValue& in : fn.inputs()) {
    if (!in.isTensor() || !state->hasValue(in)) continue;  // untraced: made from a number
    if (depends_on_graph_input(state->getValue(in))) return true;
  }
  return false;
}

std::string last_traced_op(const jit::Graph& g) {
  int64_t n = 0;
  const jit::Node* last = nullptr;
  for (const jit::Node* node : g.nodes()) {
    if (node->kind() == jit::prim::Constant) continue;
    ++n;
    last = node;
  }
  if (!last) return " before any op was traced";
  std::ostringstream os;
  os << " right after traced op #" << n - 1 << " (" << last->kind().toQualString() << " -> %"
     << last->output(0)->debugName() << ")";
  return os.str();
}

std::unique_ptr<at::ObserverContext> on_op_start(const at::RecordFunction& fn) {
  static const std::unordered_set<std::string> reads{
      "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::allclose"};
  if (!g_scalar_read.empty() || !reads.count(fn.name())) return nullptr;
  const auto& state = jit::tracer::getTracingState();
  if (!state || !reads_traced_data(fn, state)) return nullptr;
  g_scalar_read = std::string(fn.name()) + last_traced_op(*state->graph);
  return nullptr;
}

class ScalarReadWatch {
 public:
  ScalarReadWatch() {
    g_scalar_read.clear();
    handle_ = at::addThreadLocalCallback(
        at::RecordFunctionCallback(&on_op_start).needsInputs(true).scopes({at::RecordScope::FUNCTION}));
  }
  ~ScalarReadWatch() { at::removeCallback(handle_); }
  std::string take() { return std::exchange(g_scalar_read, {}); }

 private:
  at::CallbackHandle handle_;
};

// ---- Buffers ---------------------------------------------------------------
// Running the model (to trace it, to check the trace, to probe a failing
// TorchScript file) updates buffers such as BatchNorm's running statistics.
// Tracing must not count as training: the values are put back afterwards.
class BufferSnapshot {
 public:
  explicit BufferSnapshot(const NamedTensors& buffers) {
    torch::NoGradGuard no_grad;
    for (const auto& b : buffers) saved_.emplace_back(b.second, b.second.clone());
  }
  ~BufferSnapshot() {
    torch::NoGradGuard no_grad;
    for (auto& [live, copy] : saved_) live.copy_(copy);
  }

 private:
  std::vector<std::pair<torch::Tensor, torch::Tensor>> saved_;
};

// With force_outplace the tracer records an in-place update of a buffer
// (`num_batches_tracked += 1`) as an out-of-place op whose result nobody reads,
// and rebinds the buffer to it. Put the update back in place on the buffer's
// graph input, so that running the graph (or a stage of it) updates the buffer
// held there, once per microbatch, as eager execution would. Updates inside a
// kernel (batch_norm's running statistics) need nothing: the op mutates the
// input tensor it is given.
void restore_inplace_buffer_update(jit::Graph& graph, jit::Value* input, jit::Value* updated,
                                   const std::string& buffer, const std::string& what) {
  jit::Node* node = updated->node();
  const std::string kind = node->kind().toQualString();
  const bool direct = node->inputs().size() >= 1 && node->input(0) == input && node->outputs().size() == 1;
  const c10::Symbol inplace = c10::Symbol::fromQualString(kind + "_");
  jit::Node* replacement = nullptr;
  if (direct && !jit::getAllOperatorsFor(inplace).empty()) {
    replacement = graph.create(inplace, node->inputs(), 1);
    replacement->insertAfter(node);
    replacement->output()->setType(updated->type());
    if (replacement->maybeOperator() == nullptr) {
      replacement->destroy();
      replacement = nullptr;
    }
  }
  TORCH_CHECK(replacement != nullptr, "cannot trace ", what, ": its forward updates buffer '", buffer,
              "' in place through ", kind, direct ? "" : " applied to an earlier update of it",
              ", which trine cannot replay once per microbatch. trine replays single in-place updates of a buffer "
              "that have an in-place ATen op (BatchNorm's num_batches_tracked += 1, running statistics); make the "
              "update one such op, or register the value as a parameter or a plain attribute instead.");
  updated->replaceAllUsesWith(replacement->output());
  node->destroy();
}

// ---- Inputs --------------------------------------------------------------

using ModelOutputs = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)>;

std::vector<GraphInput> collect_inputs(const SampleBatch& sample, const NamedTensors& params,
                                       const NamedTensors& buffers) {
  TORCH_CHECK(!sample.inputs.empty(), "trace: the sample batch has no inputs");
  std::vector<GraphInput> out;
  std::unordered_map<const void*, size_t> seen;
  auto add = [&](const std::string& name, InputKind kind, torch::Tensor t) {
    TORCH_CHECK(t.defined(), "trace: ", to_string(kind), " '", name, "' is an undefined tensor");
    auto it = seen.find(t.unsafeGetTensorImpl());
    if (it != seen.end()) {
      if (kind == InputKind::Parameter || kind == InputKind::Buffer) {
        out[it->second].aliases.push_back(name);  // a tied weight: one input, two names
        return;
      }
      t = t.clone();  // the same tensor given twice as data: the tracer needs distinct tensors
    }
    seen.emplace(t.unsafeGetTensorImpl(), out.size());
    out.push_back(GraphInput{name, kind, t, {}});
  };
  for (size_t i = 0; i < sample.inputs.size(); ++i) add("input" + std::to_string(i), InputKind::Data, sample.inputs[i]);
  for (size_t i = 0; i < sample.targets.size(); ++i) add("target" + std::to_string(i), InputKind::Target, sample.targets[i]);
  for (const auto& p : params) add(p.first, InputKind::Parameter, p.second);
  for (const auto& b : buffers) add(b.first, InputKind::Buffer, b.second);
  return out;
}

std::vector<torch::Tensor> model_step(const ModelOutputs& forward, const LossFn& loss,
                                      const std::vector<torch::Tensor>& data,
                                      const std::vector<torch::Tensor>& targets) {
  auto outs = forward(data);
  TORCH_CHECK(!outs.empty(), "trace: the model returned no tensors");
  if (!loss) return outs;
  auto l = loss(outs, targets);
  TORCH_CHECK(l.defined() && l.dim() == 0, "trace: the loss must be a scalar tensor, got shape ",
              l.defined() ? l.sizes() : c10::IntArrayRef{});
  return {l};
}

// A second sample of the same shapes whose values are the first one's,
// permuted: still valid inputs (token ids stay in range), but different.
SampleBatch permuted(const SampleBatch& s) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(12345);
  auto shuffle = [&](const torch::Tensor& t) {
    auto flat = t.reshape({-1});
    auto perm = torch::randperm(flat.numel(), gen, torch::TensorOptions().dtype(torch::kLong));
    return flat.index_select(0, perm.to(t.device())).view(t.sizes()).clone();
  };
  SampleBatch out;
  for (const auto& t : s.inputs) out.inputs.push_back(shuffle(t));
  for (const auto& t : s.targets) out.targets.push_back(shuffle(t));
  return out;
}

void check_trace(const TracedModel& traced, const ModelOutputs& forward, const LossFn& loss,
                 const SampleBatch& sample, const TraceOptions& opt) {
  const SampleBatch other = permuted(sample);
  torch::NoGradGuard no_grad;
  // The check reseeds the default generator; give the user's stream back after.
  auto gen = at::detail::getDefaultCPUGenerator();
  const auto saved_rng = gen.get_state();
  struct Restore {
    at::Generator gen;
    at::Tensor state;
    ~Restore() { gen.set_state(state); }
  } restore{gen, saved_rng};
  const uint64_t seed = 0x7472696e65ULL;
  torch::manual_seed(seed);
  auto eager = model_step(forward, loss, other.inputs, other.targets);
  std::vector<c10::IValue> in;
  size_t d = 0, t = 0;
  for (const auto& gi : traced.inputs) {
    if (gi.kind == InputKind::Data) in.emplace_back(other.inputs.at(d++));
    else if (gi.kind == InputKind::Target) in.emplace_back(other.targets.at(t++));
    else in.emplace_back(gi.value);
  }
  torch::manual_seed(seed);
  auto graph_out = GraphRunner(traced.graph).run(std::move(in));
  TORCH_CHECK(graph_out.size() == eager.size(), "trace check: the graph has ", graph_out.size(),
              " outputs, the model ", eager.size());
  for (size_t i = 0; i < eager.size(); ++i) {
    const auto g = graph_out[i].toTensor();
    const bool same = g.sizes() == eager[i].sizes() &&
                      (g.is_floating_point() ? torch::allclose(g, eager[i], opt.check_rtol, opt.check_atol)
                                             : torch::equal(g, eager[i]));
    TORCH_CHECK(same, "trace of ", traced.description, " is not faithful: on a second sample (same shapes, "
                "values permuted) output ", i, " of the traced graph differs from the model's. The forward "
                "probably branches on tensor values or sizes that the trace baked in; such control flow "
                "cannot be traced. Make the forward's ops independent of the data, or trace a model "
                "without that branch.");
  }
}

TracedModel trace_impl(const ModelOutputs& forward, const NamedTensors& params, const NamedTensors& buffers,
                       const LossFn& loss, const SampleBatch& sample, const TraceOptions& opt,
                       std::string description) {
  BufferSnapshot untouched(buffers);  // tracing and checking do not train
  TracedModel traced;
  traced.description = std::move(description);
  traced.has_loss = static_cast<bool>(loss);
  traced.inputs = collect_inputs(sample, params, buffers);

  std::unordered_map<const void*, std::string> names;
  jit::Stack stack;
  for (const auto& gi : traced.inputs) {
    names[gi.value.unsafeGetTensorImpl()] = gi.name;
    stack.emplace_back(gi.value);
  }
  const size_t num_data = sample.inputs.size(), num_targets = sample.targets.size();
  // Buffers whose traced value is no longer their graph input once the
  // forward ran were updated in place: their graph input positions. Their new
  // values are returned as extra outputs of the trace (after the model's), so
  // that the tracer's clean-up keeps the ops that compute them.
  std::vector<size_t> rebound;
  size_t model_outputs = 0;
  auto fn = [&](jit::Stack in) {
    std::vector<torch::Tensor> data, targets;
    for (size_t i = 0; i < num_data; ++i) data.push_back(in[i].toTensor());
    for (size_t i = 0; i < num_targets; ++i) targets.push_back(in[num_data + i].toTensor());
    auto outs = model_step(forward, loss, data, targets);
    model_outputs = outs.size();
    const auto& state = jit::tracer::getTracingState();
    for (size_t i = 0; i < traced.inputs.size(); ++i) {
      if (traced.inputs[i].kind != InputKind::Buffer) continue;
      if (state->getValue(traced.inputs[i].value) == state->graph->inputs()[i]) continue;
      rebound.push_back(i);
      outs.push_back(traced.inputs[i].value);
    }
    return jit::Stack(outs.begin(), outs.end());
  };
  auto lookup = [&](const torch::autograd::Variable& v) {
    auto it = names.find(v.unsafeGetTensorImpl());
    return it == names.end() ? std::string() : it->second;
  };
  std::string scalar_read;
  // The tracer's own warnings (e.g. in-place ops on shared memory) are kept
  // with the model rather than printed; the check below tests the trace anyway.
  struct Collect : c10::WarningHandler {
    std::vector<std::string>* out;
    void process(const c10::Warning& w) override { out->push_back(w.msg()); }
  } collect;
  collect.out = &traced.warnings;
  {
    c10::WarningUtils::WarningHandlerGuard warnings(&collect);
    // Record with autograd on: under no-grad some ops are recorded differently.
    torch::AutoGradMode grad_mode(true);
    ScalarReadWatch watch;
    auto result = jit::tracer::trace(std::move(stack), fn, lookup, /*strict=*/true, /*force_outplace=*/true);
    traced.graph = result.first->graph;
    scalar_read = watch.take();
  }
  TORCH_CHECK(scalar_read.empty(), "cannot trace ", traced.description, ": its forward reads a tensor's value "
              "into C++ (", scalar_read, "). Control flow that depends on tensor values cannot be traced: "
              "compute with tensor ops instead (torch::where, masks), or move the branch out of the model.");
  TORCH_INTERNAL_ASSERT(traced.graph->inputs().size() == traced.inputs.size());
  TORCH_INTERNAL_ASSERT(traced.graph->outputs().size() == model_outputs + rebound.size());
  for (size_t k = 0; k < rebound.size(); ++k) {
    const size_t input = rebound[k];
    restore_inplace_buffer_update(*traced.graph, traced.graph->inputs()[input],
                                  traced.graph->outputs()[model_outputs + k], traced.inputs[input].name,
                                  traced.description);
  }
  while (traced.graph->outputs().size() > model_outputs) traced.graph->eraseOutput(model_outputs);
  // Drop ops whose results nobody uses (e.g. an output the loss ignores);
  // in-place updates of buffers (graph inputs) are kept.
  jit::EliminateDeadCode(traced.graph);
  if (opt.check) check_trace(traced, forward, loss, sample, opt);
  return traced;
}

std::vector<torch::Tensor> flatten_outputs(const c10::IValue& v, const std::string& what) {
  if (v.isTensor()) return {v.toTensor()};
  if (v.isTuple() || v.isList()) {
    std::vector<torch::Tensor> out;
    const auto elems = v.isTuple() ? v.toTupleRef().elements().vec() : v.toListRef().vec();
    for (const auto& e : elems) {
      TORCH_CHECK(e.isTensor(), what, " returns a ", v.type()->str(), " with a non-tensor element (",
                  e.type()->str(), "): forward must return tensors");
      out.push_back(e.toTensor());
    }
    return out;
  }
  TORCH_CHECK(false, what, " returns a ", v.type()->str(), ": forward must return a tensor or a tuple/list of tensors");
}

std::vector<torch::Tensor> any_outputs(torch::nn::AnyValue value, const std::string& what) {
  if (auto* t = value.try_get<torch::Tensor>()) return {*t};
  if (auto* v = value.try_get<std::vector<torch::Tensor>>()) return *v;
  if (auto* p = value.try_get<std::tuple<torch::Tensor, torch::Tensor>>()) return {std::get<0>(*p), std::get<1>(*p)};
  if (auto* p = value.try_get<std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>>())
    return {std::get<0>(*p), std::get<1>(*p), std::get<2>(*p)};
  if (auto* p = value.try_get<std::pair<torch::Tensor, torch::Tensor>>()) return {p->first, p->second};
  TORCH_CHECK(false, what, " returns a value of C++ type '", value.type_info().name(),
              "': forward must return a Tensor, a std::vector<Tensor> or a std::tuple of up to 3 Tensors");
}

NamedTensors to_named(const torch::OrderedDict<std::string, torch::Tensor>& dict) {
  NamedTensors out;
  for (const auto& item : dict) out.emplace_back(item.key(), item.value());
  return out;
}

}  // namespace

TracedModel trace(torch::nn::AnyModule module, const LossFn& loss, const SampleBatch& sample,
                  const TraceOptions& options) {
  TORCH_CHECK(!module.is_empty(), "trace: the AnyModule holds no module");
  auto base = module.ptr();
  const std::string what = "module " + base->name();
  ModelOutputs forward = [module, what](const std::vector<torch::Tensor>& in) mutable {
    // AnyModule type-checks the arguments against forward's signature; its
    // variadic call needs the count at compile time.
    auto call = [&]() -> torch::nn::AnyValue {
      switch (in.size()) {
        case 1: return module.any_forward(in[0]);
        case 2: return module.any_forward(in[0], in[1]);
        case 3: return module.any_forward(in[0], in[1], in[2]);
        case 4: return module.any_forward(in[0], in[1], in[2], in[3]);
        case 5: return module.any_forward(in[0], in[1], in[2], in[3], in[4]);
        case 6: return module.any_forward(in[0], in[1], in[2], in[3], in[4], in[5]);
      }
      TORCH_CHECK(false, what, ": trace takes up to 6 inputs for a torch::nn::Module, got ", in.size(),
                  "; wrap the model in a callable to pass more");
    };
    try {
      return any_outputs(call(), what);
    } catch (const c10::Error& e) {
      if (std::strstr(e.what(), "argument(s), but received") == nullptr &&
          std::strstr(e.what(), "Expected argument #") == nullptr)
        throw;
      TORCH_CHECK(false, what, ": its forward does not take the sample batch's ", in.size(), " tensor input(s): ",
                  e.what_without_backtrace());
    }
  };
  return trace_impl(forward, to_named(base->named_parameters()), to_named(base->named_buffers()), loss, sample,
                    options, what);
}

// The smallest number of rows (up to 64) at which a TorchScript module that
// failed on the sample runs, if any: a file made by torch.jit.trace keeps its
// example's batch size in every reshape.
std::optional<int64_t> rows_that_run(torch::jit::Module& module, const SampleBatch& sample,
                                     const NamedTensors& buffers) {
  const int64_t rows = sample.inputs[0].size(0);
  BufferSnapshot untouched(buffers);
  torch::NoGradGuard no_grad;
  for (int64_t r = 1; r <= 64; ++r) {
    if (r == rows) continue;
    const auto pick = torch::arange(r, torch::kLong) % rows;
    std::vector<c10::IValue> args;
    for (const auto& t : sample.inputs) args.emplace_back(t.index_select(0, pick.to(t.device())));
    try {
      module.forward(std::move(args));
      return r;
    } catch (const std::exception&) {  // c10::Error, or the interpreter's own
    }
  }
  return std::nullopt;
}

TracedModel trace(torch::jit::Module module, const LossFn& loss, const SampleBatch& sample,
                  const TraceOptions& options) {
  // A copy sharing the tensors but not the methods' executors: the trace
  // records the module's first run (its profiling run) whatever ran before,
  // so tracing twice (at other sizes: sub-microbatches) records the same ops.
  module = module.clone(true);
  const std::string what = "TorchScript module " + module.type()->name()->qualifiedName();
  NamedTensors params, buffers;
  for (const auto& p : module.named_parameters(true)) params.emplace_back(p.name, p.value);
  for (const auto& b : module.named_buffers(true)) buffers.emplace_back(b.name, b.value);
  std::string forward_error;  // set when the module's own forward fails
  ModelOutputs forward = [module, what, &forward_error](const std::vector<torch::Tensor>& inputs) mutable {
    std::vector<c10::IValue> args(inputs.begin(), inputs.end());
    try {
      return flatten_outputs(module.forward(std::move(args)), what);
    } catch (const c10::Error& e) {
      forward_error = e.what_without_backtrace();
      throw;
    } catch (const std::exception& e) {  // the interpreter's own errors
      forward_error = e.what();
      throw;
    }
  };
  try {
    return trace_impl(forward, params, buffers, loss, sample, options, what);
  } catch (const std::exception&) {
    if (forward_error.empty() || sample.inputs.empty() || sample.inputs[0].dim() == 0) throw;
  }
  const int64_t rows = sample.inputs[0].size(0);
  const auto runs = rows_that_run(module, sample, buffers);
  TORCH_CHECK(!runs, what, " fails on a microbatch of ", rows, " rows but runs on ", *runs, " rows: a file made by "
              "torch.jit.trace keeps the batch size of its example input. Export it with an example input of ", rows,
              " rows (the microbatch: global_batch / (dp x microbatches)), or choose global_batch and microbatches "
              "so that a microbatch has ", *runs, " rows, or make the file with torch.jit.script. The error at ", rows,
              " rows: ", forward_error);
  TORCH_CHECK(false, what, " fails on the sample microbatch (", rows, " rows, first input of shape ",
              sample.inputs[0].sizes(), "): ", forward_error,
              "\nDo the inputs' shapes and dtypes match what the model expects?");
}

TracedModel trace(const ForwardFn& forward, const NamedTensors& parameters, const NamedTensors& buffers,
                  const LossFn& loss, const SampleBatch& sample, const TraceOptions& options) {
  TORCH_CHECK(static_cast<bool>(forward), "trace: empty forward function");
  return trace_impl(forward, parameters, buffers, loss, sample, options, "callable");
}

}  // namespace trine
