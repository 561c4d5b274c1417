// `trine inspect`: trace a model, print its layers, parameters and costs.
#include "commands.h"

#include <iostream>

namespace trine::cli {

CLI::App* add_inspect_command(CLI::App& app, InspectArgs& args) {
  auto* cmd = app.add_subcommand("inspect", "trace a model and print its layers, parameters and costs");
  add_model_options(cmd, args.model, true);
  cmd->add_option("--json", args.json_out, "also write the proxy graph as JSON");
  cmd->add_option("--tp", args.tp, "also print, for every linear, its tensor-parallel decision over this many ranks "
                                   "and why")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--tp-column", args.tp_overrides.column, "--tp: force these weights column-parallel ('*' matches "
                                                          "any run of characters; comma-separated)")
      ->delimiter(',');
  cmd->add_option("--tp-row", args.tp_overrides.row, "--tp: force these weights row-parallel")->delimiter(',');
  cmd->add_option("--tp-replicate", args.tp_overrides.replicate, "--tp: keep these weights whole")->delimiter(',');
  return cmd;
}

int run_inspect(const InspectArgs& args) {
  // With --tp the loss is traced too: a vocabulary-parallel head is decided by what reads its logits.
  const LoadedModel model = load_model(args.model, /*need_loss=*/args.tp > 1);
  const ProxyGraph proxy = build_proxy_graph(model.traced);
  std::cout << proxy.layer_table();
  for (const auto& w : model.traced.warnings) std::cout << "tracer warning: " << w << "\n";
  if (args.tp > 1) std::cout << sharding_table(analyze_sharding(model.traced, args.tp, args.tp_overrides));
  if (!args.json_out.empty()) {
    proxy.save(args.json_out);
    std::cout << "proxy graph written to " << args.json_out << "\n";
  }
  return 0;
}

}  // namespace trine::cli
