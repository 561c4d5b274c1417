// The safetensors format (what Hugging Face transformers writes): an 8-byte
// little-endian header length, a JSON header naming every tensor's dtype,
// shape and byte range, then the raw bytes. trine writes its checkpoints in
// it (docs/design.md §7a).
//
// Writing is atomic (a temporary file beside the target, flushed, synced,
// renamed). Reading maps the file into memory and copies out only the
// tensors (or slices of them) asked for, so a rank that holds a shard of a
// model reads that shard and no more. Every malformed header, unknown dtype
// or range outside the file is an error naming the file and the tensor.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace trine {

struct SafetensorsEntry {
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets in the data section
};

// Writes `tensors` (any device, any layout; names unique) and `metadata`
// (the header's "__metadata__", strings only) to `path`.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  // A CPU tensor of its own (copied out of the mapping).
  torch::Tensor tensor(const std::string& name) const;
  // Rows [start, start + length) of dimension `dim` of the tensor, copied
  // out: only those bytes of the file are touched.
  torch::Tensor slice(const std::string& name, int64_t dim, int64_t start, int64_t length) const;

 private:
  const SafetensorsEntry& entry(const std::string& name) const;
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  const char* data_ = nullptr;  // start of the data section
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// "F32", "BF16", ... and back; throws for dtypes the format lacks.
std::string safetensors_dtype_name(c10::ScalarType dtype);
c10::ScalarType safetensors_dtype(const std::string& name);

}  // namespace trine
