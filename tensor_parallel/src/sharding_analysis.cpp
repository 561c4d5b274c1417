#include "trine/tensor_parallel/sharding_analysis.h"

#include "parameter_behind.h"
#include "split_through_view.h"
#include "traced_shape.h"

#include <torch/csrc/jit/ir/constants.h>

#include <c10/util/Exception.h>

#include <map>
#include <set>
#include <sstream>

namespace trine {

const char* to_string(LinearDecision::Mode mode) {
  switch (mode) {
    case LinearDecision::Mode::Column: return "column";
    case LinearDecision::Mode::Row: return "row";
    case LinearDecision::Mode::Replicated: return "replicated";
    case LinearDecision::Mode::Vocab: return "vocab";
  }
  return "?";
}

namespace {

using torch::jit::Node;
using torch::jit::Value;
using Mode = LinearDecision::Mode;

bool matches(const std::string& pattern, const std::string& name) {
  // '*' matches any run of characters.
  size_t p = 0, n = 0, star = std::string::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == name[n]) {
      ++p, ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (star != std::string::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}


bool is_tensor(const Value* v) { return v->type()->cast<c10::TensorType>() != nullptr; }

std::optional<int64_t> int_constant(const Value* v) { return torch::jit::constant_as<int64_t>(v); }

// A list of ints: a constant, or a prim::ListConstruct of constants (as
// scripted and Python-traced graphs build them).
std::optional<std::vector<int64_t>> int_list(const Value* v) {
  if (auto c = torch::jit::constant_as<std::vector<int64_t>>(v)) return c;
  if (v->node()->kind() != c10::prim::ListConstruct) return std::nullopt;
  std::vector<int64_t> out;
  for (const Value* item : v->node()->inputs()) {
    const auto i = int_constant(item);
    if (!i) return std::nullopt;
    out.push_back(*i);
  }
  return out;
}

// Elementwise ops whose output follows their (broadcast) tensor inputs.
const std::set<std::string>& elementwise_ops() {
  static const std::set<std::string> ops{
      "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::mul", "aten::mul_", "aten::div", "aten::div_",
      "aten::gelu", "aten::gelu_", "aten::relu", "aten::relu_", "aten::tanh", "aten::tanh_", "aten::sigmoid",
      "aten::silu", "aten::pow", "aten::neg", "aten::exp", "aten::rsub", "aten::masked_fill", "aten::masked_fill_",
      "aten::where", "aten::dropout", "aten::dropout_", "aten::feature_dropout", "aten::clone", "aten::contiguous",
      "aten::to", "aten::detach", "aten::type_as", "aten::erf", "aten::sqrt", "aten::rsqrt", "aten::scalar_tensor",
      "aten::logical_not", "aten::eq", "aten::ne", "aten::lt", "aten::gt", "aten::le", "aten::ge", "aten::abs",
      "aten::log", "aten::sin", "aten::cos", "aten::square"};
  return ops;
}

const std::set<std::string>& view_ops() {
  static const std::set<std::string> ops{"aten::view", "aten::reshape", "aten::_unsafe_view", "aten::flatten",
                                         "aten::unflatten"};
  return ops;
}

struct LinearSite {
  const Node* node = nullptr;
  int input = 0, weight = 1;  // positions of the activation and the weight
  bool weight_is_in_by_out = false;  // addmm/matmul: weight [in, out]; linear: [out, in]
  int param = -1;                    // graph input index of the weight parameter
};

class Propagation {
 public:
  Propagation(const TracedModel& model, int tp, const ShardingOverrides& overrides)
      : model_(model), tp_(tp), overrides_(overrides) {
    find_linears();
    find_embeddings();
  }

  ShardingAnalysis run();

 private:
  void find_linears();
  void find_embeddings();
  void embedding(const Node* n);
  void cross_entropy(const Node* n);
  LinearDecision embedding_decision(const Node* n);
  // The linears other than `linear` that read its weight are all embeddings
  // (a tied LM head), and the weight is stored [out, in] (cut by rows alike).
  bool tied_to_embeddings_only(const LinearSite& linear, const std::vector<const Node*>& readers) const;
  int parameter_behind(const Value* v) const { return trine::parameter_behind(model_, v).input; }
  // One pass over the graph with the current forced decisions; true when it
  // changed a decision (another pass is needed).
  bool pass();
  void visit(const Node* n);
  void linear(const LinearSite& site);
  void elementwise(const Node* n);
  void viewlike(const Node* n);
  void chunk(const Node* n);
  // The value arrives split where `n` cannot take it: revert what split it.
  void conflict(const Value* v, const Node* n, const std::string& why);
  // Every column linear behind `v` cuts its weight in `parts` fused parts;
  // true when that is news (the next pass judges the new cut), false when
  // they are cut so already or another way.
  bool want_blocks(const Value* v, int parts);
  // conflict(), and `n`'s outputs are whole.
  void refuse(const Value* v, const Node* n, const std::string& why);
  const std::string& weight_name(const Node* linear) const;
  void replicate_outputs(const Node* n);
  Placement placement(const Value* v) const;
  void set(const Value* v, Placement p, std::set<const Node*> sources = {});
  // A partial value is made whole before its consumer (one all-reduce).
  void make_whole(const Value* v);
  int rank_of(const Value* v) const;

  const TracedModel& model_;
  int tp_;
  ShardingOverrides overrides_;
  std::vector<LinearSite> linears_;
  std::map<const Node*, size_t> linear_index_;
  std::vector<const Node*> embeddings_;                 // token embeddings (ids from the data)
  std::map<const Node*, std::vector<const Node*>> tied_heads_;  // embedding -> linears sharing its weight
  std::set<const Node*> heads_;                         // linears whose output reaches only a loss
  std::map<const Node*, std::string> forced_;  // linear -> why it is replicated
  std::map<const Node*, int> blocks_;          // column linear -> fused blocks
  // Set when a pass found a linear's fused blocks: the conflicts of that pass
  // came from a layout that was not yet the one to judge, and are forgotten.
  bool blocks_changed_ = false;
  std::set<const Node*> reverted_;             // forced_ entries that came from conflicts
  std::set<const Node*> indivisible_;          // forced_ entries because t does not divide a size
  std::map<const Node*, std::string> embedding_whole_;  // token embedding -> why it is kept whole
  // Per pass:
  std::unordered_map<const Value*, Placement> place_;
  std::unordered_map<const Value*, std::set<const Node*>> sources_;  // column linears whose split reaches it
  std::map<const Node*, Mode> mode_;
  std::set<std::string> reshapes_;
  int allreduces_ = 0;
  bool changed_ = false;
};

void Propagation::find_linears() {
  for (const Node* n : model_.graph->nodes()) {
    const std::string kind = n->kind().toQualString();
    LinearSite s;
    s.node = n;
    if (kind == "aten::linear") {
      s = {n, 0, 1, false, -1};
    } else if (kind == "aten::addmm") {
      s = {n, 1, 2, true, -1};
    } else if (kind == "aten::matmul" || kind == "aten::mm") {
      s = {n, 0, 1, true, -1};
    } else {
      continue;
    }
    s.param = parameter_behind(n->input(s.weight));
    const auto w = traced_shape(n->input(s.weight));
    if (s.param < 0 || !w || w->size() != 2) continue;  // a product of two activations
    linear_index_[n] = linears_.size();
    linears_.push_back(s);
  }
  // A weight read by anything but its one linear stays whole.
  std::map<int, std::vector<const Node*>> readers;
  for (const Node* n : model_.graph->nodes())
    for (const Value* in : n->inputs()) {
      const int p = parameter_behind(in);
      if (p >= 0 && !looks_through(n)) readers[p].push_back(n);
    }
  for (const LinearSite& s : linears_) {
    const auto& r = readers[s.param];
    if (r.size() > 1 && !tied_to_embeddings_only(s, r)) {
      std::string other;
      for (const Node* n : r)
        if (n != s.node) other = n->kind().toQualString();
      forced_[s.node] = "its weight is also read by " + other + " (tied or shared): kept whole";
    }
    const std::string& name = model_.inputs[s.param].name;
    for (const auto& pat : overrides_.replicate)
      if (matches(pat, name)) forced_[s.node] = "forced by tensor_parallel.replicate (--tp-replicate) '" + pat + "'";
  }
}

bool Propagation::tied_to_embeddings_only(const LinearSite& linear, const std::vector<const Node*>& readers) const {
  for (const Node* n : readers)
    if (n != linear.node && n->kind() != c10::aten::embedding) return false;
  const bool transposed = trine::parameter_behind(model_, linear.node->input(linear.weight)).transposed;
  return linear.weight_is_in_by_out == transposed;  // stored [out, in]: rows are the output features
}

// Token embeddings: ids that depend on a data input (not position ids made
// from constants or buffers); and linears whose output flows, through views
// alone, into a loss (heads: kept whole without complaint when t does not
// divide their classes).
void Propagation::find_embeddings() {
  std::set<const Value*> from_data;
  for (size_t i = 0; i < model_.inputs.size(); ++i)
    if (model_.inputs[i].kind == InputKind::Data) from_data.insert(model_.graph->inputs()[i]);
  for (const Node* n : model_.graph->nodes()) {
    bool data = false;
    for (const Value* in : n->inputs()) data = data || from_data.count(in);
    if (data)
      for (const Value* o : n->outputs()) from_data.insert(o);
    if (n->kind() == c10::aten::embedding && from_data.count(n->input(1)) && parameter_behind(n->input(0)) >= 0)
      embeddings_.push_back(n);
  }
  for (const Node* e : embeddings_)
    for (const LinearSite& s : linears_)
      if (s.param == parameter_behind(e->input(0))) tied_heads_[e].push_back(s.node);
  for (const LinearSite& s : linears_) {
    std::vector<const Value*> todo{s.node->output()};
    bool loss_only = true, reaches_loss = false;
    while (!todo.empty() && loss_only) {
      const Value* v = todo.back();
      todo.pop_back();
      for (const torch::jit::Use& use : v->uses()) {
        const std::string kind = use.user->kind().toQualString();
        if (kind == "aten::cross_entropy_loss") {
          reaches_loss = true;
        } else if (view_ops().count(kind) || kind == "aten::contiguous" || kind == "aten::transpose" ||
                   kind == "aten::slice") {
          todo.push_back(use.user->output());
        } else {
          loss_only = false;
        }
      }
    }
    if (loss_only && reaches_loss) heads_.insert(s.node);
  }
}

Placement Propagation::placement(const Value* v) const {
  auto it = place_.find(v);
  return it == place_.end() ? Placement::replicated() : it->second;
}

void Propagation::set(const Value* v, Placement p, std::set<const Node*> sources) {
  place_[v] = p;
  if (p.is_split()) sources_[v] = std::move(sources);
}

int Propagation::rank_of(const Value* v) const {
  const auto s = traced_shape(v);
  return s ? static_cast<int>(s->size()) : -1;
}

void Propagation::conflict(const Value* v, const Node* n, const std::string& why) {
  for (const Node* src : sources_[v]) {
    if (forced_.count(src)) continue;
    for (const auto& pat : overrides_.column)
      TORCH_CHECK(!matches(pat, weight_name(src)), "tensor_parallel.column (--tp-column) '", pat, "' makes '",
                  weight_name(src), "' column-parallel, but its split output reaches ",
                  n ? std::string(n->kind().toQualString()) + " " + why : std::string("the model's output"),
                  ", which needs it whole");
    std::ostringstream os;
    os << "split, its output would reach ";
    if (n)
      os << n->kind().toQualString() << " " << why;
    else
      os << "the model's output, which must be whole";
    os << ": kept whole";
    forced_[src] = os.str();
    reverted_.insert(src);
    if (n && view_ops().count(n->kind().toQualString()))
      indivisible_.insert(src);
    else
      indivisible_.erase(src);
    changed_ = true;
  }
}

bool Propagation::want_blocks(const Value* v, int parts) {
  for (const Node* src : sources_[v])
    if (blocks_.count(src) && blocks_[src] != parts) return false;  // already cut another way
  bool fresh = false;
  for (const Node* src : sources_[v])
    if (!blocks_.count(src)) {
      blocks_[src] = parts;
      blocks_changed_ = changed_ = fresh = true;
    }
  return fresh;
}

void Propagation::refuse(const Value* v, const Node* n, const std::string& why) {
  conflict(v, n, why);
  replicate_outputs(n);
}

const std::string& Propagation::weight_name(const Node* linear) const {
  return model_.inputs[linears_[linear_index_.at(linear)].param].name;
}

void Propagation::make_whole(const Value* v) {
  ++allreduces_;
  place_[v] = Placement::replicated();
}

void Propagation::replicate_outputs(const Node* n) {
  for (const Value* o : n->outputs()) set(o, Placement::replicated());
}

void Propagation::linear(const LinearSite& site) {
  const Node* n = site.node;
  const Value* x = n->input(site.input);
  Placement in = placement(x);
  const std::string& name = model_.inputs[site.param].name;
  auto forced_mode = [&](const std::vector<std::string>& patterns) {
    for (const auto& pat : patterns)
      if (matches(pat, name)) return true;
    return false;
  };
  const bool want_column = forced_mode(overrides_.column), want_row = forced_mode(overrides_.row);
  const int in_rank = rank_of(x), out_rank = rank_of(n->output());
  const auto w = *traced_shape(n->input(site.weight));
  const int64_t out_features = site.weight_is_in_by_out ? w[1] : w[0];
  if (in.is_partial()) {
    make_whole(x);
    in = Placement::replicated();
  }
  Mode mode = Mode::Replicated;
  if (forced_.count(n)) {
    if (in.is_split()) conflict(x, n, "(a replicated linear needs its input whole)");
  } else if (in.is_replicated() && !want_row) {
    const int blocks = blocks_.count(n) ? blocks_[n] : 1;
    if (out_features % (blocks * tp_) == 0) {
      mode = Mode::Column;
    } else {
      forced_[n] = std::to_string(out_features) + " output features do not split in " + std::to_string(blocks) +
                   " x " + std::to_string(tp_) + ": kept whole";
      if (!heads_.count(n)) indivisible_.insert(n);
      changed_ = true;
    }
  } else if (in.is_split() && in.dim == in_rank - 1 && in.blocks == 1 && !want_column) {
    mode = Mode::Row;
  } else if (in.is_split()) {
    conflict(x, n, "(its input is split along dimension " + std::to_string(in.dim) + ", not its features)");
  }
  TORCH_CHECK(!want_column || mode == Mode::Column || forced_.count(n), "tensor_parallel.column (--tp-column) names '",
              name, "', but its input is ", to_string(in), ": a column-parallel linear needs its input whole");
  TORCH_CHECK(!want_row || mode == Mode::Row || forced_.count(n), "tensor_parallel.row (--tp-row) names '", name,
              "', but its input is ", to_string(in), ": a row-parallel linear needs its input split along its ",
              "features (the output of a column-parallel linear)");
  mode_[n] = mode;
  if (mode == Mode::Column)
    set(n->output(), Placement::split(out_rank - 1, blocks_.count(n) ? blocks_[n] : 1), {n});
  else if (mode == Mode::Row)
    make_whole(n->output());  // summed inside the linear, before its bias (stage_sharding.h)
  else
    set(n->output(), Placement::replicated());
}

void Propagation::elementwise(const Node* n) {
  const int out_rank = rank_of(n->output());
  std::optional<Placement> split;
  std::set<const Node*> sources;
  bool partial = false, disagree = false;
  for (const Value* in : n->inputs()) {
    if (!is_tensor(in)) continue;
    const Placement p = placement(in);
    if (p.is_partial()) partial = true;
    if (!p.is_split()) continue;
    const Placement aligned = Placement::split(p.dim + out_rank - rank_of(in), p.blocks);
    if (split && *split != aligned) disagree = true;
    split = aligned;
    sources.insert(sources_[in].begin(), sources_[in].end());
  }
  const std::string kind = n->kind().toQualString();
  const bool sum = kind == "aten::add" || kind == "aten::add_" || kind == "aten::sub" || kind == "aten::sub_";
  if (partial) {
    bool all_partial = true;
    for (const Value* in : n->inputs())
      if (is_tensor(in) && !placement(in).is_partial()) all_partial = false;
    if (sum && all_partial && !split) {
      set(n->output(), Placement::partial());
      return;
    }
    for (const Value* in : n->inputs())
      if (is_tensor(in) && placement(in).is_partial()) make_whole(in);
  }
  if (disagree) {
    for (const Value* in : n->inputs())
      if (is_tensor(in) && placement(in).is_split()) conflict(in, n, "(its inputs are split differently)");
    replicate_outputs(n);
    return;
  }
  for (const Value* o : n->outputs())
    if (is_tensor(o)) split ? set(o, *split, sources) : set(o, Placement::replicated());
}

void Propagation::viewlike(const Node* n) {
  const Value* x = n->input(0);
  const Placement in = placement(x);
  if (in.is_partial()) {
    set(n->output(), in);
    return;
  }
  if (!in.is_split()) return replicate_outputs(n);
  const std::string kind = n->kind().toQualString();
  const int rank = rank_of(x);
  auto dim_arg = [&](int i) {
    auto d = int_constant(n->input(i));
    return d ? static_cast<int>(*d < 0 ? *d + rank : *d) : -1;
  };
  Placement out = in;
  if (kind == "aten::transpose") {
    const int a = dim_arg(1), b = dim_arg(2);
    if (a < 0 || b < 0) return refuse(x, n, "(dimensions not constant)");
    out.dim = in.dim == a ? b : in.dim == b ? a : in.dim;
  } else if (kind == "aten::permute") {
    const auto dims = int_list(n->input(1));
    if (!dims) return refuse(x, n, "(dimensions not constant)");
    for (size_t i = 0; i < dims->size(); ++i)
      if (((*dims)[i] < 0 ? (*dims)[i] + rank : (*dims)[i]) == in.dim) out.dim = static_cast<int>(i);
  } else if (kind == "aten::unsqueeze") {
    const int d = static_cast<int>(*int_constant(n->input(1)) < 0 ? *int_constant(n->input(1)) + rank + 1
                                                                   : *int_constant(n->input(1)));
    out.dim = in.dim >= d ? in.dim + 1 : in.dim;
  } else if (kind == "aten::squeeze" || kind == "aten::select") {
    const int d = n->inputs().size() > 1 ? dim_arg(1) : -1;
    if (d == in.dim || d < 0) return refuse(x, n, "(it removes the split dimension)");
    out.dim = in.dim > d ? in.dim - 1 : in.dim;
  } else if (kind == "aten::slice") {
    if (dim_arg(1) == in.dim) return refuse(x, n, "(it slices the split dimension)");
  } else if (kind == "aten::expand") {
    out.dim = in.dim + rank_of(n->output()) - rank;
  } else {  // view, reshape, flatten, unflatten
    const auto from = traced_shape(x), to = traced_shape(n->output());
    if (!from || !to) return refuse(x, n, "(shapes unknown)");
    const ViewedSplit v = split_through_view(*from, *to, in, tp_);
    if (!v.placement && v.wants_blocks > 1 && want_blocks(x, v.wants_blocks))
      return replicate_outputs(n);  // a fused output: its weight is cut per part, and the next pass looks again
    if (!v.placement) return refuse(x, n, "(" + v.why + ")");
    out = *v.placement;
    std::string shape;
    for (int64_t s : *to) shape += (shape.empty() ? "" : ", ") + std::to_string(s);
    reshapes_.insert(kind + " to [" + shape + "]: dimension " + std::to_string(out.dim) + " of " +
                     std::to_string((*to)[out.dim]) + " becomes " + std::to_string((*to)[out.dim] / tp_) + " per rank");
  }
  set(n->output(), out, sources_[x]);
}

// A token embedding is cut by rows when t divides them and every linear
// tied to it is cut alike; otherwise it stays whole, and so do those linears.
void Propagation::embedding(const Node* n) {
  replicate_outputs(n);  // whole either way: a vocab-parallel lookup sums its ranks' rows inside
  if (!std::count(embeddings_.begin(), embeddings_.end(), n)) return;
  const int param = parameter_behind(n->input(0));
  const std::string& name = model_.inputs[param].name;
  const int64_t rows = model_.inputs[param].value.size(0);
  std::string why;
  for (const auto& pat : overrides_.replicate)
    if (matches(pat, name)) why = "forced by tensor_parallel.replicate (--tp-replicate) '" + pat + "'";
  if (why.empty() && rows % tp_ != 0) why = std::to_string(rows) + " rows do not split in " + std::to_string(tp_);
  const auto sparse = n->inputs().size() > 4 ? torch::jit::constant_as<bool>(n->input(4)) : std::optional<bool>(false);
  const auto by_freq = n->inputs().size() > 3 ? torch::jit::constant_as<bool>(n->input(3)) : std::optional<bool>(false);
  if (why.empty() && (!sparse || *sparse || !by_freq || *by_freq)) why = "sparse or frequency-scaled gradients";
  for (const Node* head : tied_heads_[n])
    if (why.empty() && forced_.count(head)) why = "its tied linear is kept whole (" + forced_[head] + ")";
  if (!why.empty()) {
    embedding_whole_[n] = why;
    for (const Node* head : tied_heads_[n])
      if (!forced_.count(head)) {
        forced_[head] = "its weight is tied to embedding '" + name + "', kept whole (" + why + ")";
        changed_ = true;
      }
    return;
  }
  embedding_whole_.erase(n);
  mode_[n] = Mode::Vocab;
  ++allreduces_;
}

// Cross-entropy over classes split across the ranks (a vocabulary-parallel
// head): computed without gathering them.
void Propagation::cross_entropy(const Node* n) {
  const Value* x = n->input(0);
  const Placement in = placement(x);
  const bool weighted = !n->input(2)->mustBeNone();
  const auto smoothing = n->inputs().size() > 5 ? torch::jit::constant_as<double>(n->input(5)) : std::optional<double>(0);
  if (in.is_split() && in.dim == 1 && in.blocks == 1 && rank_of(x) == 2 && !weighted && smoothing && *smoothing == 0) {
    ++allreduces_;  // each rank's log-sum-exp and the target's logit, per row
    return replicate_outputs(n);
  }
  if (in.is_partial()) make_whole(x);
  if (in.is_split())
    conflict(x, n, "(a vocabulary-parallel loss needs [rows, classes] logits split by class, no class weights and no "
                   "label smoothing)");
  replicate_outputs(n);
}

// chunk / split of a column output into its fused parts (q, k, v).
void Propagation::chunk(const Node* n) {
  const Value* x = n->input(0);
  const Placement in = placement(x);
  const int rank = rank_of(x);
  auto d = int_constant(n->input(2));
  const int dim = d ? static_cast<int>(*d < 0 ? *d + rank : *d) : -1;
  int parts = 0;
  if (n->kind() == c10::aten::chunk) {
    parts = static_cast<int>(int_constant(n->input(1)).value_or(0));
  } else if (auto size = int_constant(n->input(1)); size && traced_shape(x)) {
    parts = static_cast<int>((*traced_shape(x))[dim] / *size);
  }
  Placement element = Placement::replicated();
  if (in.is_partial()) make_whole(x);
  if (in.is_split() && in.dim != dim) element = in;
  if (in.is_split() && in.dim == dim) {
    if (in.blocks == parts) {
      element = Placement::split(dim);
    } else if (!want_blocks(x, parts)) {
      return refuse(x, n, "(its parts are not the fused blocks it was cut in)");
    }
  }
  set(n->output(), element, sources_[x]);  // the list; its unpack gives every part this placement
}

void Propagation::visit(const Node* n) {
  const std::string kind = n->kind().toQualString();
  if (auto it = linear_index_.find(n); it != linear_index_.end()) return linear(linears_[it->second]);
  bool any_tensor_out = false;
  for (const Value* o : n->outputs()) any_tensor_out = any_tensor_out || is_tensor(o);
  if (kind == "prim::ListUnpack") {
    const Placement p = placement(n->input(0));
    for (const Value* o : n->outputs()) set(o, p, sources_[n->input(0)]);
    return;
  }
  if (kind == "aten::chunk" || kind == "aten::split" || kind == "aten::unsafe_chunk") return chunk(n);
  if (kind == "aten::embedding") return embedding(n);
  if (kind == "aten::cross_entropy_loss") return cross_entropy(n);
  if (!any_tensor_out) return;  // sizes, constants, lists of sizes
  if (elementwise_ops().count(kind)) return elementwise(n);
  if (view_ops().count(kind) || kind == "aten::transpose" || kind == "aten::permute" || kind == "aten::unsqueeze" ||
      kind == "aten::squeeze" || kind == "aten::select" || kind == "aten::slice" || kind == "aten::expand")
    return viewlike(n);
  if (kind == "aten::softmax" || kind == "aten::log_softmax") {
    const Placement in = placement(n->input(0));
    if (in.is_partial()) make_whole(n->input(0));
    const int rank = rank_of(n->input(0));
    const auto d = int_constant(n->input(1));
    const int dim = d ? static_cast<int>(*d < 0 ? *d + rank : *d) : -1;
    if (in.is_split() && in.dim == dim) {
      conflict(n->input(0), n, "(it normalizes over the split dimension)");
      return replicate_outputs(n);
    }
    return set(n->output(), placement(n->input(0)), sources_[n->input(0)]);
  }
  if (kind == "aten::layer_norm") {
    const Placement in = placement(n->input(0));
    if (in.is_partial()) make_whole(n->input(0));
    const auto normalized = int_list(n->input(1));
    const int rank = rank_of(n->input(0));
    if (in.is_split() && (!normalized || in.dim >= rank - static_cast<int>(normalized->size()))) {
      conflict(n->input(0), n, "(it normalizes over the split dimension)");
      return replicate_outputs(n);
    }
    return set(n->output(), placement(n->input(0)), sources_[n->input(0)]);
  }
  if (kind == "aten::matmul" || kind == "aten::bmm" || kind == "aten::scaled_dot_product_attention") {
    // Products of activations: split alike along a batch dimension (heads) stays split.
    std::optional<Placement> split;
    std::set<const Node*> sources;
    bool ok = true;
    const int out_rank = rank_of(n->output());
    const size_t operands = kind == "aten::scaled_dot_product_attention" ? 3 : 2;
    for (size_t i = 0; i < n->inputs().size(); ++i) {
      const Value* in = n->input(i);
      if (!is_tensor(in)) continue;
      Placement p = placement(in);
      if (p.is_partial()) {
        make_whole(in);
        p = Placement::replicated();
      }
      if (!p.is_split()) {
        if (i < operands) ok = false;  // every operand must be split alike
        continue;
      }
      const Placement aligned = Placement::split(p.dim + out_rank - rank_of(in), p.blocks);
      if (aligned.dim >= out_rank - 2 || (split && *split != aligned)) ok = false;
      split = aligned;
      sources.insert(sources_[in].begin(), sources_[in].end());
    }
    if (split && !ok) {
      for (const Value* in : n->inputs())
        if (is_tensor(in) && placement(in).is_split()) conflict(in, n, "(its operands are not split alike by head)");
      return replicate_outputs(n);
    }
    return split ? set(n->output(), *split, sources) : replicate_outputs(n);
  }
  // Anything else needs its inputs whole.
  for (const Value* in : n->inputs()) {
    if (!is_tensor(in)) continue;
    if (placement(in).is_partial()) make_whole(in);
    if (placement(in).is_split()) conflict(in, n, "(no rule splits it)");
  }
  replicate_outputs(n);
}

bool Propagation::pass() {
  place_.clear();
  sources_.clear();
  mode_.clear();
  embedding_whole_.clear();
  reshapes_.clear();
  allreduces_ = 0;
  changed_ = blocks_changed_ = false;
  for (const Node* n : model_.graph->nodes()) visit(n);
  for (const Value* o : model_.graph->outputs()) {
    if (placement(o).is_partial()) make_whole(o);
    if (placement(o).is_split()) conflict(o, nullptr, "");
  }
  if (blocks_changed_) {
    for (const Node* n : reverted_) {
      forced_.erase(n);
      indivisible_.erase(n);
    }
    reverted_.clear();
  }
  return changed_;
}

LinearDecision Propagation::embedding_decision(const Node* n) {
  LinearDecision d;
  d.node = n;
  d.weight = model_.inputs[parameter_behind(n->input(0))].name;
  d.mode = mode_.count(n) ? mode_[n] : Mode::Replicated;
  if (d.mode == Mode::Vocab) {
    d.why = "token embedding cut by rows: each rank looks up the ids it holds, one all-reduce sums them";
  } else {
    d.why = embedding_whole_.count(n) ? embedding_whole_[n] : "kept whole";
    d.indivisible = d.why.find("rows do not split") != std::string::npos;
  }
  return d;
}

ShardingAnalysis Propagation::run() {
  ShardingAnalysis a;
  a.tp = tp_;
  const int limit = 4 * static_cast<int>(linears_.size()) + 4;
  while (pass()) TORCH_INTERNAL_ASSERT(++a.passes < limit, "the sharding analysis does not settle");
  ++a.passes;
  // Why, in words: what each column feeds, what each row reads.
  std::map<const Node*, std::set<std::string>> feeds;  // column -> row weights it feeds
  std::map<const Node*, std::set<std::string>> reads;  // row -> column weights it reads
  for (const LinearSite& s : linears_)
    if (mode_[s.node] == Mode::Row)
      for (const Node* src : sources_[s.node->input(s.input)]) {
        feeds[src].insert(model_.inputs[s.param].name);
        reads[s.node].insert(model_.inputs[linears_[linear_index_[src]].param].name);
      }
  auto list = [](const std::set<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
  };
  for (const Node* n : model_.graph->nodes()) {
    if (std::count(embeddings_.begin(), embeddings_.end(), n)) {
      a.linears.push_back(embedding_decision(n));
      continue;
    }
    auto it = linear_index_.find(n);
    if (it == linear_index_.end()) continue;
    const LinearSite& s = linears_[it->second];
    LinearDecision d;
    d.node = s.node;
    d.weight = model_.inputs[s.param].name;
    d.mode = mode_[s.node];
    d.blocks = d.mode == Mode::Column && blocks_.count(s.node) ? blocks_[s.node] : 1;
    d.indivisible = d.mode == Mode::Replicated && indivisible_.count(s.node);
    if (d.mode == Mode::Column)
      d.why = "input whole, output split by features" +
              (feeds[s.node].empty() ? std::string() : " into " + list(feeds[s.node])) +
              (heads_.count(s.node) ? " into the vocabulary-parallel cross-entropy" : "") +
              (d.blocks > 1 ? " (" + std::to_string(d.blocks) + " fused parts cut alike)" : "");
    else if (d.mode == Mode::Row)
      d.why = "input split by features from " + list(reads[s.node]) + ": output summed by one all-reduce";
    else
      d.why = forced_.count(s.node) ? forced_[s.node] : "its input is split along another dimension";
    a.linears.push_back(d);
  }
  a.placements = place_;
  a.forward_allreduces = allreduces_;
  a.reshapes.assign(reshapes_.begin(), reshapes_.end());
  return a;
}

}  // namespace

ShardingAnalysis analyze_sharding(const TracedModel& model, int tp, const ShardingOverrides& overrides) {
  TORCH_CHECK(tp >= 1, "tensor parallelism needs tp >= 1, got ", tp);
  return Propagation(model, tp, overrides).run();
}

void check_tensor_parallel_layout(const ShardingAnalysis& a, const std::string& tp_key,
                                  const std::string& replicate_key) {
  if (a.tp == 1) return;
  std::string indivisible;
  int sharded = 0, listed = 0;
  for (const auto& d : a.linears) {
    if (d.mode != Mode::Replicated) ++sharded;
    if (!d.indivisible) continue;
    if (++listed <= 4) indivisible += "\n  " + d.weight + ": " + d.why;
  }
  if (listed > 4) indivisible += "\n  ... and " + std::to_string(listed - 4) + " more";
  TORCH_CHECK(listed == 0, tp_key, " = ", a.tp, " does not divide what tensor parallelism would cut in ", listed,
              " linear", listed == 1 ? "" : "s", " (their features, or the attention heads of a view):", indivisible,
              "\nuse a tp that divides them, or keep them whole on purpose with ", replicate_key);
  TORCH_CHECK(sharded > 0, tp_key, " = ", a.tp, ", but the model has no linear that tensor parallelism can cut (",
              a.linears.size(), " linears, all kept whole): use tp = 1");
}

std::string sharding_table(const ShardingAnalysis& a) {
  std::ostringstream os;
  size_t width = 6;
  for (const auto& d : a.linears) width = std::max(width, d.weight.size());
  os << "tensor parallel, tp = " << a.tp << ":\n";
  for (const auto& d : a.linears) {
    os << "  " << d.weight << std::string(width - d.weight.size() + 2, ' ') << to_string(d.mode)
       << std::string(12 - std::string(to_string(d.mode)).size(), ' ') << d.why << "\n";
  }
  int column = 0, row = 0, vocab = 0;
  for (const auto& d : a.linears) {
    if (d.mode == LinearDecision::Mode::Column) ++column;
    if (d.mode == LinearDecision::Mode::Row) ++row;
    if (d.mode == LinearDecision::Mode::Vocab) ++vocab;
  }
  os << column << " column-parallel, " << row << " row-parallel, " << vocab << " vocab-parallel, "
     << a.linears.size() - column - row - vocab << " replicated; " << a.forward_allreduces
     << " all-reduces per forward";
  for (const auto& r : a.reshapes) os << "\n  reshape " << r;
  os << "\n";
  return os.str();
}

}  // namespace trine
