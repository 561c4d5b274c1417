#include "trine/common/safetensors.h"

#include "trine/common/files.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <set>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace trine {

namespace {

const std::vector<std::pair<c10::ScalarType, std::string>>& dtype_names() {
  static const std::vector<std::pair<c10::ScalarType, std::string>> names = {
      {c10::ScalarType::Double, "F64"}, {c10::ScalarType::Float, "F32"}, {c10::ScalarType::Half, "F16"},
      {c10::ScalarType::BFloat16, "BF16"}, {c10::ScalarType::Long, "I64"}, {c10::ScalarType::Int, "I32"},
      {c10::ScalarType::Short, "I16"}, {c10::ScalarType::Char, "I8"}, {c10::ScalarType::Byte, "U8"},
      {c10::ScalarType::Bool, "BOOL"}};
  return names;
}

uint64_t numel_of(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

}  // namespace

std::string safetensors_dtype_name(c10::ScalarType dtype) {
  for (const auto& [t, name] : dtype_names())
    if (t == dtype) return name;
  TORCH_CHECK(false, "safetensors cannot hold tensors of dtype ", dtype);
}

c10::ScalarType safetensors_dtype(const std::string& name) {
  for (const auto& [t, n] : dtype_names())
    if (n == name) return t;
  TORCH_CHECK(false, "unknown safetensors dtype \"", name, "\" (trine reads F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> bytes;  // contiguous CPU copies, in file order
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(names.insert(name).second, "writing '", path, "': two tensors named '", name, "'");
    TORCH_CHECK(name != "__metadata__", "writing '", path, "': a tensor cannot be named __metadata__");
    TORCH_CHECK(t.defined(), "writing '", path, "': tensor '", name, "' is undefined");
    bytes.push_back(t.detach().to(torch::kCPU).contiguous());
    const uint64_t size = static_cast<uint64_t>(bytes.back().nbytes());
    header[name] = {{"dtype", safetensors_dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  std::string length(8, '\0');
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);
  std::vector<std::string_view> pieces{length, text};
  for (const auto& b : bytes) pieces.emplace_back(static_cast<const char*>(b.data_ptr()), b.nbytes());
  write_file_atomically(path, pieces);
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  TORCH_CHECK(fd >= 0, "cannot read '", path, "': ", std::strerror(errno));
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  size_ = stat_ok ? static_cast<size_t>(st.st_size) : 0;
  if (stat_ok && size_ > 0) map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  TORCH_CHECK(stat_ok && map_ != MAP_FAILED && map_ != nullptr, "cannot map '", path, "': ",
              size_ == 0 ? "the file is empty" : std::strerror(err));
  const auto* bytes = static_cast<const unsigned char*>(map_);
  TORCH_CHECK(size_ >= 8, "'", path, "' is not a safetensors file: shorter than its 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  TORCH_CHECK(n <= size_ - 8, "'", path, "' is not a safetensors file: its header length ", n,
              " runs past the end of the file (", size_, " bytes)");
  data_ = static_cast<const char*>(map_) + 8 + n;
  const uint64_t data_size = size_ - 8 - n;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(static_cast<const char*>(map_) + 8, static_cast<const char*>(map_) + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, "'", path, "' is not a safetensors file: its header is not JSON (", e.what(), ")");
  }
  TORCH_CHECK(header.is_object(), "'", path, "': the safetensors header is not a JSON object");
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      for (const auto& [k, s] : v.items()) {
        TORCH_CHECK(s.is_string(), "'", path, "': metadata \"", k, "\" is not a string");
        metadata_[k] = s.get<std::string>();
      }
      continue;
    }
    try {
      SafetensorsEntry e;
      e.dtype = safetensors_dtype(v.at("dtype").get<std::string>());
      e.shape = v.at("shape").get<std::vector<int64_t>>();
      const auto range = v.at("data_offsets").get<std::vector<uint64_t>>();
      TORCH_CHECK(range.size() == 2, "data_offsets must hold two numbers");
      e.begin = range[0];
      e.end = range[1];
      for (int64_t d : e.shape) TORCH_CHECK(d >= 0, "a negative dimension");
      TORCH_CHECK(e.begin <= e.end && e.end <= data_size, "bytes [", e.begin, ", ", e.end,
                  ") lie outside the data section of ", data_size, " bytes");
      TORCH_CHECK(e.end - e.begin == numel_of(e.shape) * c10::elementSize(e.dtype), "its ", e.end - e.begin,
                  " bytes do not hold a ", e.dtype, " tensor of shape ", c10::IntArrayRef(e.shape));
      entries_[name] = std::move(e);
    } catch (const nlohmann::json::exception& ex) {
      TORCH_CHECK(false, "'", path, "': tensor '", name, "' has a malformed header entry (", ex.what(), ")");
    } catch (const c10::Error& ex) {
      TORCH_CHECK(false, "'", path, "': tensor '", name, "': ", ex.what_without_backtrace());
    }
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr && map_ != MAP_FAILED) ::munmap(map_, size_);
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  TORCH_CHECK(it != entries_.end(), "'", path_, "' holds no tensor named '", name, "'");
  return it->second;
}

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  auto t = torch::empty(e.shape, torch::TensorOptions(e.dtype));
  if (e.end > e.begin) std::memcpy(t.data_ptr(), data_ + e.begin, e.end - e.begin);
  return t;
}

torch::Tensor SafetensorsFile::slice(const std::string& name, int64_t dim, int64_t start, int64_t length) const {
  const SafetensorsEntry& e = entry(name);
  const int64_t rank = static_cast<int64_t>(e.shape.size());
  TORCH_CHECK(dim >= 0 && dim < rank, "'", path_, "': tensor '", name, "' has no dimension ", dim);
  TORCH_CHECK(start >= 0 && length >= 0 && start + length <= e.shape[dim], "'", path_, "': rows [", start, ", ",
              start + length, ") of dimension ", dim, " lie outside tensor '", name, "' of shape ",
              c10::IntArrayRef(e.shape));
  std::vector<int64_t> shape = e.shape;
  shape[dim] = length;
  auto out = torch::empty(shape, torch::TensorOptions(e.dtype));
  // Row-major: `outer` blocks, each `rows` x `inner` elements, of which the
  // slice takes `length` consecutive rows.
  const size_t item = c10::elementSize(e.dtype);
  size_t outer = 1, inner = item;
  for (int64_t d = 0; d < dim; ++d) outer *= static_cast<size_t>(e.shape[d]);
  for (int64_t d = dim + 1; d < rank; ++d) inner *= static_cast<size_t>(e.shape[d]);
  auto* dst = static_cast<char*>(out.data_ptr());
  const char* src = data_ + e.begin;
  const size_t rows = static_cast<size_t>(e.shape[dim]);
  const size_t take = static_cast<size_t>(length) * inner;
  for (size_t o = 0; o < outer; ++o) std::memcpy(dst + o * take, src + (o * rows + static_cast<size_t>(start)) * inner, take);
  return out;
}

}  // namespace trine
