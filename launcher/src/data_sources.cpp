#include "data_sources.h"

#include "trine/common/files.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/serialize.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace trine::cli {

namespace {

// A generator for (seed, step): the same on every rank, different per step.
at::Generator step_generator(uint64_t seed, int64_t step) {
  return at::make_generator<at::CPUGeneratorImpl>(seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(step) + 1);
}

}  // namespace

TokenFile::TokenFile(const std::string& path, const std::string& dtype, int64_t seq_len)
    : path_(path), seq_len_(seq_len) {
  TORCH_CHECK(dtype == "uint16" || dtype == "uint32", "config.data.dtype '", dtype,
              "' is unknown; token files hold \"uint16\" (vocabularies up to 65536) or \"uint32\" ids");
  width_ = dtype == "uint16" ? 2 : 4;
  const int fd = ::open(path.c_str(), O_RDONLY);
  TORCH_CHECK(fd >= 0, "cannot open token file '", path, "': ", std::strerror(errno),
              " (make one with `trine tokenize --text FILE --out ", path, "`)");
  struct stat st {};
  ::fstat(fd, &st);
  bytes_ = static_cast<size_t>(st.st_size);
  TORCH_CHECK(bytes_ % width_ == 0, "token file '", path, "' has ", bytes_, " bytes, not a whole number of ", dtype,
              " ids: is config.data.dtype right?");
  count_ = static_cast<int64_t>(bytes_ / width_);
  if (count_ >= seq_len_ + 1) {
    map_ = ::mmap(nullptr, bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map_ == MAP_FAILED) map_ = nullptr;
  }
  ::close(fd);
  TORCH_CHECK(count_ >= seq_len_ + 1, "token file '", path, "' holds ", count_, " tokens, fewer than one window of ",
              seq_len_ + 1, " (the model's sequence length ", seq_len_,
              " + 1 for the next-token targets): use a longer text or a model with a shorter sequence");
  TORCH_CHECK(map_ != nullptr, "cannot memory-map token file '", path, "'");
}

TokenFile::~TokenFile() {
  if (map_) ::munmap(map_, bytes_);
}

int64_t TokenFile::id_at(int64_t i) const {
  return width_ == 2 ? static_cast<const uint16_t*>(map_)[i] : static_cast<const uint32_t*>(map_)[i];
}

void TokenFile::check_ids_below(int64_t vocab, const std::string& what) const {
  for (int64_t i = 0; i < count_; ++i) {
    const int64_t id = id_at(i);
    TORCH_CHECK(id < vocab, "token file '", path_, "' holds id ", id, " at position ", i, ", but the model's vocabulary (",
                what, ") has ", vocab, " entries: tokenize the text with the model's vocabulary, or give the model ",
                "a vocabulary of at least ", id + 1);
  }
}

SampleBatch TokenFile::batch(uint64_t seed, int64_t step, int64_t rows) const {
  auto gen = step_generator(seed, step);
  const auto starts = torch::randint(count_ - seq_len_, {rows}, gen, torch::kLong);
  auto windows = torch::empty({rows, seq_len_ + 1}, torch::kLong);
  auto w = windows.accessor<int64_t, 2>();
  auto s = starts.accessor<int64_t, 1>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t <= seq_len_; ++t) w[r][t] = id_at(s[r] + t);
  return SampleBatch{{windows.narrow(1, 0, seq_len_).contiguous()}, {windows.narrow(1, 1, seq_len_).contiguous()}};
}

TensorFile::TensorFile(const std::string& path) : path_(path) {
  c10::IValue value;
  try {
    const std::string bytes = read_file(path);
    value = torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "cannot read tensor file '", path, "': ", e.what_without_backtrace(),
                "\n(write it in Python with torch.save({\"inputs\": X, \"labels\": Y}, path))");
  }
  TORCH_CHECK(value.isGenericDict(), "tensor file '", path, "' holds a ", value.type()->str(),
              "; expected a dict {\"inputs\": X, \"labels\": Y} as written by torch.save");
  auto dict = value.toGenericDict();
  for (const char* key : {"inputs", "labels"})
    TORCH_CHECK(dict.contains(key) && dict.at(key).isTensor(), "tensor file '", path, "' has no tensor \"", key,
                "\"; expected a dict {\"inputs\": X, \"labels\": Y} as written by torch.save");
  inputs_ = dict.at("inputs").toTensor();
  labels_ = dict.at("labels").toTensor();
  TORCH_CHECK(inputs_.dim() >= 1 && labels_.dim() >= 1 && inputs_.size(0) == labels_.size(0) && inputs_.size(0) > 0,
              "tensor file '", path, "': \"inputs\" ", inputs_.sizes(), " and \"labels\" ", labels_.sizes(),
              " must have the same number of rows (dim 0), at least one");
}

SampleBatch TensorFile::batch(uint64_t seed, int64_t step, int64_t rows) const {
  auto gen = step_generator(seed, step);
  // Without replacement within a step when there are enough rows.
  const auto perm = torch::randperm(inputs_.size(0), gen, torch::kLong);
  const auto idx = rows <= inputs_.size(0) ? perm.narrow(0, 0, rows) : perm.repeat({rows / inputs_.size(0) + 1}).narrow(0, 0, rows);
  return SampleBatch{{inputs_.index_select(0, idx)}, {labels_.index_select(0, idx)}};
}

}  // namespace trine::cli
