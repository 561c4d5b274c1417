// `trine inspect`: trace a model, print its layers, parameters and costs.
#include "commands.h"

#include <iostream>

namespace trine::cli {

CLI::App* add_inspect_command(CLI::App& app, InspectArgs& args) {
  auto* cmd = app.add_subcommand("inspect", "trace a model and print its layers, parameters and costs");
  add_model_options(cmd, args.model, true);
  cmd->add_option("--json", args.json_out, "also write the proxy graph as JSON");
  return cmd;
}

int run_inspect(const InspectArgs& args) {
  const LoadedModel model = load_model(args.model, /*need_loss=*/false);
  const ProxyGraph proxy = build_proxy_graph(model.traced);
  std::cout << proxy.layer_table();
  for (const auto& w : model.traced.warnings) std::cout << "tracer warning: " << w << "\n";
  if (!args.json_out.empty()) {
    proxy.save(args.json_out);
    std::cout << "proxy graph written to " << args.json_out << "\n";
  }
  return 0;
}

}  // namespace trine::cli
