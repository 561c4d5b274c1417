// Multi-process resume check, run by ctest under mpirun: trains the tied GPT
// (dropout on) under one layout for --at steps, saves a checkpoint, trains on
// to --steps (the uninterrupted run); then a new trainer under --resume-layout
// resumes from that checkpoint and trains to --steps. Under the same layout
// every loss after resuming must equal the uninterrupted run's exactly; under
// another one within --tolerance (relative): dropout's masks follow the
// global microbatches, so the new layout keeps dp x microbatches. Exits 1 on any rank that
// disagrees (mpirun then fails).
#include "../support/reference.h"
#include "trine/common/files.h"
#include "trine/runtime/checkpoint.h"
#include "trine/runtime/trainer.h"

#include <CLI/CLI.hpp>

#include <cstdio>

using namespace trine;

namespace {

struct Layout {
  int dp = 1, pp = 1, tp = 1;
};

TrainConfig config_of(const Layout& l, int microbatches, int steps) {
  TrainConfig c;
  c.parallel.dp = l.dp;
  c.parallel.pp = l.pp;
  c.parallel.tp = l.tp;
  c.global_batch = 16;
  c.microbatches = microbatches;
  c.optimizer.lr = 3e-3;
  c.optimizer.weight_decay = 0.01;
  c.optimizer.grad_clip = 0.5;
  c.lr_schedule.warmup_steps = 2;
  c.steps = steps;
  c.seed = 11;
  c.timeout_s = 60;
  c.bucket_bytes = 4096;
  c.log_every = 0;
  return c;
}

Layout parse_layout(const std::vector<int>& v) {
  TORCH_CHECK(v.size() == 3, "a layout is dp,pp,tp");
  return {v[0], v[1], v[2]};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> layout{1, 2, 1}, resume_layout;
  int steps = 6, at = 3, microbatches = 4, resume_microbatches = 0;
  double tolerance = 0;
  std::string dir;
  CLI::App app{"trine checkpoint resume check"};
  app.add_option("--layout", layout)->delimiter(',');
  app.add_option("--resume-layout", resume_layout)->delimiter(',');
  app.add_option("--steps", steps);
  app.add_option("--at", at);
  app.add_option("--microbatches", microbatches);
  app.add_option("--resume-microbatches", resume_microbatches,
                 "per replica (default --microbatches); keep dp x microbatches, so that dropout draws the same masks");
  app.add_option("--tolerance", tolerance, "relative; 0: exactly equal");
  app.add_option("--dir", dir)->required();
  CLI11_PARSE(app, argc, argv);
  if (resume_layout.empty()) resume_layout = layout;
  torch::set_num_threads(1);
  ModelSpec spec = testing::small_gpt_spec(true, 0.1);
  spec.batch = 16;
  spec.seed = 7;
  int failures = 0;
  try {
    std::vector<double> expected;
    {
      ExampleModel model = make_example_model(spec);
      Trainer trainer(model.module, model.loss, model.batch(0), config_of(parse_layout(layout), microbatches, steps));
      if (trainer.rank() == 0) remove_tree(dir);
      for (int s = 0; s < at; ++s) trainer.step(model.batch(s));
      trainer.save_checkpoint(dir);
      for (int s = at; s < steps; ++s) expected.push_back(trainer.step(model.batch(s)));
    }
    ExampleModel model = make_example_model(spec);
    TrainConfig c = config_of(parse_layout(resume_layout), resume_microbatches > 0 ? resume_microbatches : microbatches,
                              steps);
    c.checkpoint_dir = dir;
    c.checkpoint_resume = true;
    Trainer trainer(model.module, model.loss, model.batch(0), c);
    if (trainer.steps_done() != at) {
      std::fprintf(stderr, "rank %d: resumed after step %lld, the checkpoint was written after %d\n", trainer.rank(),
                   static_cast<long long>(trainer.steps_done()), at);
      return 1;
    }
    // What `trine export` writes equals what the trainer resumed with.
    for (const auto& [name, whole] : checkpoint_parameters(newest_checkpoint(dir))) {
      const torch::Tensor mine = trainer.parameter(name);
      if (mine.defined() && !torch::equal(trainer.tensor_parallel_slice(name, whole), mine.detach())) {
        std::fprintf(stderr, "rank %d: exported %s differs from the resumed parameter\n", trainer.rank(), name.c_str());
        ++failures;
      }
    }
    // ... and so does the .pt model file, read back by plain LibTorch.
    if (trainer.rank() == 0) {
      const auto whole = checkpoint_parameters(newest_checkpoint(dir));
      write_model_file(dir + "/model.pt", whole);
      const std::string bytes = read_file(dir + "/model.pt");
      const auto dict = torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end())).toGenericDict();
      if (dict.size() != whole.size()) ++failures;
      for (const auto& [name, t] : whole)
        if (!dict.contains(name) || !torch::equal(dict.at(name).toTensor(), t)) {
          std::fprintf(stderr, "model.pt: %s differs from the checkpoint\n", name.c_str());
          ++failures;
        }
    }
    double worst = 0;
    for (int s = at; s < steps; ++s) {
      const double loss = trainer.step(model.batch(s));
      const double want = expected[s - at];
      const double rel = std::abs(loss - want) / std::abs(want);
      worst = std::max(worst, rel);
      if ((tolerance == 0 && loss != want) || rel > tolerance) {
        std::fprintf(stderr, "rank %d step %d: resumed loss %.12f, uninterrupted %.12f (rel %.2e)\n", trainer.rank(),
                     s, loss, want, rel);
        ++failures;
      }
    }
    std::printf("rank %d: layout %d,%d,%d resumed under %d,%d,%d after step %d: %d steps, worst loss rel %.2e\n",
                trainer.rank(), layout[0], layout[1], layout[2], resume_layout[0], resume_layout[1],
                resume_layout[2], at, steps - at, worst);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return failures ? 1 : 0;
}
