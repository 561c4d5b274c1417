// ProxyGraph queries, the layer table, and JSON (de)serialisation.
#include "trine/frontend/proxy_graph.h"

#include "trine/common/files.h"
#include "trine/common/json_reader.h"

#include <cstdio>
#include <set>
#include <sstream>

namespace trine {

using nlohmann::json;

double ProxyGraph::total_flops() const {
  double f = 0;
  for (const auto& op : ops) f += op.flops;
  return f;
}

int64_t ProxyGraph::total_param_bytes() const {
  int64_t b = 0;
  for (const auto& p : params) b += p.bytes;
  return b;
}

int64_t ProxyGraph::total_activation_bytes() const {
  int64_t b = 0;
  for (const auto& op : ops) b += op.activation_bytes;
  return b;
}

std::vector<std::pair<int, int>> ProxyGraph::layer_edges() const {
  std::set<std::pair<int, int>> edges;
  for (const auto& op : ops)
    for (int v : op.inputs) {
      const int p = values[v].producer;
      if (p >= 0 && !ops[p].param_only && ops[p].layer != op.layer) edges.emplace(ops[p].layer, op.layer);
    }
  return {edges.begin(), edges.end()};
}

int ProxyGraph::find_layer(const std::string& name) const {
  for (size_t l = 0; l < layers.size(); ++l)
    if (layers[l].name == name) return static_cast<int>(l);
  return -1;
}

int ProxyGraph::find_param(const std::string& name) const {
  for (size_t p = 0; p < params.size(); ++p) {
    if (params[p].name == name) return static_cast<int>(p);
    for (const auto& a : params[p].aliases)
      if (a == name) return static_cast<int>(p);
  }
  return -1;
}

namespace {

std::string si(double x, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T", "P"};
  int i = 0;
  while (x >= 1000.0 && i < 5) {
    x /= 1000.0;
    ++i;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, i == 0 ? "%.0f %s%s" : "%.2f %s%s", x, prefixes[i], unit);
  return buf;
}

std::string bytes_str(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024.0 && i < 4) {
    b /= 1024.0;
    ++i;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, i == 0 ? "%.0f %s" : "%.2f %s", b, units[i]);
  return buf;
}

}  // namespace

std::string ProxyGraph::layer_table() const {
  std::ostringstream os;
  char line[256];
  auto row = [&](const std::string& idx, const std::string& name, const std::string& n_ops,
                 const std::string& n_params, const std::string& pbytes, const std::string& flops,
                 const std::string& abytes) {
    std::snprintf(line, sizeof line, "%4s  %-24s %6s %12s %12s %14s %12s\n", idx.c_str(), name.c_str(),
                  n_ops.c_str(), n_params.c_str(), pbytes.c_str(), flops.c_str(), abytes.c_str());
    os << line;
  };
  os << description << "\n";
  row("#", "layer", "ops", "parameters", "param bytes", "fwd FLOPs", "act bytes");
  int64_t total_elems = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const ProxyLayer& L = layers[l];
    int64_t elems = 0;
    for (int p : L.params) {
      int64_t n = 1;
      for (auto d : params[p].shape) n *= d;
      elems += n;
    }
    row(std::to_string(l), L.name, std::to_string(L.ops.size()), si(static_cast<double>(elems), ""),
        bytes_str(static_cast<double>(L.param_bytes)), si(L.flops, "FLOP"),
        bytes_str(static_cast<double>(L.activation_bytes)));
  }
  for (const auto& p : params) {
    int64_t n = 1;
    for (auto d : p.shape) n *= d;
    total_elems += n;
  }
  row("", "total", std::to_string(ops.size()), si(static_cast<double>(total_elems), ""),
      bytes_str(static_cast<double>(total_param_bytes())), si(total_flops(), "FLOP"),
      bytes_str(static_cast<double>(total_activation_bytes())));
  for (const auto& p : params)
    if (p.layers.size() > 1) {
      os << "shared: " << p.name << " is read by layers";
      for (int l : p.layers) os << " " << layers[l].name;
      os << "\n";
    }
  return os.str();
}

json ProxyGraph::to_json() const {
  json j;
  j["format"] = "trine.proxy_graph/1";
  j["description"] = description;
  j["has_loss"] = has_loss;
  j["data_inputs"] = data_inputs;
  j["target_inputs"] = target_inputs;
  j["outputs"] = outputs;
  auto& jv = j["values"] = json::array();
  for (const auto& v : values)
    jv.push_back({{"name", v.name}, {"is_tensor", v.is_tensor}, {"shape", v.shape}, {"dtype", v.dtype},
                  {"bytes", v.bytes}, {"producer", v.producer}, {"input_index", v.input_index},
                  {"consumers", v.consumers}});
  auto& jo = j["ops"] = json::array();
  for (const auto& o : ops)
    jo.push_back({{"kind", o.kind}, {"inputs", o.inputs}, {"outputs", o.outputs}, {"params", o.params},
                  {"layer", o.layer}, {"param_only", o.param_only}, {"random", o.random}, {"flops", o.flops},
                  {"activation_bytes", o.activation_bytes}});
  auto& jp = j["params"] = json::array();
  for (const auto& p : params)
    jp.push_back({{"name", p.name}, {"aliases", p.aliases}, {"value", p.value}, {"is_buffer", p.is_buffer},
                  {"requires_grad", p.requires_grad}, {"shape", p.shape}, {"bytes", p.bytes},
                  {"layers", p.layers}});
  auto& jl = j["layers"] = json::array();
  for (const auto& l : layers)
    jl.push_back({{"name", l.name}, {"ops", l.ops}, {"params", l.params}, {"flops", l.flops},
                  {"param_bytes", l.param_bytes}, {"activation_bytes", l.activation_bytes}});
  return j;
}

ProxyGraph ProxyGraph::from_json(const json& j) {
  JsonObjectReader r(j, "the proxy graph");
  TORCH_CHECK(r.get<std::string>("format", "") == "trine.proxy_graph/1",
              "not a trine proxy graph (expected \"format\": \"trine.proxy_graph/1\")");
  ProxyGraph g;
  g.description = r.required<std::string>("description");
  g.has_loss = r.required<bool>("has_loss");
  g.data_inputs = r.required<std::vector<int>>("data_inputs");
  g.target_inputs = r.required<std::vector<int>>("target_inputs");
  g.outputs = r.required<std::vector<int>>("outputs");
  for (auto& v : r.objects("values")) {
    g.values.push_back({v.required<std::string>("name"), v.required<bool>("is_tensor"),
                        v.required<std::vector<int64_t>>("shape"), v.required<std::string>("dtype"),
                        v.required<int64_t>("bytes"), v.required<int>("producer"), v.required<int>("input_index"),
                        v.required<std::vector<int>>("consumers")});
    v.finish();
  }
  for (auto& o : r.objects("ops")) {
    g.ops.push_back({o.required<std::string>("kind"), o.required<std::vector<int>>("inputs"),
                     o.required<std::vector<int>>("outputs"), o.required<std::vector<int>>("params"),
                     o.required<int>("layer"), o.required<bool>("param_only"), o.required<bool>("random"),
                     o.required<double>("flops"), o.required<int64_t>("activation_bytes")});
    o.finish();
  }
  for (auto& p : r.objects("params")) {
    g.params.push_back({p.required<std::string>("name"), p.required<std::vector<std::string>>("aliases"),
                        p.required<int>("value"), p.required<bool>("is_buffer"), p.required<bool>("requires_grad"),
                        p.required<std::vector<int64_t>>("shape"), p.required<int64_t>("bytes"),
                        p.required<std::vector<int>>("layers")});
    p.finish();
  }
  for (auto& l : r.objects("layers")) {
    g.layers.push_back({l.required<std::string>("name"), l.required<std::vector<int>>("ops"),
                        l.required<std::vector<int>>("params"), l.required<double>("flops"),
                        l.required<int64_t>("param_bytes"), l.required<int64_t>("activation_bytes")});
    l.finish();
  }
  r.finish();
  const int nv = static_cast<int>(g.values.size()), no = static_cast<int>(g.ops.size());
  const int nl = static_cast<int>(g.layers.size());
  for (size_t o = 0; o < g.ops.size(); ++o) {
    const auto& op = g.ops[o];
    TORCH_CHECK(op.layer >= 0 && op.layer < nl, "malformed trine proxy graph: op ", o, " has layer ", op.layer);
    for (int v : op.inputs) TORCH_CHECK(v >= 0 && v < nv, "malformed trine proxy graph: op ", o, " reads value ", v);
    for (int v : op.outputs) TORCH_CHECK(v >= 0 && v < nv, "malformed trine proxy graph: op ", o, " writes value ", v);
  }
  for (const auto& v : g.values) TORCH_CHECK(v.producer >= -1 && v.producer < no, "malformed trine proxy graph: value ", v.name);
  return g;
}

void ProxyGraph::save(const std::string& path) const { write_file_atomically(path, to_json().dump(1) + "\n"); }

ProxyGraph ProxyGraph::load(const std::string& path) {
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, "'", path, "' is not valid JSON: ", e.what());
  }
  return from_json(j);
}

}  // namespace trine
