// Tracing a user's model into a TracedModel (docs/design.md §3).
//
// Three kinds of model are accepted: any torch::nn::Module wrapped in an
// AnyModule (its forward takes tensors and returns a Tensor, a
// std::vector<Tensor> or a std::tuple of Tensors), a TorchScript module (e.g.
// from torch::jit::load), or a plain callable together with the named tensors
// it reads. The model runs once on the sample; every ATen op it calls is
// recorded, with in-place ops recorded out of place so that any partition of
// the graph is safe.
//
// Errors (c10::Error with a message that says what and where):
//   - the forward reads a tensor's value into C++ (item(), is_nonzero(), ...),
//     i.e. control flow that depends on data and cannot be traced;
//   - the traced graph does not reproduce the model on a second sample of the
//     same shapes (data-dependent behaviour the first check missed);
//   - the forward returns something that is not tensors;
//   - the loss is not a scalar.
#pragma once
#include "trine/frontend/traced_model.h"

#include <torch/script.h>

#include <utility>

namespace trine {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;
using ForwardFn = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>& inputs)>;

struct TraceOptions {
  // Re-run eager model and traced graph on a second sample (the sample's
  // values permuted) and require equal results. Costs two extra forwards.
  bool check = true;
  double check_rtol = 1e-4;
  double check_atol = 1e-5;
};

// `loss` may be empty: the graph's outputs are then the model's outputs.
TracedModel trace(torch::nn::AnyModule module, const LossFn& loss, const SampleBatch& sample,
                  const TraceOptions& options = {});
TracedModel trace(torch::jit::Module module, const LossFn& loss, const SampleBatch& sample,
                  const TraceOptions& options = {});
TracedModel trace(const ForwardFn& forward, const NamedTensors& parameters, const NamedTensors& buffers,
                  const LossFn& loss, const SampleBatch& sample, const TraceOptions& options = {});

}  // namespace trine
