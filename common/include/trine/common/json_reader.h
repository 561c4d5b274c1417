// Strict reading of JSON objects for configs: every key is looked up by name
// with its expected type, and `finish()` rejects keys nobody asked for, so a
// typo ("learning_rate" for "lr") is an error naming the key, where it is and
// the keys that are known, never a silently ignored setting.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace trine {

class JsonObjectReader {
 public:
  // `path` names the object in messages ("config", "config.optimizer").
  // A null `j` reads as an empty object; anything else but an object is an error.
  JsonObjectReader(const nlohmann::json& j, std::string path);

  bool has(const std::string& key) const;
  bool is_string(const std::string& key) const;  // present and a string
  // The value at `key` (or `fallback` when absent), which must have T's type:
  // bool, int64_t, int, double (integers accepted), std::string, or a vector of strings, ints, int64_ts or doubles.
  template <class T>
  T get(const std::string& key, const T& fallback);
  template <class T>
  T required(const std::string& key);
  // The object at `key` (empty when absent). Its own finish() checks its keys.
  JsonObjectReader object(const std::string& key);
  // The objects of the list at `key` (none when absent), named "path.key[i]".
  std::vector<JsonObjectReader> objects(const std::string& key);
  // Throws naming every key that no get/required/object call asked for.
  void finish() const;
  const std::string& path() const { return path_; }

 private:
  const nlohmann::json* find(const std::string& key);
  nlohmann::json j_;
  std::string path_;
  std::set<std::string> asked_;
};

}  // namespace trine
