// Writing files that users keep (plans, graphs, checkpoints): the content goes
// to a temporary file beside the target, is flushed, then renamed over it, so
// readers see the old file or the new one, never a half-written one.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace trine {

void write_file_atomically(const std::string& path, const std::string& content);
// The same for content in pieces, written in order (no copy of them joined).
void write_file_atomically(const std::string& path, const std::vector<std::string_view>& pieces);
std::string read_file(const std::string& path);
// `mkdir -p`. POSIX calls, not std::filesystem: the CUDA build links
// libtorch.so, which exports std::filesystem symbols of its own that crash
// when called from code built here (remove_all segfaulted in a test).
void make_directories(const std::string& path);
bool path_exists(const std::string& path);
// Whether a file name ends with `suffix` (".safetensors", ".partial").
bool has_suffix(const std::string& name, const std::string& suffix);
// The names in a directory (not "." or ".."), sorted; empty when it does not exist.
std::vector<std::string> list_directory(const std::string& path);
// `rm -rf`; nothing when the path does not exist.
void remove_tree(const std::string& path);
// rename(2), which replaces `to` atomically when it is a file or an empty directory.
void rename_path(const std::string& from, const std::string& to);
// Makes the directory's entries (files created or renamed in it) durable.
void sync_directory(const std::string& path);

}  // namespace trine
