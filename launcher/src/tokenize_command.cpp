// `trine tokenize --text FILE --out FILE.bin`: byte-level tokens (one id per
// byte, vocabulary 256) of a text, as a flat uint16 file that `trine train`
// reads with "data": {"kind": "tokens", "dtype": "uint16"}.
#include "commands.h"

#include "trine/common/files.h"

#include <cstdio>
#include <cstring>

namespace trine::cli {

CLI::App* add_tokenize_command(CLI::App& app, TokenizeArgs& args) {
  auto* cmd = app.add_subcommand("tokenize", "turn a text file into byte-level tokens (uint16, vocabulary 256)");
  cmd->add_option("--text", args.text, "the text file")->required()->check(CLI::ExistingFile);
  cmd->add_option("--out", args.out, "the token file to write (atomically)")->required();
  return cmd;
}

int run_tokenize(const TokenizeArgs& args) {
  const std::string text = read_file(args.text);
  TORCH_CHECK(!text.empty(), "text file '", args.text, "' is empty");
  std::string tokens(text.size() * 2, '\0');
  for (size_t i = 0; i < text.size(); ++i) {
    const uint16_t id = static_cast<unsigned char>(text[i]);
    std::memcpy(&tokens[2 * i], &id, 2);
  }
  const size_t slash = args.out.rfind('/');
  if (slash != std::string::npos && slash > 0) make_directories(args.out.substr(0, slash));
  write_file_atomically(args.out, tokens);
  std::printf("%zu tokens (byte-level, vocabulary 256) written to %s\n", text.size(), args.out.c_str());
  return 0;
}

}  // namespace trine::cli
