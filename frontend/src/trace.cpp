#include "trine/frontend/trace.h"

#include "trine/frontend/graph_runner.h"

#include <ATen/record_function.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

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
// baked in. LibTorch's C++ tracer records such reads silently, so we watch the
// operator calls and report the first one, with the last op traced before it.
thread_local std::string g_scalar_read;

std::unique_ptr<at::ObserverContext> on_op_start(const at::RecordFunction& fn) {
  static const std::unordered_set<std::string> reads{
      "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::allclose"};
  if (!g_scalar_read.empty() || !reads.count(fn.name())) return nullptr;
  std::ostringstream os;
  os << fn.name();
  if (const auto& state = jit::tracer::getTracingState()) {
    const auto& g = *state->graph;
    int64_t n = 0;
    const jit::Node* last = nullptr;
    for (const jit::Node* node : g.nodes()) {
      if (node->kind() == jit::prim::Constant) continue;
      ++n;
      last = node;
    }
    if (last)
      os << " right after traced op #" << n - 1 << " (" << last->kind().toQualString() << " -> %"
         << last->output(0)->debugName() << ")";
    else
      os << " before any op was traced";
  }
  g_scalar_read = os.str();
  return nullptr;
}

class ScalarReadWatch {
 public:
  ScalarReadWatch() {
    g_scalar_read.clear();
    handle_ = at::addThreadLocalCallback(
        at::RecordFunctionCallback(&on_op_start).scopes({at::RecordScope::FUNCTION}));
  }
  ~ScalarReadWatch() { at::removeCallback(handle_); }
  std::string take() { return std::exchange(g_scalar_read, {}); }

 private:
  at::CallbackHandle handle_;
};

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
  auto fn = [&](jit::Stack in) {
    std::vector<torch::Tensor> data, targets;
    for (size_t i = 0; i < num_data; ++i) data.push_back(in[i].toTensor());
    for (size_t i = 0; i < num_targets; ++i) targets.push_back(in[num_data + i].toTensor());
    auto outs = model_step(forward, loss, data, targets);
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
  // Drop ops whose results nobody uses (e.g. an output the loss ignores).
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

TracedModel trace(torch::jit::Module module, const LossFn& loss, const SampleBatch& sample,
                  const TraceOptions& options) {
  const std::string what = "TorchScript module " + module.type()->name()->qualifiedName();
  NamedTensors params, buffers;
  for (const auto& p : module.named_parameters(true)) params.emplace_back(p.name, p.value);
  for (const auto& b : module.named_buffers(true)) buffers.emplace_back(b.name, b.value);
  ModelOutputs forward = [module, what](const std::vector<torch::Tensor>& inputs) mutable {
    std::vector<c10::IValue> args(inputs.begin(), inputs.end());
    return flatten_outputs(module.forward(std::move(args)), what);
  };
  return trace_impl(forward, params, buffers, loss, sample, options, what);
}

TracedModel trace(const ForwardFn& forward, const NamedTensors& parameters, const NamedTensors& buffers,
                  const LossFn& loss, const SampleBatch& sample, const TraceOptions& options) {
  TORCH_CHECK(static_cast<bool>(forward), "trace: empty forward function");
  return trace_impl(forward, parameters, buffers, loss, sample, options, "callable");
}

}  // namespace trine
