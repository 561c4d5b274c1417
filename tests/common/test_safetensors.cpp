// common/safetensors.h: what it writes reads back bit for bit, a file laid
// out by the format's specification by hand reads as specified, slices copy
// only their rows, and every malformed file is an error naming it.
#include "../support/fresh_directory.h"
#include "trine/common/files.h"
#include "trine/common/safetensors.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

using namespace trine;

namespace {

std::string fresh_directory() { return trine::testing::fresh_directory("trine_safetensors"); }

std::string little_endian_u64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file as the specification lays it out: length, JSON header, data.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  write_file_atomically(path, little_endian_u64(header.size()) + header + data);
}

void expect_error_containing(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << msg << "\n  lacks: " << p;
  }
}

}  // namespace

TEST(Safetensors, WhatIsWrittenReadsBackBitForBitWithItsMetadata) {
  const std::string path = fresh_directory() + "/model.safetensors";
  torch::manual_seed(0);
  const std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"blocks.0.attn.weight", torch::randn({3, 5})},
      {"blocks.0.attn.bias", torch::randn({5}).to(torch::kBFloat16)},
      {"steps", torch::tensor(7, torch::kInt64)},
      {"mask", torch::tensor({true, false, true})},
      {"half", torch::randn({2, 2}).to(torch::kHalf)},
      {"empty", torch::zeros({0, 4})},
      {"strided", torch::randn({4, 6}).t()}};
  write_safetensors(path, tensors, {{"format", "pt"}, {"step", "12"}});
  const SafetensorsFile f(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("step"), "12");
  ASSERT_EQ(f.entries().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const torch::Tensor back = f.tensor(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(back.sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(back, t)) << name;
  }
  // The data section starts 8-byte aligned, as the format recommends.
  const std::string bytes = read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ((8 + n) % 8, 0u);
}

TEST(Safetensors, ReadsAFileLaidOutByTheSpecification) {
  const std::string path = fresh_directory() + "/spec.safetensors";
  const float values[] = {1.5f, -2.0f, 3.25f, 4.0f};
  const int64_t ids[] = {9, 10};
  std::string data(reinterpret_cast<const char*>(ids), sizeof ids);
  data += std::string(reinterpret_cast<const char*>(values), sizeof values);
  write_raw(path,
            R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]},)"
            R"("ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})",
            data);
  const SafetensorsFile f(path);
  EXPECT_TRUE(torch::equal(f.tensor("w"), torch::tensor({{1.5f, -2.0f}, {3.25f, 4.0f}})));
  EXPECT_TRUE(torch::equal(f.tensor("ids"), torch::tensor({int64_t(9), int64_t(10)})));
  EXPECT_EQ(f.metadata().at("format"), "pt");
}

TEST(Safetensors, SlicesAreTheRowsOfTheWholeTensor) {
  const std::string path = fresh_directory() + "/s.safetensors";
  const auto t = torch::arange(2 * 6 * 4, torch::kFloat32).reshape({2, 6, 4});
  write_safetensors(path, {{"t", t}});
  const SafetensorsFile f(path);
  for (int64_t dim = 0; dim < 3; ++dim)
    for (int64_t start = 0; start < t.size(dim); ++start)
      for (int64_t len = 0; start + len <= t.size(dim); ++len)
        EXPECT_TRUE(torch::equal(f.slice("t", dim, start, len), t.narrow(dim, start, len)))
            << dim << " " << start << " " << len;
  expect_error_containing([&] { f.slice("t", 1, 4, 3); }, {"s.safetensors", "'t'", "dimension 1"});
  expect_error_containing([&] { f.slice("t", 3, 0, 1); }, {"no dimension 3"});
}

TEST(Safetensors, MalformedFilesAreErrorsNamingTheFileAndTheTensor) {
  const std::string dir = fresh_directory();
  write_file_atomically(dir + "/short", "abc");
  expect_error_containing([&] { SafetensorsFile f(dir + "/short"); }, {"short", "not a safetensors file"});
  write_file_atomically(dir + "/long", little_endian_u64(1000) + "{}");
  expect_error_containing([&] { SafetensorsFile f(dir + "/long"); }, {"long", "runs past the end"});
  write_raw(dir + "/json", "{not json", "");
  expect_error_containing([&] { SafetensorsFile f(dir + "/json"); }, {"json", "not JSON"});
  write_raw(dir + "/range", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0'));
  expect_error_containing([&] { SafetensorsFile f(dir + "/range"); }, {"range", "'w'", "outside the data section"});
  write_raw(dir + "/size", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'));
  expect_error_containing([&] { SafetensorsFile f(dir + "/size"); }, {"'w'", "do not hold"});
  write_raw(dir + "/dtype", R"({"w":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", std::string(1, '\0'));
  expect_error_containing([&] { SafetensorsFile f(dir + "/dtype"); }, {"'w'", "F8_E4M3"});
  write_raw(dir + "/ok", R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", std::string(1, '\0'));
  expect_error_containing([&] { SafetensorsFile(dir + "/ok").tensor("v"); }, {"ok", "no tensor named 'v'"});
  expect_error_containing([&] { SafetensorsFile f(dir + "/missing"); }, {"missing"});
  expect_error_containing([&] { write_safetensors(dir + "/x", {{"a", torch::ones(1)}, {"a", torch::ones(1)}}); },
                          {"two tensors named 'a'"});
}

TEST(Files, ListRenameAndRemoveTrees) {
  const std::string dir = fresh_directory();
  EXPECT_TRUE(list_directory(dir + "/none").empty());
  make_directories(dir + "/b/deep/er");
  write_file_atomically(dir + "/b/deep/er/f", "x");
  write_file_atomically(dir + "/a", "y");
  EXPECT_EQ(list_directory(dir), (std::vector<std::string>{"a", "b"}));
  rename_path(dir + "/b", dir + "/c");
  sync_directory(dir);
  EXPECT_EQ(read_file(dir + "/c/deep/er/f"), "x");
  remove_tree(dir + "/c");
  EXPECT_FALSE(path_exists(dir + "/c"));
  EXPECT_TRUE(path_exists(dir + "/a"));
  remove_tree(dir + "/c");  // nothing there: no error
  expect_error_containing([&] { rename_path(dir + "/nope", dir + "/z"); }, {"nope", "cannot rename"});
}
