// A new empty directory under /tmp for one test (mkdtemp), named after `what`.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

namespace trine::testing {

inline std::string fresh_directory(const std::string& what = "trine") {
  std::string pattern = "/tmp/" + what + "_XXXXXX";
  const char* dir = ::mkdtemp(pattern.data());
  EXPECT_NE(dir, nullptr) << "mkdtemp " << pattern;
  return dir != nullptr ? std::string(dir) : std::string();
}

}  // namespace trine::testing
