// Precompiled header shared by every trine target (see root CMakeLists.txt).
#pragma once
#include <torch/torch.h>
#include <torch/script.h>
#include <torch/csrc/jit/ir/ir.h>
#include <nlohmann/json.hpp>
