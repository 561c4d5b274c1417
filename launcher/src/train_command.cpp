// `trine train --config FILE.json`: 3D-parallel training of an example model,
// one process per rank (mpirun, torchrun, Slurm, or a single process).
#include "commands.h"
#include "job_config.h"

#include "trine/runtime/trainer.h"

#include <cstdio>
#include <iostream>

namespace trine::cli {

CLI::App* add_train_command(CLI::App& app, TrainArgs& args) {
  auto* cmd = app.add_subcommand("train", "train with data and pipeline parallelism; run one process per rank");
  cmd->add_option("--config", args.config, "the job's JSON file (keys: docs/config.md)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--steps", args.steps, "override the config's steps")->check(CLI::PositiveNumber);
  return cmd;
}

int run_train(const TrainArgs& args) {
  JobConfig job = JobConfig::load(args.config);
  if (args.steps > 0) job.train.steps = args.steps;
  ExampleModel model = make_example_model(job.model);
  Trainer trainer(model.module, model.loss, model.batch(0), job.train);
  if (trainer.rank() == 0) {
    const auto& p = job.train.parallel;
    std::printf("trine: %d process(es), grid dp=%d pp=%d tp=%d (%s), %s schedule, %d microbatches of %lld\n",
                trainer.world_size(), p.dp, p.pp, p.tp, p.order.c_str(), job.train.schedule.c_str(),
                job.train.microbatches,
                static_cast<long long>(job.train.global_batch / (p.dp * job.train.microbatches)));
    std::cout << trainer.plan().table() << std::flush;
  }
  const FitReport report = trainer.fit(model.batch, job.train.steps);
  if (trainer.rank() == 0 && !report.losses.empty())
    std::printf("trained %zu steps: loss %.4f -> %.4f, %.1f samples/s\n", report.losses.size(), report.losses.front(),
                report.losses.back(), report.samples_per_second);
  return 0;
}

}  // namespace trine::cli
