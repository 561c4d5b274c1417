// Checkpoints that resume, and their export (docs/design.md §7a). A checkpoint of step N is the
// directory `dir/step-<N>` (9 digits):
//   stage-<s>-tp<r>.safetensors  per (stage, tp rank), written by replica 0:
//       "param/<name>" every parameter and buffer the stage holds (its tp
//       slice), "optim/<name>/<key>" its optimizer state (optimizer.h);
//   meta.json   step, skipped steps, layout, seed, optimizer, the plan, and per
//       parameter its whole shape, its tp cut and the stages holding it;
//   COMPLETE    written last.
// Files go into `step-<N>.partial`, each written atomically; after a barrier
// rank 0 writes meta.json and COMPLETE, renames the directory into place and
// keeps the newest `keep`. A crash at any point leaves the earlier
// checkpoints as they were, and resuming only ever reads a directory that
// holds COMPLETE. Resuming reads every tensor by name, joins tp slices and
// cuts them for this layout, so a checkpoint resumes under another dp x pp x tp.
// The step fixes everything else a resumed run needs: the learning rate,
// the data (step s reads batch s) and dropout (seeded per global microbatch).
#pragma once
#include "trine/frontend/proxy_graph.h"
#include "trine/runtime/communicator.h"
#include "trine/runtime/pipeline_executor.h"
#include "trine/runtime/train_config.h"
#include "trine/tensor_parallel/parameter_shards.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace trine {

// What one rank saves and restores, and its place in the job.
struct CheckpointParts {
  const ProxyGraph* proxy = nullptr;
  PipelineExecutor* executor = nullptr;
  torch::optim::Optimizer* optimizer = nullptr;
  const TrainConfig* config = nullptr;
  const std::map<std::string, ParameterShard>* shards = nullptr;  // this layout's tp cut
  int tp_rank = 0, replica = 0, rank = 0;
  Communicator* world = nullptr;
};

struct CheckpointProgress {
  int64_t step = 0;           // steps done
  int64_t skipped_total = 0;  // of which skipped (non-finite)
};

// Collective over the world: every rank calls it after the same step.
// `plan` is the job's StagePlan::to_json().
void write_checkpoint(const CheckpointParts& parts, const CheckpointProgress& progress, const nlohmann::json& plan,
                      const std::string& dir, int keep);

// The newest complete checkpoint under `dir` ("" when there is none).
std::string newest_checkpoint(const std::string& dir);

// Loads this rank's parameters and optimizer state from `step_dir` (errors
// name the directory and the tensor) and returns the progress it holds.
CheckpointProgress read_checkpoint(const CheckpointParts& parts, const std::string& step_dir);

// Every parameter and buffer of the checkpoint in `step_dir`, whole (tp
// slices joined), sorted by name: what `trine export` writes.
std::vector<std::pair<std::string, torch::Tensor>> checkpoint_parameters(const std::string& step_dir);

// Writes `tensors` as one model file, atomically: PATH.safetensors, or
// PATH.pt, a dictionary name -> tensor in PyTorch's format (torch::pickle_save),
// which plain LibTorch reads with torch::pickle_load and Python with
// torch.load(weights_only=False). Other endings are an error naming both.
void write_model_file(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

}  // namespace trine
