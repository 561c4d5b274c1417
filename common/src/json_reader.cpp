#include "trine/common/json_reader.h"

#include <c10/util/Exception.h>

namespace trine {

namespace {

std::string type_of(const nlohmann::json& j) {
  if (j.is_number_integer()) return "an integer";
  if (j.is_number()) return "a number";
  return std::string("a ") + j.type_name();
}

[[noreturn]] void wrong_type(const std::string& where, const char* want, const nlohmann::json& got) {
  TORCH_CHECK(false, where, " must be ", want, ", got ", type_of(got), " (", got.dump(), ")");
}

template <class T>
T convert(const nlohmann::json& j, const std::string& where);

template <>
bool convert(const nlohmann::json& j, const std::string& where) {
  if (!j.is_boolean()) wrong_type(where, "true or false", j);
  return j.get<bool>();
}
template <>
int64_t convert(const nlohmann::json& j, const std::string& where) {
  if (!j.is_number_integer()) wrong_type(where, "an integer", j);
  return j.get<int64_t>();
}
template <>
int convert(const nlohmann::json& j, const std::string& where) {
  const int64_t v = convert<int64_t>(j, where);
  TORCH_CHECK(v >= INT32_MIN && v <= INT32_MAX, where, " is out of range: ", v);
  return static_cast<int>(v);
}
template <>
double convert(const nlohmann::json& j, const std::string& where) {
  if (!j.is_number()) wrong_type(where, "a number", j);
  return j.get<double>();
}
template <>
std::string convert(const nlohmann::json& j, const std::string& where) {
  if (!j.is_string()) wrong_type(where, "a string", j);
  return j.get<std::string>();
}
// A list whose every element converts to E; `what` names the list in messages.
template <class E>
std::vector<E> convert_list(const nlohmann::json& j, const std::string& where, const char* what) {
  if (!j.is_array()) wrong_type(where, what, j);
  std::vector<E> out;
  for (const auto& e : j) out.push_back(convert<E>(e, where + "[]"));
  return out;
}

template <>
std::vector<std::string> convert(const nlohmann::json& j, const std::string& where) {
  return convert_list<std::string>(j, where, "a list of strings");
}
template <>
std::vector<int64_t> convert(const nlohmann::json& j, const std::string& where) {
  return convert_list<int64_t>(j, where, "a list of integers");
}
template <>
std::vector<int> convert(const nlohmann::json& j, const std::string& where) {
  return convert_list<int>(j, where, "a list of integers");
}
template <>
std::vector<double> convert(const nlohmann::json& j, const std::string& where) {
  return convert_list<double>(j, where, "a list of numbers");
}

}  // namespace

JsonObjectReader::JsonObjectReader(const nlohmann::json& j, std::string path) : path_(std::move(path)) {
  if (j.is_null()) {
    j_ = nlohmann::json::object();
    return;
  }
  if (!j.is_object()) wrong_type(path_, "an object ({...})", j);
  j_ = j;
}

bool JsonObjectReader::has(const std::string& key) const { return j_.contains(key); }
bool JsonObjectReader::is_string(const std::string& key) const { return j_.contains(key) && j_.at(key).is_string(); }

const nlohmann::json* JsonObjectReader::find(const std::string& key) {
  asked_.insert(key);
  auto it = j_.find(key);
  return it == j_.end() ? nullptr : &*it;
}

template <class T>
T JsonObjectReader::get(const std::string& key, const T& fallback) {
  const auto* v = find(key);
  return v ? convert<T>(*v, path_ + "." + key) : fallback;
}

template <class T>
T JsonObjectReader::required(const std::string& key) {
  const auto* v = find(key);
  TORCH_CHECK(v, path_, " has no '", key, "', which is required");
  return convert<T>(*v, path_ + "." + key);
}

JsonObjectReader JsonObjectReader::object(const std::string& key) {
  const auto* v = find(key);
  return JsonObjectReader(v ? *v : nlohmann::json(), path_ + "." + key);
}

std::vector<JsonObjectReader> JsonObjectReader::objects(const std::string& key) {
  const auto* v = find(key);
  std::vector<JsonObjectReader> out;
  if (!v) return out;
  if (!v->is_array()) wrong_type(path_ + "." + key, "a list of objects ([{...}, ...])", *v);
  for (size_t i = 0; i < v->size(); ++i)
    out.emplace_back((*v)[i], path_ + "." + key + "[" + std::to_string(i) + "]");
  return out;
}

void JsonObjectReader::finish() const {
  std::string unknown, known;
  for (const auto& [k, v] : j_.items())
    if (!asked_.count(k)) unknown += (unknown.empty() ? "'" : ", '") + k + "'";
  if (unknown.empty()) return;
  for (const auto& k : asked_) known += (known.empty() ? "" : ", ") + k;
  TORCH_CHECK(false, "unknown key ", unknown, " in ", path_, ", known keys: ", known);
}

template bool JsonObjectReader::get(const std::string&, const bool&);
template int JsonObjectReader::get(const std::string&, const int&);
template int64_t JsonObjectReader::get(const std::string&, const int64_t&);
template double JsonObjectReader::get(const std::string&, const double&);
template std::string JsonObjectReader::get(const std::string&, const std::string&);
template std::vector<std::string> JsonObjectReader::get(const std::string&, const std::vector<std::string>&);
template std::vector<int64_t> JsonObjectReader::get(const std::string&, const std::vector<int64_t>&);
template std::vector<double> JsonObjectReader::get(const std::string&, const std::vector<double>&);
template int64_t JsonObjectReader::required(const std::string&);
template std::vector<int64_t> JsonObjectReader::required(const std::string&);
template int JsonObjectReader::required(const std::string&);
template bool JsonObjectReader::required(const std::string&);
template std::vector<int> JsonObjectReader::required(const std::string&);
template double JsonObjectReader::required(const std::string&);
template std::vector<std::string> JsonObjectReader::required(const std::string&);
template std::string JsonObjectReader::required(const std::string&);

}  // namespace trine
