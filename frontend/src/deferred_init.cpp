#include "trine/frontend/deferred_init.h"

#include <cmath>
#include <map>
#include <mutex>

namespace trine {

bool is_deferred(const torch::Tensor& t) {
  return t.defined() && t.numel() > 1 && t.has_storage() &&
         t.storage().nbytes() < static_cast<size_t>(t.numel()) * t.element_size();
}

torch::Tensor deferred_tensor(c10::IntArrayRef sizes, const torch::TensorOptions& options) {
  return torch::zeros({1}, options.requires_grad(false)).expand(sizes);
}

namespace {

// Every parameter of `module` and its children, once each (tied ones too).
std::vector<torch::Tensor> all_parameters(const torch::nn::Module& module) {
  std::vector<torch::Tensor> out;
  for (const auto& p : module.parameters(/*recurse=*/true)) out.push_back(p);
  return out;
}

}  // namespace

void defer_parameters(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (torch::Tensor p : all_parameters(module))
    if (p.numel() > 1 && !is_deferred(p)) p.set_data(deferred_tensor(p.sizes(), p.options()));
}

bool has_deferred_parameters(const torch::nn::Module& module) {
  for (const auto& p : all_parameters(module))
    if (is_deferred(p)) return true;
  return false;
}

void move_module(torch::nn::Module& module, c10::Device device) {
  torch::NoGradGuard no_grad;
  for (torch::Tensor p : all_parameters(module))
    p.set_data(is_deferred(p) ? deferred_tensor(p.sizes(), p.options().device(device)) : p.to(device));
  for (torch::Tensor b : module.buffers(/*recurse=*/true)) b.set_data(b.to(device));
}

std::string first_deferred_input(const TracedModel& model) {
  for (const GraphInput& in : model.inputs)
    if (is_deferred(in.value)) return in.name;
  return "";
}

void check_not_deferred(const TracedModel& model, const std::string& what) {
  const std::string name = first_deferred_input(model);
  TORCH_CHECK(name.empty(), what, " runs the model's layers with their weights, but parameter '", name,
              "' is deferred (a stand-in without memory, frontend/deferred_init.h): use analytic costs "
              "(\"partition\": {\"profile\": false}, an explicit \"parallel\" layout, emulate.times from a file), "
              "or build the model with real parameters");
}

// ---- LibTorch's initialisation by module type ---------------------------------

namespace {

using Fill = std::function<void(torch::Tensor&)>;

Fill uniform_by_fan_in(int64_t fan_in) {
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  return [bound](torch::Tensor& t) { t.uniform_(-bound, bound); };
}

Fill kaiming_uniform_sqrt5() {
  return [](torch::Tensor& t) { torch::nn::init::kaiming_uniform_(t, std::sqrt(5.0)); };
}

Fill constant(double v) {
  return [v](torch::Tensor& t) { t.fill_(v); };
}

// Weight and bias of a layer whose bias bound comes from its weight's fan-in.
std::map<std::string, Fill> weight_and_bias(const torch::Tensor& weight) {
  const int64_t fan_in = weight.dim() >= 2 ? weight.numel() / weight.size(0) : 0;
  return {{"weight", kaiming_uniform_sqrt5()}, {"bias", uniform_by_fan_in(fan_in)}};
}

// The fill of each direct parameter of `m`, by its local name; nullopt when
// LibTorch's rule for this kind of module is not known here.
std::optional<std::map<std::string, Fill>> fills_of(const torch::nn::Module& m) {
  if (auto* l = dynamic_cast<const torch::nn::LinearImpl*>(&m)) return weight_and_bias(l->weight);
  if (auto* c = dynamic_cast<const torch::nn::Conv1dImpl*>(&m)) return weight_and_bias(c->weight);
  if (auto* c = dynamic_cast<const torch::nn::Conv2dImpl*>(&m)) return weight_and_bias(c->weight);
  if (auto* c = dynamic_cast<const torch::nn::Conv3dImpl*>(&m)) return weight_and_bias(c->weight);
  if (auto* e = dynamic_cast<const torch::nn::EmbeddingImpl*>(&m)) {
    const auto padding = e->options.padding_idx();
    return std::map<std::string, Fill>{{"weight", [padding](torch::Tensor& t) {
                                          t.normal_(0, 1);
                                          if (padding) t[*padding].zero_();
                                        }}};
  }
  const bool norm = dynamic_cast<const torch::nn::LayerNormImpl*>(&m) ||
                    dynamic_cast<const torch::nn::GroupNormImpl*>(&m) ||
                    dynamic_cast<const torch::nn::BatchNorm1dImpl*>(&m) ||
                    dynamic_cast<const torch::nn::BatchNorm2dImpl*>(&m) ||
                    dynamic_cast<const torch::nn::BatchNorm3dImpl*>(&m);
  if (norm) return std::map<std::string, Fill>{{"weight", constant(1)}, {"bias", constant(0)}};
  return std::nullopt;
}

}  // namespace

ParameterInit torch_default_init(const torch::nn::Module& module) {
  // Parameter name -> its fill, or the type of the module that owns it when no rule is known.
  auto fills = std::make_shared<std::map<std::string, Fill>>();
  auto unknown = std::make_shared<std::map<std::string, std::string>>();
  for (const auto& item : module.named_modules()) {
    const std::string& prefix = item.key();
    const auto known = fills_of(*item.value());
    for (const auto& p : item.value()->named_parameters(/*recurse=*/false)) {
      const std::string name = prefix.empty() ? p.key() : prefix + "." + p.key();
      if (known && known->count(p.key())) (*fills)[name] = known->at(p.key());
      else (*unknown)[name] = item.value()->name();
    }
  }
  return [fills, unknown](const std::string& name, torch::Tensor& whole) {
    auto it = fills->find(name);
    if (it != fills->end()) return it->second(whole);
    auto u = unknown->find(name);
    TORCH_CHECK(u != unknown->end(), "no parameter '", name, "' in the model whose initialisation was asked for");
    TORCH_CHECK(false, "parameter '", name, "' is deferred, but its module (", u->second, ") has no initialisation "
                "rule here (LibTorch's are known for Linear, Conv1d/2d/3d, Embedding, LayerNorm, GroupNorm and "
                "BatchNorm): give the trainer a ParameterInit that fills it, or build that parameter for real");
  };
}

// ---- Initial values -------------------------------------------------------------

namespace {

uint64_t mix(uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t seed_of(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a over the name
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ULL;
  return mix(seed ^ mix(h));
}

std::mutex& generator_turns() {
  static std::mutex m;
  return m;
}

}  // namespace

torch::Tensor initial_value(const ParameterInit& init, const std::string& name, c10::IntArrayRef sizes,
                            c10::ScalarType dtype, uint64_t seed) {
  TORCH_CHECK(init, "parameter '", name, "' is deferred but no ParameterInit was given");
  torch::NoGradGuard no_grad;
  torch::Tensor whole = torch::empty(sizes, torch::TensorOptions(dtype));
  std::lock_guard<std::mutex> turn(generator_turns());
  auto gen = at::detail::getDefaultCPUGenerator();
  const at::Tensor saved = gen.get_state();
  struct Restore {
    at::Generator gen;
    at::Tensor state;
    ~Restore() { gen.set_state(state); }
  } restore{gen, saved};
  torch::manual_seed(seed_of(seed, name));
  init(name, whole);
  TORCH_CHECK(whole.sizes() == sizes && whole.scalar_type() == dtype, "the ParameterInit changed parameter '", name,
              "' to ", whole.scalar_type(), " ", whole.sizes(), " (it must fill the ", dtype, " ", sizes,
              " tensor it is given in place)");
  return whole;
}

}  // namespace trine
