#include "step_trace.h"

#include "trine/common/files.h"

#include <nlohmann/json.hpp>

namespace trine {

namespace {

std::string key_of(int rank) { return "trace/" + std::to_string(rank); }

std::string to_json(const std::vector<TimelineEvent>& events) {
  nlohmann::json list = nlohmann::json::array();
  for (const TimelineEvent& e : events)
    list.push_back({e.stage, std::string(1, e.kind), e.name, e.start, e.end, e.compute, e.step});
  return list.dump();
}

void append_events(const std::string& json, int rank, std::vector<TimelineEvent>& out) {
  for (const auto& row : nlohmann::json::parse(json)) {
    TimelineEvent e;
    e.rank = rank;
    e.stage = row[0].get<int>();
    e.kind = row[1].get<std::string>().at(0);
    e.name = row[2].get<std::string>();
    e.start = row[3].get<double>();
    e.end = row[4].get<double>();
    e.compute = row[5].get<double>();
    e.step = row[6].get<int>();
    out.push_back(std::move(e));
  }
}

}  // namespace

size_t write_step_trace(c10d::Store& store, int rank, int world_size, std::vector<TimelineEvent> mine,
                      const std::vector<std::string>& rank_names, const std::string& path,
                      std::chrono::milliseconds timeout) {
  if (rank != 0) {
    const std::string json = to_json(mine);
    store.set(key_of(rank), std::vector<uint8_t>(json.begin(), json.end()));
    return mine.size();
  }
  std::vector<TimelineEvent> all;
  for (auto& e : mine) e.rank = 0;
  all = std::move(mine);
  for (int r = 1; r < world_size; ++r) {
    store.wait({key_of(r)}, timeout);
    const auto bytes = store.get(key_of(r));
    append_events(std::string(bytes.begin(), bytes.end()), r, all);
    store.deleteKey(key_of(r));
  }
  write_file_atomically(path, chrome_trace(all, 1e6, rank_names));
  return all.size();
}

}  // namespace trine
