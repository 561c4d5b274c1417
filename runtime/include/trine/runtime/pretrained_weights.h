// Initial weights from a file (config "weights", docs/design.md §7a): a
// safetensors file (what transformers writes) or a TorchScript file, its
// tensors matched to the traced model's parameters and buffers by name.
// From safetensors each rank reads only what it holds: the file is mapped
// into memory and a tensor cut by tensor parallelism is read as its slices
// (the rows of its tp rank), so no rank reads the whole model. A TorchScript
// file is loaded whole on each rank (LibTorch has no partial load). A tensor
// the model has and the file lacks, one the file has and the model lacks, or
// one of another shape is an error naming it and the file, raised on every
// rank before training starts.
#pragma once
#include "trine/runtime/checkpoint.h"

#include <string>

namespace trine {

// Sets the parameters and buffers `parts` names (this rank's stages, its tp
// slices) from `path`. Returns how many bytes it read from the file.
int64_t load_pretrained_weights(const CheckpointParts& parts, const std::string& path);

}  // namespace trine
