// The example models of examples/ as ready-made training tasks (module, loss,
// deterministic batches), chosen by name and size options: what the `trine`
// command, the tests and the benchmarks train.
#pragma once
#include "trine/frontend/deferred_init.h"
#include "trine/frontend/trace.h"

#include <functional>
#include <memory>
#include <string>

namespace trine {

struct ModelSpec {
  std::string name = "gpt";  // gpt | skip | branch
  int64_t layers = 4;        // GPT blocks, skip-model hidden layers, branch depth
  int64_t hidden = 64;
  int64_t heads = 4;         // GPT only
  int64_t seq_len = 32;      // GPT only
  int64_t vocab = 256;       // GPT only
  int64_t batch = 8;         // microbatch size
  double dropout = 0.0;
  bool tied = false;         // GPT: tie the LM head to the token embedding
  int64_t distinct_layers = 0;  // skip: > 0 = hidden layer i reuses layer (i mod this)'s weights
  uint64_t seed = 0;         // initial weights and data
  // GPT: build with deferred parameters (stand-ins holding no memory,
  // frontend/deferred_init.h), part by part; the trainer then initialises
  // each rank's own with `init` below.
  bool deferred = false;
};

struct ExampleModel {
  torch::nn::AnyModule module;
  std::shared_ptr<torch::nn::Module> ptr;
  LossFn loss;
  std::function<SampleBatch(int64_t step)> batch;  // deterministic per step
  double analytic_flops = 0;                       // forward FLOPs per microbatch; 0 if unknown
  // The model's own initialisation, by parameter name (what a deferred
  // parameter is given; for the GPT normal(0, 0.02) for every matrix, LibTorch's
  // rule for the rest).
  ParameterInit init;
};

// Throws naming the option when the spec is not a valid model.
ExampleModel make_example_model(const ModelSpec& spec);

}  // namespace trine
