// Command-line options that choose a model (an example model by name and
// size, or a TorchScript file with input shapes) and turn them into a traced
// model with deterministic batches. Shared by the `trine` subcommands.
#pragma once
#include "trine/frontend/trace.h"
#include "trine/examples/example_tasks.h"

#include <CLI/CLI.hpp>
#include <torch/script.h>

#include <functional>
#include <string>
#include <vector>

namespace trine::cli {

struct ModelArgs {
  ModelSpec spec;
  std::string torchscript;          // a TorchScript file instead of an example
  std::vector<std::string> shapes;  // its forward's input shapes, "8,16"
  std::vector<std::string> dtypes;  // float | long, once or per input
  int64_t int_high = 2;             // integer inputs are drawn from [0, int_high)
  std::string loss;                 // a named loss (runtime/losses.h); empty: the stand-in
  int64_t classes = 2;              // targets of a named loss are drawn from [0, classes)
};

void add_model_options(CLI::App* cmd, ModelArgs& args, bool allow_torchscript);

struct LoadedModel {
  TracedModel traced;
  std::function<SampleBatch(int64_t step)> batch;  // deterministic per step
  // TorchScript files come without a loss unless --loss names one; the sum of
  // their floating outputs then stands in so that the backward can be profiled
  // and checked.
  bool stand_in_loss = false;
};

// `need_loss`: trace TorchScript files with the stand-in loss (example models
// always come with their own loss).
LoadedModel load_model(const ModelArgs& args, bool need_loss = true);

// torch::jit::load, with an error that names the file and how to make one.
torch::jit::Module load_torchscript_file(const std::string& path);

// "2GiB", "512MiB", "1.5GB", "1000000" -> bytes; throws naming the option.
int64_t parse_bytes(const std::string& text, const char* option);

}  // namespace trine::cli
