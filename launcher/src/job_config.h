// The JSON file of `trine train --config FILE`: which example model to train
// ("model"), on which data ("data"), and every trainer setting (TrainConfig's
// keys at the top level). Read strictly: unknown keys and wrong types are
// errors naming the key. docs/config.md documents every key.
#pragma once
#include "trine/launcher/example_models.h"
#include "trine/runtime/train_config.h"

#include <string>

namespace trine::cli {

struct JobConfig {
  ModelSpec model;
  std::string data = "synthetic";  // the model's built-in deterministic data; needs no download
  TrainConfig train;

  static JobConfig load(const std::string& path);
  static JobConfig from_json(const nlohmann::json& j);
};

}  // namespace trine::cli
