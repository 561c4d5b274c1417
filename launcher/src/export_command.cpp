// `trine export --checkpoint DIR --out FILE`: the trained model as one file,
// every parameter and buffer whole (tp slices joined) by name. FILE.safetensors
// for Python (safetensors.torch.load_file) and anything that reads the format;
// FILE.pt a dictionary name -> tensor in PyTorch's own format, which plain
// LibTorch loads with torch::pickle_load (runtime/checkpoint.h).
#include "commands.h"

#include "trine/common/files.h"
#include "trine/runtime/checkpoint.h"

#include <cstdio>

namespace trine::cli {

CLI::App* add_export_command(CLI::App& app, ExportArgs& args) {
  auto* cmd = app.add_subcommand("export", "write a checkpoint's model as one file (.safetensors or .pt)");
  cmd->add_option("--checkpoint", args.checkpoint,
                  "a checkpoint directory step-<N>, or a checkpoint.dir (its newest complete checkpoint)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--out", args.out, "FILE.safetensors or FILE.pt, written atomically")->required();
  return cmd;
}

int run_export(const ExportArgs& args) {
  std::string step_dir = args.checkpoint;
  if (!path_exists(step_dir + "/COMPLETE")) {
    step_dir = newest_checkpoint(args.checkpoint);
    TORCH_CHECK(!step_dir.empty(), "'", args.checkpoint, "' holds no complete checkpoint (a directory step-<N> with "
                "COMPLETE in it): give a checkpoint.dir that training wrote to, or one of its step-<N>");
  }
  const auto tensors = checkpoint_parameters(step_dir);
  const size_t slash = args.out.rfind('/');
  if (slash != std::string::npos && slash > 0) make_directories(args.out.substr(0, slash));
  write_model_file(args.out, tensors);
  int64_t bytes = 0;
  for (const auto& [name, t] : tensors) bytes += static_cast<int64_t>(t.nbytes());
  std::printf("exported %zu tensors (%lld bytes) of %s to %s\n", tensors.size(), static_cast<long long>(bytes),
              step_dir.c_str(), args.out.c_str());
  return 0;
}

}  // namespace trine::cli
