// Writing files that users keep (plans, graphs, checkpoints): the content goes
// to a temporary file beside the target, is flushed, then renamed over it, so
// readers see the old file or the new one, never a half-written one.
#pragma once
#include <string>

namespace trine {

void write_file_atomically(const std::string& path, const std::string& content);
std::string read_file(const std::string& path);
// `mkdir -p`. POSIX calls, not std::filesystem: the CUDA build links
// libtorch.so, which exports std::filesystem symbols of its own that crash
// when called from code built here (remove_all segfaulted in a test).
void make_directories(const std::string& path);

}  // namespace trine
