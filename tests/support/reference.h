// Test helpers: eager reference runs and relative differences.
#pragma once
#include "trine/frontend/sequential_staged_model.h"
#include "trine/examples/example_tasks.h"

#include <map>
#include <string>
#include <vector>

namespace trine::testing {

// Layers cut into k stages of (nearly) equal layer counts, in order: what the
// partitioner's "uniform" method gives, written here so that tests of the parts
// below the partitioner need not link it.
inline std::vector<int> even_stages(int num_layers, int k) {
  std::vector<int> stage_of_layer(num_layers);
  for (int l = 0; l < num_layers; ++l) stage_of_layer[l] = static_cast<int>(static_cast<int64_t>(l) * k / num_layers);
  return stage_of_layer;
}

// ||a - b|| / ||b|| (0 when both are zero).
inline double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  const double den = b.norm().item<double>();
  const double num = (a - b).norm().item<double>();
  return den == 0 ? num : num / den;
}

// The small GPT most tests use: 2 blocks, hidden 32, seq 8, vocab 64, batch 2.
inline ModelSpec small_gpt_spec(bool tied = false, double dropout = 0.0) {
  ModelSpec s;
  s.layers = 2;
  s.hidden = 32;
  s.heads = 4;
  s.seq_len = 8;
  s.vocab = 64;
  s.batch = 2;
  s.tied = tied;
  s.dropout = dropout;
  return s;
}

struct Reference {
  double loss = 0;
  std::map<std::string, torch::Tensor> grads;  // by parameter name
};

// Loss and gradients of one eager forward/backward of the example model.
inline Reference eager_step(ExampleModel& m, const SampleBatch& batch) {
  m.ptr->zero_grad();
  auto out = [&] {
    std::vector<torch::Tensor> o;
    switch (batch.inputs.size()) {
      case 1: {
        auto v = m.module.any_forward(batch.inputs[0]);
        if (auto* t = v.try_get<torch::Tensor>()) return std::vector<torch::Tensor>{*t};
        break;
      }
      case 2: {
        auto v = m.module.any_forward(batch.inputs[0], batch.inputs[1]);
        auto t = v.get<std::tuple<torch::Tensor, torch::Tensor>>();
        return std::vector<torch::Tensor>{std::get<0>(t), std::get<1>(t)};
      }
    }
    throw std::runtime_error("eager_step: unsupported model signature");
  }();
  auto loss = m.loss(out, batch.targets);
  loss.backward();
  Reference r;
  r.loss = loss.item<double>();
  for (const auto& p : m.ptr->named_parameters())
    if (p.value().grad().defined()) r.grads[p.key()] = p.value().grad().clone();
  return r;
}

}  // namespace trine::testing
