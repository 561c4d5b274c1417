// The JSON file of `trine train --config FILE`: which model to train ("model":
// an example model by name and size, or the user's TorchScript file with its
// inputs and loss), on which data ("data": the example's synthetic data, a
// token file, or a tensor file), and every trainer setting (TrainConfig's keys
// at the top level). Read strictly: unknown keys and wrong types are errors
// naming the key. Relative paths are relative to the config file's folder.
// docs/config.md documents every key.
#pragma once
#include "trine/examples/example_tasks.h"
#include "trine/runtime/train_config.h"

#include <string>
#include <vector>

namespace trine::cli {

// One input of the model's forward: the shape of one sample (no batch
// dimension) and its dtype.
struct InputSpec {
  std::vector<int64_t> shape;
  std::string dtype = "float32";  // float32 | float64 | int64
};

struct TorchScriptSpec {
  std::string path;  // empty: the model is an example model
  std::vector<InputSpec> inputs;
  std::string loss;  // a name from runtime/losses.h
};

struct DataSpec {
  std::string kind = "synthetic";  // synthetic | tokens | tensors
  std::string path;                // tokens, tensors
  std::string dtype = "uint16";    // tokens: uint16 | uint32
};

struct JobConfig {
  ModelSpec model;              // an example model
  TorchScriptSpec torchscript;  // or the user's file
  DataSpec data;
  TrainConfig train;

  static JobConfig load(const std::string& path);
  // `dir`: the folder relative paths start from.
  static JobConfig from_json(const nlohmann::json& j, const std::string& dir = ".");
};

}  // namespace trine::cli
