// Deferred parameters: a model too large for one process is built with
// stand-ins that hold no memory, traced on them, and each rank then allocates
// and initialises only the parameters (and tensor-parallel slices) it holds
// (docs/design.md §3a).
//
// A stand-in has its parameter's shape, dtype and device but is a zero-strided
// view of one zero, so building and tracing the model costs no parameter
// memory, and every CPU kernel runs on it (LibTorch's meta device does not:
// aten::index_select, i.e. every embedding, has no C++ meta kernel, and
// nn::Module::to(kMeta) fails in set_data). A parameter counts as deferred
// when its storage holds fewer bytes than its elements need; anything else is
// a real value, used as it is. (The traced graph's types of views of
// stand-ins show zero strides; types are read for shapes and dtypes only.)
//
// Initial values do not depend on the layout: a deferred parameter's value is
// `init(name, whole)` run on the whole tensor (allocated on the CPU) with the
// default CPU generator seeded from (seed, name), then cut to the rank's
// slice. The same seed, model and init give the same values under every
// dp x pp x tp, and in one process.
#pragma once
#include "trine/frontend/traced_model.h"

#include <torch/torch.h>

#include <functional>
#include <string>

namespace trine {

// Fills `whole` (the parameter's full shape and dtype, on the CPU) with the
// parameter's initial value, drawing from the default CPU generator.
using ParameterInit = std::function<void(const std::string& name, torch::Tensor& whole)>;

// Whether `t` is a stand-in (holds fewer bytes than its elements need).
bool is_deferred(const torch::Tensor& t);
// A stand-in of this shape and these options (dtype, device).
torch::Tensor deferred_tensor(c10::IntArrayRef sizes, const torch::TensorOptions& options);
// Replaces every parameter of `module` (and its children) with a stand-in,
// freeing its memory; requires_grad is kept. Parameters of one element stay
// real (a stand-in could not save anything). Buffers stay as they are.
void defer_parameters(torch::nn::Module& module);
bool has_deferred_parameters(const torch::nn::Module& module);
// Moves `module` to `device`: real parameters and buffers are copied there,
// stand-ins become stand-ins on that device (still holding no memory).
void move_module(torch::nn::Module& module, c10::Device device);

// The first deferred parameter or buffer of a traced model ("" when none):
// what measuring the model (profiling layers or stages) cannot run on.
std::string first_deferred_input(const TracedModel& model);
// Fails naming the first deferred parameter: `what` needs real weights.
void check_not_deferred(const TracedModel& model, const std::string& what);

// LibTorch's own initialisation of the built-in module that owns each
// parameter, by the parameter's name in `module`: Linear and Conv1d/2d/3d
// weights kaiming_uniform(a = sqrt 5) and biases U(+-1/sqrt(fan_in)),
// Embedding N(0, 1) (its padding row 0), LayerNorm, GroupNorm and
// BatchNorm1d/2d/3d weight 1 and bias 0. A parameter of another module is an
// error naming it and its module's type (give the trainer a ParameterInit).
ParameterInit torch_default_init(const torch::nn::Module& module);

// The whole initial value of parameter `name`: a CPU tensor of `sizes` and
// `dtype` filled by `init` under the default CPU generator seeded from
// (seed, name). The generator's state is restored afterwards, and callers on
// several threads take turns.
torch::Tensor initial_value(const ParameterInit& init, const std::string& name, c10::IntArrayRef sizes,
                            c10::ScalarType dtype, uint64_t seed);

}  // namespace trine
