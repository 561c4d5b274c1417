// A GPT too large for every rank to hold, trained with deferred parameters
// (docs/design.md §3a): the model is built with stand-ins, traced on them,
// and each rank allocates and initialises only its stages' parameters (its tp
// slices). Prints, per rank, its peak resident memory against its share (the
// parameters, gradients and AdamW state it holds) and against the whole
// model's, and the step times.
//
//   mpirun -np 4 build/bin/bench_large_model --pp 4 --layers 8 --hidden 2048
#include "bench_timing.h"

#include "trine/examples/example_tasks.h"
#include "trine/runtime/trainer.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <memory>
#include <sys/resource.h>
#include <unistd.h>

using namespace trine;

namespace {

// This process's peak resident set so far, in bytes.
int64_t peak_resident_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

// This process's resident set now, in bytes.
int64_t resident_bytes() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE);
}

}  // namespace

int main(int argc, char** argv) try {
  int dp = 1, pp = 4, tp = 1, steps = 3, microbatches = 4;
  ModelSpec s;
  s.layers = 8;
  s.hidden = 2048;
  s.heads = 16;
  s.seq_len = 64;
  s.vocab = 32000;
  s.batch = 4;
  CLI::App app{"trine: a GPT larger than the machine, deferred parameters"};
  app.add_option("--dp", dp);
  app.add_option("--pp", pp);
  app.add_option("--tp", tp);
  app.add_option("--layers", s.layers);
  app.add_option("--hidden", s.hidden);
  app.add_option("--heads", s.heads);
  app.add_option("--seq", s.seq_len);
  app.add_option("--vocab", s.vocab);
  app.add_option("--global-batch", s.batch);
  app.add_option("--microbatches", microbatches);
  app.add_option("--steps", steps);
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(1);
  s.deferred = true;
  const int64_t before_model = peak_resident_bytes();
  ExampleModel model = make_example_model(s);
  const int64_t after_model = peak_resident_bytes();
  TrainConfig c;
  c.parallel.dp = dp;
  c.parallel.pp = pp;
  c.parallel.tp = tp;
  c.global_batch = s.batch;
  c.microbatches = microbatches;
  c.steps = steps;
  c.log_every = 0;
  c.timeout_s = 600;
  std::unique_ptr<Trainer> made;
  const double built_s =
      bench::seconds([&] { made = std::make_unique<Trainer>(model.module, model.loss, model.batch(0), c, model.init); });
  Trainer& trainer = *made;
  const int64_t after_build = peak_resident_bytes();
  std::vector<double> step_s, losses;
  std::vector<int64_t> resident_after_step;
  for (int step = 0; step < steps; ++step) {
    step_s.push_back(bench::seconds([&] { losses.push_back(trainer.step(model.batch(step))); }));
    resident_after_step.push_back(resident_bytes());
  }
  int64_t whole = 0, held = 0;
  for (const GraphInput& in : trainer.traced_model().inputs) {
    if (in.kind != InputKind::Parameter) continue;
    whole += in.value.numel();
    const torch::Tensor mine = trainer.parameter(in.name);
    if (mine.defined()) held += mine.numel();
  }
  const int64_t state = 4 * 4;  // fp32 parameter, gradient, AdamW's two moments
  const nlohmann::json out{{"rank", trainer.rank()},
                           {"stage", trainer.stage()},
                           {"tp_rank", trainer.tensor_parallel_rank()},
                           {"dp", dp},
                           {"pp", pp},
                           {"tp", tp},
                           {"model_parameters", whole},
                           {"whole_model_bytes", whole * state},
                           {"held_parameters", held},
                           {"share_bytes", held * state},
                           {"peak_resident_bytes", peak_resident_bytes()},
                           {"peak_before_model_bytes", before_model},
                           {"peak_after_model_bytes", after_model},
                           {"peak_after_trainer_bytes", after_build},
                           {"resident_after_step_bytes", resident_after_step},
                           {"trainer_built_s", built_s},
                           {"step_s", step_s},
                           {"losses", losses}};
  std::cout << "json: " << out.dump() << std::endl;
  return 0;
} catch (const c10::Error& e) {
  std::cerr << "bench_large_model: error: " << e.what_without_backtrace() << "\n";
  return 1;
}
