// The message a call throws (c10::Error, without its backtrace), or "" when
// it returns: for tests that assert what an error says.
#pragma once
#include <c10/util/Exception.h>

#include <functional>
#include <string>

namespace trine::testing {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

}  // namespace trine::testing
