// common/: atomic file writes, reading files whole, and strict JSON reading
// whose errors name the key, where it is, and what was expected.
#include "../support/fresh_directory.h"
#include "trine/common/files.h"
#include "trine/common/json_reader.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <dirent.h>
#include <string>
#include <vector>

using namespace trine;

namespace {

std::string fresh_directory() { return trine::testing::fresh_directory("trine_common"); }

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  while (const dirent* e = ::readdir(d))
    if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") names.push_back(e->d_name);
  ::closedir(d);
  return names;
}

// The message of what `f` throws, or "" when it throws nothing.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Files, AtomicWriteReplacesTheFileAndLeavesNothingElse) {
  const std::string dir = fresh_directory();
  const std::string path = dir + "/plan.json";
  write_file_atomically(path, "old");
  write_file_atomically(path, std::string("new\0content", 11));
  EXPECT_EQ(read_file(path), std::string("new\0content", 11));
  EXPECT_EQ(entries(dir), std::vector<std::string>{"plan.json"});  // no temporary left behind
}

TEST(Files, WritingIntoAMissingDirectoryFailsNamingThePath) {
  const std::string path = fresh_directory() + "/no/such/dir/plan.json";
  EXPECT_NE(error_of([&] { write_file_atomically(path, "x"); }).find("cannot write '" + path), std::string::npos);
}

TEST(Files, ReadingAMissingFileFailsNamingIt) {
  EXPECT_NE(error_of([] { read_file("/tmp/trine_no_such_file.json"); }).find("cannot read '/tmp/trine_no_such_file.json'"),
            std::string::npos);
}

TEST(Files, MakeDirectoriesCreatesEveryLevelAndAcceptsExistingOnes) {
  const std::string dir = fresh_directory() + "/a/b/c";
  make_directories(dir);
  make_directories(dir);
  EXPECT_TRUE(entries(dir).empty());
  write_file_atomically(dir + "/f", "x");
  EXPECT_NE(error_of([&] { make_directories(dir + "/f"); }).find("is not a directory"), std::string::npos);
}

TEST(JsonObjectReader, ReadsTypedValuesWithDefaults) {
  auto j = nlohmann::json::parse(R"({"lr": 1, "name": "adamw", "steps": 3, "ids": [1, 2], "on": true,
                                     "optimizer": {"kind": "sgd"}, "stages": [{"layers": [0]}, {"layers": [1, 2]}]})");
  JsonObjectReader r(j, "config");
  EXPECT_EQ(r.get<double>("lr", 0.0), 1.0);  // an integer is a number
  EXPECT_EQ(r.required<std::string>("name"), "adamw");
  EXPECT_EQ(r.get<int>("steps", 0), 3);
  EXPECT_EQ(r.get<int64_t>("absent", 7), 7);
  EXPECT_EQ(r.get<std::vector<int64_t>>("ids", {}), (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(r.get<bool>("on", false));
  auto optimizer = r.object("optimizer");
  EXPECT_EQ(optimizer.path(), "config.optimizer");
  EXPECT_EQ(optimizer.get<std::string>("kind", ""), "sgd");
  optimizer.finish();
  auto stages = r.objects("stages");
  ASSERT_EQ(stages.size(), 2u);
  EXPECT_EQ(stages[1].path(), "config.stages[1]");
  EXPECT_EQ(stages[1].required<std::vector<int>>("layers"), (std::vector<int>{1, 2}));
  r.finish();
  EXPECT_FALSE(JsonObjectReader(nlohmann::json(), "config").has("anything"));  // null reads as {}
}

TEST(JsonObjectReader, UnknownKeysAreNamedWithTheKnownOnes) {
  JsonObjectReader r(nlohmann::json::parse(R"({"lr": 0.1, "learning_rate": 0.1})"), "config.optimizer");
  r.get<double>("lr", 0.0);
  const std::string e = error_of([&] { r.finish(); });
  EXPECT_NE(e.find("unknown key 'learning_rate' in config.optimizer"), std::string::npos) << e;
  EXPECT_NE(e.find("lr"), std::string::npos) << e;
}

TEST(JsonObjectReader, WrongTypesNameTheKeyWhatWasExpectedAndWhatCame) {
  JsonObjectReader r(nlohmann::json::parse(R"({"steps": "four", "ids": [1, "x"], "opt": 3})"), "config");
  EXPECT_NE(error_of([&] { r.get<int>("steps", 0); }).find("config.steps must be an integer, got a string (\"four\")"),
            std::string::npos);
  EXPECT_NE(error_of([&] { r.required<std::vector<int>>("ids"); }).find("config.ids[] must be an integer"),
            std::string::npos);
  EXPECT_NE(error_of([&] { r.object("opt"); }).find("config.opt must be an object"), std::string::npos);
  EXPECT_NE(error_of([&] { r.required<double>("lr"); }).find("config has no 'lr', which is required"),
            std::string::npos);
}
