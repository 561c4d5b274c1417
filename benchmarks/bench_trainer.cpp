// Runtime benchmarks (issue 4, point 9). One binary, launched once per side
// of a comparison (benchmarks/bench_runtime.sh runs them all):
//
//   bench_trainer --mode plain-vs-trainer   one process: the same GPT trained
//       by a plain LibTorch loop and by a dp=pp=1 trine Trainer, steps
//       interleaved, same threads; prints the time ratio trainer / plain.
//   bench_trainer --mode pipeline --pp P --microbatches M   every rank of a
//       job (or a single process with --pp 1): samples/s of the Trainer.
//       With --recompute POLICY (and --recompute-ratio/-every), every rank
//       prints its stage's line: step time, time recomputing, peak bytes
//       allocated during a step (benchmarks/bench_recompute.sh). With
//       --schedule interleaved_1f1b --virtual-stages V, each rank runs V
//       model chunks; --per-rank makes every rank print its line with its time
//       waiting on peers (benchmarks/bench_interleaved.sh). With --tp T, the
//       ranks are tensor-parallel and the line has the time spent in their
//       all-reduces (benchmarks/bench_tensor_parallel.sh); --sub-microbatches N
//       runs each microbatch as N parts taking turns (sub-pipelining).
//
// Each run prints one JSON line (prefixed "json: ") for the script to collect.
#include "bench_timing.h"

#include "trine/examples/example_tasks.h"
#include "trine/common/files.h"
#include "trine/runtime/step_prediction.h"
#include "trine/runtime/trainer.h"
#include "trine/tensor_parallel/sharding_analysis.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <optional>

using namespace trine;

namespace {

struct Args {
  std::string mode = "pipeline";
  std::string schedule = "1f1b";
  int virtual_stages = 1;
  int pp = 1, dp = 1, tp = 1, microbatches = 16, steps = 12, warmup = 3, threads = 1;
  int sub_microbatches = 1;
  int64_t layers = 8, hidden = 128, seq = 64, global_batch = 64;
  RecomputeSettings recompute;
  bool per_rank = false;  // every rank prints its line (set by --recompute)
  bool predict = false;   // rank 0 also profiles the plan's stages and simulates the step
  bool emulate = false;   // compute sleeps for rank 0's profile of each stage; communication real
  std::string machine;    // --predict: a host description (JSON); default MachineDescription::this_host()
  std::string trace;      // logging.trace of the measured steps (with the warm-up ones)
};

ModelSpec spec_of(const Args& a) {
  ModelSpec s;
  s.layers = a.layers;
  s.hidden = a.hidden;
  s.heads = 4;
  s.seq_len = a.seq;
  s.vocab = 256;
  s.batch = a.global_batch;
  return s;
}

TrainConfig config_of(const Args& a) {
  TrainConfig c;
  c.parallel.dp = a.dp;
  c.parallel.pp = a.pp;
  c.parallel.tp = a.tp;
  c.tensor_parallel.sub_microbatches = a.sub_microbatches;
  c.global_batch = a.global_batch;
  c.microbatches = a.microbatches;
  c.schedule = a.schedule;
  c.virtual_stages = a.virtual_stages;
  c.steps = a.warmup + a.steps;
  c.log_every = 0;
  c.partition.method = "dp";
  c.partition.profile = true;  // balance stages on measured layer times
  c.recompute = a.recompute;
  c.measure_memory = a.per_rank;
  c.trace_file = a.trace;
  c.emulate.on = a.emulate;
  if (a.emulate) c.emulate.write_times = "bench-emulate-times.json";
  c.trace_steps = a.warmup + a.steps;
  return c;
}

}  // namespace

int main(int argc, char** argv) try {
  Args a;
  CLI::App app{"trine runtime benchmarks"};
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // later options win
  app.add_option("--mode", a.mode)->check(CLI::IsMember({"pipeline", "plain-vs-trainer"}));
  app.add_option("--pp", a.pp);
  app.add_option("--tp", a.tp);
  app.add_option("--sub-microbatches", a.sub_microbatches);
  app.add_option("--schedule", a.schedule);
  app.add_option("--virtual-stages", a.virtual_stages);
  bool per_rank = false;
  app.add_flag("--per-rank", per_rank, "every rank prints its JSON line");
  app.add_flag("--emulate", a.emulate, "compute instructions sleep for rank 0's profile of each stage (after a "
                                       "first real step); transfers and all-reduces are real");
  app.add_option("--machine", a.machine, "--predict: this host's description (JSON, e.g. from calibrate_host.sh)");
  app.add_option("--trace", a.trace, "write every rank's instructions of every step to this Chrome trace");
  app.add_flag("--predict", a.predict, "rank 0 then profiles the stages here and simulates the step "
                                       "(predicted_step_s)");
  app.add_option("--dp", a.dp);
  app.add_option("--microbatches", a.microbatches);
  app.add_option("--steps", a.steps);
  app.add_option("--warmup", a.warmup);
  app.add_option("--threads", a.threads);
  app.add_option("--layers", a.layers);
  app.add_option("--hidden", a.hidden);
  app.add_option("--seq", a.seq);
  app.add_option("--global-batch", a.global_batch);
  app.add_option("--recompute", a.recompute.policy);
  app.add_option("--recompute-ratio", a.recompute.ratio);
  app.add_option("--recompute-every", a.recompute.every);
  CLI11_PARSE(app, argc, argv);
  a.per_rank = per_rank || app.count("--recompute") > 0;
  torch::set_num_threads(a.threads);
  nlohmann::json out{{"mode", a.mode}, {"layers", a.layers}, {"hidden", a.hidden}, {"seq_len", a.seq},
                     {"global_batch", a.global_batch}, {"microbatches", a.microbatches}, {"threads", a.threads},
                     {"steps", a.steps}};

  if (a.mode == "pipeline") {
    ExampleModel model = make_example_model(spec_of(a));
    Trainer trainer(model.module, model.loss, model.batch(0), config_of(a));
    for (int s = 0; s < a.warmup; ++s) trainer.step(model.batch(s));
    std::vector<double> times;
    StepTimings sum;
    for (int s = 0; s < a.steps; ++s) {
      times.push_back(bench::seconds([&] { trainer.step(model.batch(a.warmup + s)); }));
      const auto& t = trainer.last_step_timings();
      sum.forward_s += t.forward_s / a.steps;
      sum.backward_s += t.backward_s / a.steps;
      sum.communicate_s += t.communicate_s / a.steps;
      sum.reduce_s += t.reduce_s / a.steps;
      sum.optimizer_s += t.optimizer_s / a.steps;
      sum.recompute_s += t.recompute_s / a.steps;
      sum.tensor_parallel_s += t.tensor_parallel_s / a.steps;
      sum.peak_bytes = std::max(sum.peak_bytes, t.peak_bytes);
    }
    // Every rank's breakdown, for seeing where a pipeline loses time.
    std::fprintf(stderr, "rank %d stage %d: mean per step forward %.1f ms, backward %.1f ms, waiting on peers %.1f ms, "
                 "gradient sync %.1f ms, optimizer %.1f ms\n", trainer.rank(), trainer.stage(), 1e3 * sum.forward_s,
                 1e3 * sum.backward_s, 1e3 * sum.communicate_s, 1e3 * sum.reduce_s, 1e3 * sum.optimizer_s);
    const double step_s = bench::median(times);
    out.update({{"schedule", a.schedule}, {"virtual_stages", a.virtual_stages}, {"pp", a.pp}, {"dp", a.dp},
                {"tp", a.tp}, {"sub_microbatches", a.sub_microbatches}, {"tensor_parallel_s", sum.tensor_parallel_s},
                {"ranks", trainer.world_size()}, {"step_s", step_s}, {"samples_per_s", a.global_batch / step_s},
                {"communicate_s", sum.communicate_s}});
    // The prediction: the emulation's own times, or a profile of the stages
    // taken by every rank at once, so that it runs under the load the job
    // puts on the machine (its contention is in the times; the simulator
    // then speeds up ranks while fewer compute).
    std::vector<StageWork> work;
    int profiled_processes = 1;
    if (a.predict && !a.emulate) {
      SampleBatch mb = model.batch(0);
      const int64_t rows = a.global_batch / (a.dp * a.microbatches);
      for (auto* list : {&mb.inputs, &mb.targets})
        for (auto& t : *list) t = t.slice(0, 0, rows);
      ProfileSettings ps;
      ps.optimizer = config_of(a).optimizer;
      std::optional<ShardingAnalysis> sharding;
      if (a.tp > 1) sharding = analyze_sharding(trainer.traced_model(), a.tp);
      ps.sharding = sharding ? &*sharding : nullptr;
      // Every tp group profiles together: its all-reduces are real and timed.
      ps.tp_group = trainer.tensor_parallel_group_id();
      ps.tp_rank = trainer.tensor_parallel_rank();
      // Without tp, each instruction's CPU time: its work alone, whatever
      // load the other ranks' profiles put on the cores meanwhile (they do
      // not all compute all the time). A tp group's all-reduces wait, which
      // only the wall sees: there the load is taken to be the whole job.
      ps.cpu_clock = a.tp == 1;
      work = profile_stage_work(trainer.traced_model(), trainer.proxy(), trainer.plan(), trainer.recompute_plan(), mb,
                                ps);
      profiled_processes = ps.cpu_clock ? 1 : trainer.world_size();
    }
    if (a.predict && trainer.rank() == 0) {
      MachineDescription machine =
          a.machine.empty() ? MachineDescription::this_host()
                            : MachineDescription::from_json(nlohmann::json::parse(read_file(a.machine)), a.machine);
      if (a.emulate) {
        // The emulation's own times; sleeping ranks do not share cores.
        work = work_of_times(stage_times_from_json(nlohmann::json::parse(read_file("bench-emulate-times.json")),
                                                   "bench-emulate-times.json"),
                             trainer.plan(), a.tp);
        machine.cores = 0;
        machine.shared_speed.clear();
      }
      Layout layout{a.dp, a.pp, a.tp, a.virtual_stages, a.microbatches, a.schedule};
      const SimulationReport r = simulate_layout(work, layout, machine, profiled_processes);
      out.update({{"predicted_step_s", r.makespan}, {"predicted_bubble", r.bubble}});
      for (size_t s = 0; s < work.size(); ++s)
        std::fprintf(stderr, "profile stage %zu: forward %.2f ms, backward %.2f ms, recompute %.2f ms, optimizer %.2f ms\n",
                     s, 1e3 * work[s].forward_s, 1e3 * work[s].backward_s, 1e3 * work[s].recompute_s,
                     1e3 * work[s].optimizer_s);
      if (!a.trace.empty()) write_file_atomically(a.trace + ".simulated.json", chrome_trace(r.timeline));
    }
    if (a.per_rank) {
      out.update({{"rank", trainer.rank()}, {"stage", trainer.stage()}, {"recompute", a.recompute.policy},
                  {"recompute_ratio", a.recompute.ratio}, {"recompute_s", sum.recompute_s},
                  {"backward_s", sum.backward_s}, {"forward_s", sum.forward_s}, {"peak_bytes", sum.peak_bytes}});
      std::cout << "json: " << out.dump() << std::endl;
    } else if (trainer.rank() == 0) {
      std::cout << "json: " << out.dump() << std::endl;
    }
    return 0;
  }

  // plain-vs-trainer: the same model and batches, one process, interleaved.
  Args one = a;
  one.microbatches = 1;
  ExampleModel plain = make_example_model(spec_of(one));
  ExampleModel traced = make_example_model(spec_of(one));
  Trainer trainer(traced.module, traced.loss, traced.batch(0), config_of(one));
  const TrainConfig c = config_of(one);
  std::vector<torch::Tensor> params = plain.ptr->parameters();
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(c.optimizer.lr).weight_decay(c.optimizer.weight_decay));
  auto plain_step = [&](int64_t s) {
    opt.zero_grad();
    auto b = plain.batch(s);
    auto outv = plain.module.forward(b.inputs[0]);
    auto loss = plain.loss({outv}, b.targets);
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params, c.optimizer.grad_clip);
    static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[0].options())
        .lr(learning_rate(c.optimizer, c.lr_schedule, s, c.steps));
    opt.step();
    return loss.item<double>();
  };
  for (int s = 0; s < a.warmup; ++s) {
    plain_step(s);
    trainer.step(traced.batch(s));
  }
  std::vector<double> tp, tt;
  for (int s = 0; s < a.steps; ++s) {
    tp.push_back(bench::seconds([&] { plain_step(a.warmup + s); }));
    tt.push_back(bench::seconds([&] { trainer.step(traced.batch(a.warmup + s)); }));
  }
  const double p = bench::median(tp), t = bench::median(tt);
  out.update({{"plain_step_s", p}, {"trainer_step_s", t}, {"ratio", t / p}});
  std::cout << "json: " << out.dump() << std::endl;
  return 0;
} catch (const c10::Error& e) {
  std::cerr << "bench_trainer: error: " << e.what_without_backtrace() << "\n";
  return 1;
}
