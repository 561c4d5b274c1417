#include "trine/frontend/graph_runner.h"

#include "graph_runner_step.h"
#include "trine/frontend/segment_checkpoint.h"
#include "trine/frontend/unit_replay.h"

#include <ATen/core/ivalue.h>
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <sstream>
#include <unordered_map>

namespace trine {

namespace jit = torch::jit;

uint64_t mix_seed(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

namespace {

c10::Device random_op_device(const jit::Node* node) {
  for (const jit::Value* v : node->outputs())
    if (auto t = v->type()->cast<c10::TensorType>())
      if (t->device()) return *t->device();
  for (const jit::Value* v : node->inputs())
    if (auto t = v->type()->cast<c10::TensorType>())
      if (t->device()) return *t->device();
  return c10::kCPU;
}

std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

}  // namespace

bool draws_random_numbers(const jit::Node* node) {
  if (node->maybeOperator() == nullptr) return false;
  if (node->isNondeterministic()) return true;
  const c10::FunctionSchema* schema = node->maybeSchema();
  if (!schema) return false;
  const auto op = c10::Dispatcher::singleton().findOp({schema->name(), schema->overload_name()});
  return op && op->hasTag(at::Tag::nondeterministic_seeded);
}

bool communicates(const jit::Node* node) {
  const c10::FunctionSchema* schema = node->maybeSchema();
  if (!schema) return false;
  for (const c10::Argument& a : schema->arguments())
    if (a.name() == "group" || a.name() == "group_name") return true;  // not a convolution's "groups"
  return false;
}

GraphRunner::GraphRunner(std::shared_ptr<jit::Graph> graph, std::vector<int64_t> op_ids)
    : graph_(std::move(graph)), op_ids_(std::move(op_ids)) {
  std::unordered_map<const jit::Value*, int> slot;
  auto new_slot = [&](const jit::Value* v) {
    slot[v] = static_cast<int>(num_slots_++);
    return slot[v];
  };
  for (const jit::Value* v : graph_->inputs()) {
    input_slots_.push_back(new_slot(v));
    input_names_.push_back(v->debugName());
    auto tt = v->type()->cast<c10::TensorType>();
    input_shapes_.push_back(tt ? tt->sizes().concrete_sizes() : std::nullopt);
  }
  auto steps = std::make_shared<std::vector<Step>>();
  std::vector<std::pair<int, c10::IValue>> consts;
  int64_t position = 0;
  for (jit::Node* node : graph_->nodes()) {
    const int64_t id = op_id(static_cast<size_t>(position));
    ++position;
    if (node->kind() == jit::prim::Constant) {
      auto value = jit::toIValue(node->output());
      TORCH_INTERNAL_ASSERT(value, "constant without a value");
      consts.emplace_back(new_slot(node->output()), *value);
      continue;
    }
    Step step;
    step.position = static_cast<size_t>(position - 1);
    step.what = node->kind().toQualString();
    for (const jit::Value* v : node->inputs()) {
      auto it = slot.find(v);
      TORCH_INTERNAL_ASSERT(it != slot.end(), "value %", v->debugName(), " used before it is defined");
      step.in.push_back(it->second);
    }
    for (const jit::Value* v : node->outputs()) step.out.push_back(new_slot(v));
    switch (node->kind()) {
      case jit::prim::ListConstruct:
        step.kind = StepKind::ListConstruct;
        step.list_elem = node->output()->type()->expectRef<c10::ListType>().getElementType();
        break;
      case jit::prim::ListUnpack: step.kind = StepKind::ListUnpack; break;
      case jit::prim::TupleConstruct: step.kind = StepKind::TupleConstruct; break;
      case jit::prim::TupleUnpack: step.kind = StepKind::TupleUnpack; break;
      default:
        TORCH_CHECK(node->maybeOperator() != nullptr, "trine cannot run graph node ", step.what,
                    ": no LibTorch operator matches its schema");
        step.op = node->getOperation();
        if (const c10::FunctionSchema* schema = node->maybeSchema())
          for (size_t a = 0; a < schema->arguments().size() && a < step.in.size(); ++a)
            if (const auto* alias = schema->arguments()[a].alias_info(); alias && alias->isWrite())
              step.written.push_back(step.in[a]);
        step.random = draws_random_numbers(node);
        step.communicates = communicates(node);
        step.rng_id = id;
        if (step.random) step.device = random_op_device(node);
    }
    steps->push_back(std::move(step));
  }
  for (const jit::Value* v : graph_->outputs()) output_slots_.push_back(slot.at(v));
  num_nodes_ = static_cast<size_t>(position);
  is_constant_.assign(num_slots_, false);
  for (auto& c : consts) is_constant_[c.first] = true;
  written_.assign(num_slots_, false);
  for (const Step& step : *steps)
    for (int s : step.written) written_[s] = true;

  // Free every computed value after its last use (outputs are never freed), so a
  // run holds no more than eager execution would.
  std::vector<int> last_use(num_slots_, -1);
  for (size_t i = 0; i < steps->size(); ++i)
    for (int s : (*steps)[i].in) last_use[s] = static_cast<int>(i);
  std::vector<bool> keep(num_slots_, false);
  for (int s : output_slots_) keep[s] = true;
  for (auto& c : consts) keep[c.first] = true;
  for (size_t s = 0; s < num_slots_; ++s)
    if (!keep[s] && last_use[s] >= 0) (*steps)[last_use[s]].free_after.push_back(static_cast<int>(s));
  constants_.assign(num_slots_, c10::IValue());
  for (auto& c : consts) constants_[c.first] = std::move(c.second);
  steps_ = std::move(steps);
}

void GraphRunner::run_steps(std::vector<c10::IValue>& slots, size_t begin, size_t end, const RngPolicy& rng) const {
  jit::Stack stack;
  for (size_t i = begin; i < end; ++i) {
    const Step& step = (*steps_)[i];
    stack.clear();
    for (int s : step.in) stack.push_back(slots[s]);
    switch (step.kind) {
      case StepKind::Op:
        if (step.random && rng.mode == RngPolicy::Mode::PerOp) {
          auto gen = at::globalContext().defaultGenerator(step.device);
          std::lock_guard<std::mutex> lock(gen.mutex());
          gen.set_current_seed(mix_seed(mix_seed(rng.seed ^ mix_seed(static_cast<uint64_t>(rng.microbatch))) ^
                                     static_cast<uint64_t>(step.rng_id)));
        }
        step.op(stack);
        break;
      case StepKind::ListConstruct: {
        c10::impl::GenericList list(step.list_elem);
        list.reserve(stack.size());
        for (auto& v : stack) list.push_back(std::move(v));
        stack.clear();
        stack.emplace_back(std::move(list));
        break;
      }
      case StepKind::ListUnpack: {
        auto list = stack.back().toList();
        TORCH_CHECK(list.size() == step.out.size(), "list of ", list.size(), " elements unpacked into ",
                    step.out.size(), " values");
        stack.clear();
        for (size_t i = 0; i < list.size(); ++i) stack.push_back(list.get(i));
        break;
      }
      case StepKind::TupleConstruct: {
        auto tuple = c10::ivalue::Tuple::create(std::vector<c10::IValue>(stack.begin(), stack.end()));
        stack.clear();
        stack.emplace_back(std::move(tuple));
        break;
      }
      case StepKind::TupleUnpack: {
        auto elems = stack.back().toTupleRef().elements().vec();
        stack.assign(elems.begin(), elems.end());
        break;
      }
    }
    TORCH_INTERNAL_ASSERT(stack.size() == step.out.size(), step.what, " produced ", stack.size(),
                          " values, expected ", step.out.size());
    for (size_t i = 0; i < step.out.size(); ++i) slots[step.out[i]] = std::move(stack[i]);
    for (int s : step.free_after) slots[s] = c10::IValue();
  }
}

std::vector<c10::IValue> GraphRunner::run(std::vector<c10::IValue> inputs, const RngPolicy& rng,
                                          const CheckpointPlan* checkpoints,
                                          std::vector<c10::intrusive_ptr<SegmentRun>>* segment_runs) const {
  TORCH_CHECK(graph_, "GraphRunner: no graph");
  TORCH_CHECK(inputs.size() == input_slots_.size(), "graph expects ", input_slots_.size(),
              " inputs, got ", inputs.size());
  std::vector<c10::IValue> slots = constants_;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (const auto& want = input_shapes_[i]) {
      TORCH_CHECK(inputs[i].isTensor(), "input '", input_names_[i], "' must be a tensor");
      const auto got = inputs[i].toTensor().sizes();
      TORCH_CHECK(got.vec() == *want, "input '", input_names_[i], "' has shape ", shape_str(got),
                  " but the model was traced with ", shape_str(*want),
                  ": shapes are fixed when tracing, so trace again with a sample of the new shape");
    }
    slots[input_slots_[i]] = std::move(inputs[i]);
  }
  // Segments and units in step order (they are disjoint); plain steps between.
  std::vector<std::pair<const SegmentPlan*, int>> ranges;  // unit index, or -1 for a segment
  if (checkpoints && at::GradMode::is_enabled()) {
    for (const SegmentPlan& segment : checkpoints->segments) ranges.emplace_back(&segment, -1);
    if (const SavedTensorPolicy* policy = active_saved_tensor_policy(); policy && policy->wants_units())
      for (size_t u = 0; u < checkpoints->units.size(); ++u)
        ranges.emplace_back(&checkpoints->units[u], static_cast<int>(u));
  }
  std::sort(ranges.begin(), ranges.end(), [](const auto& a, const auto& b) { return a.first->begin < b.first->begin; });
  static std::atomic<int64_t> runs{0};
  const int64_t run = runs++;
  std::unordered_map<int, PackSite> made;  // slot -> the unit output it holds
  size_t next = 0;
  for (const auto& [range, unit] : ranges) {
    run_steps(slots, next, range->begin, rng);
    if (unit < 0)
      run_segment(slots, *range, rng, checkpoints->recompute_ns, segment_runs);
    else
      run_unit(slots, *range, unit, rng, run, made);
    next = range->end;
  }
  run_steps(slots, next, steps_->size(), rng);
  std::vector<c10::IValue> outputs;
  outputs.reserve(output_slots_.size());
  for (int s : output_slots_) outputs.push_back(slots[s]);
  return outputs;
}

void GraphRunner::run_unit(std::vector<c10::IValue>& slots, const SegmentPlan& unit, int index, const RngPolicy& rng,
                           int64_t run, std::unordered_map<int, PackSite>& made) const {
  const SavedTensorPolicy* policy = active_saved_tensor_policy();
  auto made_by = [&made](int slot) {
    auto it = made.find(slot);
    return it == made.end() ? PackSite{} : it->second;
  };
  auto replay = UnitReplay::start(*this, unit, index, rng, slots, made_by, run, policy && policy->replays_units());
  const auto t0 = std::chrono::steady_clock::now();
  {
    UnitPackingScope packing(replay);
    run_steps(slots, unit.begin, unit.end, rng);
  }
  replay->set_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  // Its outputs can be made again by running it again, unless some step
  // updates them in place (the rerun would give what they were before).
  if (!replay->replayable()) return;
  for (size_t o = 0; o < unit.outputs.size(); ++o)
    if (!written_[unit.outputs[o]]) made[unit.outputs[o]] = PackSite{replay, -1, static_cast<int>(o)};
}

}  // namespace trine
