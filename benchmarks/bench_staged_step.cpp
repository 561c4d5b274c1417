// One training step of the GPT through trine's staged program (k = 1 and k = 4
// stages, one process) against a plain LibTorch training loop on the same model,
// data and thread count. Steps of the three variants are interleaved round by
// round so that machine noise hits them alike; the figure is the median over
// rounds of the per-round time ratio. Writes JSON and prints a table.
//
//   build/bin/bench_staged_step [--threads 1] [--repeats 15] [--out FILE]
#include "bench_timing.h"
#include "trine/common/files.h"
#include "trine/frontend/sequential_staged_model.h"
#include "trine/examples/example_tasks.h"
#include "trine/partitioner/partition_method.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>

using namespace trine;

using bench::median;
using bench::seconds;

int main(int argc, char** argv) {
  CLI::App app{"staged training step vs a plain LibTorch loop"};
  int threads = 1, repeats = 15, warmup = 3;
  ModelSpec spec;
  spec.layers = 4;
  spec.hidden = 256;
  spec.heads = 8;
  spec.seq_len = 128;
  spec.vocab = 1024;
  spec.batch = 8;
  std::string out = "bench_staged_step.json";
  app.add_option("--threads", threads, "intra-op threads for every variant")->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "timed rounds")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed rounds first")->check(CLI::NonNegativeNumber);
  app.add_option("--layers", spec.layers, "GPT blocks")->check(CLI::PositiveNumber);
  app.add_option("--hidden", spec.hidden, "hidden size")->check(CLI::PositiveNumber);
  app.add_option("--seq-len", spec.seq_len, "sequence length")->check(CLI::PositiveNumber);
  app.add_option("--batch", spec.batch, "microbatch")->check(CLI::PositiveNumber);
  app.add_option("--out", out, "JSON result file");
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads);

  // Plain loop: the model itself.
  auto plain = make_example_model(spec);
  torch::optim::AdamW plain_opt(plain.ptr->parameters(), torch::optim::AdamWOptions(1e-4));
  const SampleBatch batch = plain.batch(0);
  auto plain_step = [&] {
    plain_opt.zero_grad();
    auto loss = plain.loss({plain.module.forward(batch.inputs[0])}, batch.targets);
    loss.backward();
    plain_opt.step();
  };

  // Staged: the same model traced and cut into k stages. Each staged model
  // trains its own copies of the weights, so the plain loop's are untouched.
  const TracedModel traced = trace(plain.module, plain.loss, batch);
  const ProxyGraph proxy = build_proxy_graph(traced);
  const int layers = static_cast<int>(proxy.layers.size());
  struct Variant {
    std::string name;
    std::unique_ptr<SequentialStagedModel> model;
    std::unique_ptr<torch::optim::AdamW> opt;
    std::vector<double> times;
  };
  std::vector<Variant> variants;
  for (int k : {1, 4}) {
    Variant v;
    v.name = "staged k=" + std::to_string(k);
    v.model = std::make_unique<SequentialStagedModel>(traced, proxy, uniform_assignment(layers, k));
    v.opt = std::make_unique<torch::optim::AdamW>(v.model->parameters(), torch::optim::AdamWOptions(1e-4));
    variants.push_back(std::move(v));
  }
  auto staged_step = [&](Variant& v) {
    v.model->zero_grad();
    v.model->forward_backward(batch);
    v.model->reduce_shared_gradients();
    v.opt->step();
  };

  std::vector<double> plain_times;
  for (int r = 0; r < warmup + repeats; ++r) {
    const double tp = seconds(plain_step);
    if (r >= warmup) plain_times.push_back(tp);
    for (auto& v : variants) {
      const double t = seconds([&] { staged_step(v); });
      if (r >= warmup) v.times.push_back(t);
    }
  }

  nlohmann::json j;
  j["benchmark"] = "staged_step";
  j["model"] = {{"name", "gpt"}, {"layers", spec.layers}, {"hidden", spec.hidden}, {"heads", spec.heads},
                {"seq_len", spec.seq_len}, {"vocab", spec.vocab}, {"batch", spec.batch}};
  j["threads"] = threads;
  j["repeats"] = repeats;
  j["plain_median_s"] = median(plain_times);
  std::printf("GPT %lld layers, hidden %lld, seq %lld, batch %lld, %d thread(s), %d rounds\n",
              static_cast<long long>(spec.layers), static_cast<long long>(spec.hidden),
              static_cast<long long>(spec.seq_len), static_cast<long long>(spec.batch), threads, repeats);
  std::printf("%-14s %12s %14s\n", "variant", "median step", "ratio vs plain");
  std::printf("%-14s %10.1f ms %14s\n", "plain LibTorch", 1e3 * median(plain_times), "1.000");
  for (auto& v : variants) {
    std::vector<double> ratios;
    for (size_t i = 0; i < v.times.size(); ++i) ratios.push_back(v.times[i] / plain_times[i]);
    const double ratio = median(ratios);
    std::printf("%-14s %10.1f ms %14.3f\n", v.name.c_str(), 1e3 * median(v.times), ratio);
    j["variants"].push_back({{"name", v.name}, {"median_s", median(v.times)}, {"median_ratio", ratio},
                             {"target_ratio", 1.05}});
  }
  write_file_atomically(out, j.dump(2) + "\n");
  std::printf("written to %s\n", out.c_str());
  return 0;
}
