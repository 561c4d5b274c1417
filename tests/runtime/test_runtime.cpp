// Single-process tests of the runtime's parts: the process grid, strict
// configs and the learning-rate schedule, launcher detection, Gloo
// communicators and gradient buckets (ranks as threads), and the trainer on
// one process (nn::Module and TorchScript models, checkpoints).
#include "../support/error_of.h"
#include "../support/reference.h"
#include "trine/common/files.h"
#include "trine/common/safetensors.h"
#include "trine/runtime/communicator.h"
#include "trine/runtime/gradient_buckets.h"
#include "trine/runtime/launch.h"
#include "trine/runtime/optimizer.h"
#include "trine/runtime/process_grid.h"
#include "trine/runtime/step_prediction.h"
#include "trine/runtime/train_config.h"
#include "trine/runtime/trainer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/script.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <dirent.h>
#include <unistd.h>
#include <thread>

namespace trine {
namespace {

using testing::error_of;

TEST(ProcessGrid, OrderGivesCoordinatesAndGroups) {
  ProcessGrid g(2, 2, 2, "tp-dp-pp", 8);  // tp fastest, then dp, pp slowest
  EXPECT_EQ(g.coord(5, Dim::TP), 1);
  EXPECT_EQ(g.coord(5, Dim::DP), 0);
  EXPECT_EQ(g.coord(5, Dim::PP), 1);
  EXPECT_EQ(g.rank_of(1, 1, 1), 7);
  EXPECT_EQ(g.group(5, Dim::TP), (std::vector<int>{4, 5}));
  EXPECT_EQ(g.group(5, Dim::DP), (std::vector<int>{5, 7}));
  EXPECT_EQ(g.group(5, Dim::PP), (std::vector<int>{1, 5}));
  ProcessGrid h(3, 2, 1, "pp-dp-tp", 6);  // pp fastest
  EXPECT_EQ(h.group(0, Dim::PP), (std::vector<int>{0, 1}));
  EXPECT_EQ(h.group(0, Dim::DP), (std::vector<int>{0, 2, 4}));
  for (Dim d : {Dim::DP, Dim::PP, Dim::TP}) {
    std::vector<int> seen(6, 0);
    for (const auto& grp : h.all_groups(d))
      for (int r : grp) seen[r]++;
    EXPECT_EQ(seen, std::vector<int>(6, 1)) << to_string(d);
  }
}

TEST(ProcessGrid, BadSizesAndOrdersAreClearErrors) {
  EXPECT_NE(error_of([] { ProcessGrid(2, 2, 1, "tp-dp-pp", 3); })
                .find("the job has 3 processes, but dp*pp*tp = 2*2*1 = 4: launch 4 processes"),
            std::string::npos);
  EXPECT_NE(error_of([] { ProcessGrid(1, 1, 1, "tp-dp", 1); }).find("must name dp, pp and tp once each"),
            std::string::npos);
  EXPECT_NE(error_of([] { ProcessGrid(1, 1, 1, "tp-xp-pp", 1); }).find("has 'xp'"), std::string::npos);
  EXPECT_NE(error_of([] { ProcessGrid(1, 1, 1, "tp-tp-pp", 1); }).find("names tp twice"), std::string::npos);
  EXPECT_NE(error_of([] { ProcessGrid(0, 1, 1, "tp-dp-pp", 1); }).find("dp must be at least 1"), std::string::npos);
}

TEST(TrainConfig, ReadsEveryKeyAndRejectsUnknownOnesAndWrongTypes) {
  const auto c = TrainConfig::from_json(nlohmann::json::parse(R"({
    "parallel": {"dp": 2, "pp": 4, "tp": 1, "order": "dp-tp-pp"}, "global_batch": 64, "microbatches": 8,
    "tensor_parallel": {"column": [], "row": [], "replicate": [], "dropout": "per_shard", "sub_microbatches": 1},
    "schedule": "gpipe", "partition": {"method": "dp", "profile": true, "memory_limit_bytes": 1000, "starts": []},
    "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.9, "grad_clip": 0,
                  "beta1": 0.8, "beta2": 0.9, "eps": 1e-6},
    "lr_schedule": {"warmup_steps": 10, "decay": "constant", "min_lr": 0.01, "total_steps": 100},
    "steps": 7, "seed": 3, "device": "cpu", "timeout_s": 5, "bucket_bytes": 1024,
    "logging": {"every": 2}, "checkpoint": {"dir": "ck", "every": 3, "keep": 2, "resume": true}})"));
  EXPECT_EQ(c.parallel.pp, 4);
  EXPECT_EQ(c.parallel.order, "dp-tp-pp");
  EXPECT_EQ(c.microbatches, 8);
  EXPECT_EQ(c.partition.method, "dp");
  EXPECT_TRUE(c.partition.profile);
  EXPECT_DOUBLE_EQ(c.optimizer.momentum, 0.9);
  EXPECT_EQ(c.lr_schedule.decay, "constant");
  EXPECT_EQ(c.checkpoint_every, 3);
  EXPECT_EQ(c.checkpoint_keep, 2);
  EXPECT_TRUE(c.checkpoint_resume);
  EXPECT_EQ(c.log_every, 2);
  EXPECT_EQ(c.tensor_parallel.dropout, "per_shard");
  EXPECT_NO_THROW(c.check());

  auto err = [](const char* text) { return error_of([&] { TrainConfig::from_json(nlohmann::json::parse(text)); }); };
  EXPECT_NE(err(R"({"optimizer": {"lerning_rate": 1}})").find("unknown key 'lerning_rate' in config.optimizer"),
            std::string::npos);
  EXPECT_NE(err(R"({"stepz": 1})").find("unknown key 'stepz' in config, known keys:"), std::string::npos);
  EXPECT_NE(err(R"({"steps": 1.5})").find("config.steps must be an integer, got a number (1.5)"), std::string::npos);
  EXPECT_NE(err(R"({"parallel": {"dp": "2"}})").find("config.parallel.dp must be an integer, got a string"),
            std::string::npos);
  EXPECT_NE(err(R"({"parallel": 2})").find("config.parallel must be an object"), std::string::npos);

  auto bad = [](auto edit) {
    TrainConfig c;
    edit(c);
    return error_of([&] { c.check(); });
  };
  EXPECT_NE(bad([](TrainConfig& c) { c.schedule = "zb"; }).find("config.schedule 'zb' is unknown"), std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) { c.optimizer.name = "adam"; }).find("use \"adamw\" or \"sgd\""), std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) { c.microbatches = 0; }).find("config.microbatches must be at least 1"),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) { c.checkpoint_resume = true; })
                .find("config.checkpoint.resume needs config.checkpoint.dir"),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) { c.checkpoint_keep = 0; }).find("config.checkpoint.keep must be >= 1"),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) { c.tensor_parallel.sub_microbatches = 2; })
                .find("config.tensor_parallel.sub_microbatches is 2, but config.parallel.tp is 1"),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) {
              c.parallel.tp = 2;
              c.tensor_parallel.sub_microbatches = 2;
              c.device = "cuda";
            }).find("sub-pipelining runs on CPU (Gloo) only so far"),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) { c.tensor_parallel.sub_microbatches = 0; })
                .find("config.tensor_parallel.sub_microbatches must be at least 1"),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) { c.tensor_parallel.row = {"*.fc2.weight"}; })
                .find("config.tensor_parallel.column/row/replicate are set, but config.parallel.tp is 1"),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) { c.parallel.tp = 0; }).find("config.parallel.tp must be at least 1"),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) { c.tensor_parallel.dropout = "fast"; })
                .find("config.tensor_parallel.dropout 'fast' is unknown"),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) {
              c.recompute.policy = "selective";
              c.recompute.ratio = 0.5;
            }).find("config.recompute.ratio is read only by the \"stage_aware\" policy"),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) { c.recompute.policy = "al"; })
                .find("config.recompute.policy is \"al\", not a recomputation policy; known: \"none\", \"full\""),
            std::string::npos);
  // Schedules that hide recomputation need some; their own preconditions are
  // checked here too, before any work, naming the keys to change.
  EXPECT_NE(bad([](TrainConfig& c) {
              c.parallel.pp = 4;
              c.microbatches = 8;
              c.schedule = "shifted_critical_path";
            }).find("config.schedule 'shifted_critical_path' hides recomputation in the time stages wait for each "
                    "other, but config.recompute.policy is \"none\""),
            std::string::npos);
  const auto two_stages = bad([](TrainConfig& c) {
    c.parallel.pp = 2;
    c.microbatches = 8;
    c.schedule = "shifted_critical_path";
    c.recompute.policy = "full";
  });
  EXPECT_NE(two_stages.find("config.schedule with config.parallel.pp = 2 and config.microbatches = 8: schedule "
                            "'shifted_critical_path' needs at least 3 pipeline stages"),
            std::string::npos)
      << two_stages;
  EXPECT_NE(bad([](TrainConfig& c) {
              c.parallel.pp = 4;
              c.microbatches = 2;
              c.schedule = "pre_recompute_1f1b";
              c.recompute.policy = "full";
            }).find("raise \"microbatches\""),
            std::string::npos);
  // Interleaving: virtual_stages must suit the schedule, m a multiple of pp.
  EXPECT_NE(bad([](TrainConfig& c) {
              c.parallel.pp = 2;
              c.microbatches = 4;
              c.schedule = "interleaved_1f1b";
            }).find("config.virtual_stages = 1: schedule 'interleaved_1f1b' runs at least 2 model chunks"),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) {
              c.parallel.pp = 2;
              c.virtual_stages = 2;
            }).find("config.virtual_stages = 2: schedule '1f1b' runs one model chunk per pipeline rank; use "
                    "\"interleaved_1f1b\""),
            std::string::npos);
  EXPECT_NE(bad([](TrainConfig& c) {
              c.parallel.pp = 4;
              c.microbatches = 6;
              c.schedule = "interleaved_1f1b";
              c.virtual_stages = 2;
            }).find("needs the microbatches (6) to be a multiple of the pipeline ranks (4)"),
            std::string::npos);
  TrainConfig interleaved;
  interleaved.parallel.pp = 4;
  interleaved.microbatches = 8;
  interleaved.schedule = "interleaved_1f1b";
  interleaved.virtual_stages = 3;
  interleaved.recompute.policy = "selective";
  EXPECT_NO_THROW(interleaved.check());
  EXPECT_EQ(TrainConfig::from_json({{"schedule", "interleaved_1f1b"}, {"virtual_stages", 2}}).virtual_stages, 2);
  TrainConfig fine;
  fine.parallel.pp = 4;
  fine.microbatches = 4;
  fine.schedule = "last_no_recompute_1f1b";
  fine.recompute.policy = "full";
  EXPECT_NO_THROW(fine.check());
}

TEST(TrainConfig, WarmupThenCosine) {
  OptimizerConfig o;
  o.lr = 1.0;
  LrScheduleConfig s;
  s.warmup_steps = 4;
  s.min_lr = 0.1;
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 0, 14), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 3, 14), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 4, 14), 1.0);                   // cosine starts at the top
  EXPECT_NEAR(learning_rate(o, s, 9, 14), 0.55, 1e-12);                // halfway: (1 + 0.1) / 2
  EXPECT_NEAR(learning_rate(o, s, 14, 14), 0.1, 1e-12);                // ends at min_lr
  EXPECT_NEAR(learning_rate(o, s, 20, 14), 0.1, 1e-12);                // and stays there
  s.decay = "constant";
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 9, 14), 1.0);
}

// Sets environment variables for one test and restores them after; every
// launcher variable not given is unset meanwhile.
class Env {
 public:
  Env(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const char* n : kNames) {
      if (const char* v = std::getenv(n)) saved_.emplace_back(n, v);
      unsetenv(n);
    }
    for (auto [n, v] : vars) setenv(n, v, 1);
  }
  ~Env() {
    for (const char* n : kNames) unsetenv(n);
    for (auto& [n, v] : saved_) setenv(n.c_str(), v.c_str(), 1);
  }

 private:
  static constexpr const char* kNames[] = {
      "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
      "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
      "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NUM_NODES"};
  std::vector<std::pair<std::string, std::string>> saved_;
};

// make_optimizer's AdamW updates large parameters a piece at a time (bounded
// temporaries); it must be LibTorch's AdamW element for element.
TEST(Optimizer, AdamWByPiecesEqualsLibTorchsAdamW) {
  OptimizerConfig c;
  c.lr = 1e-2;
  c.weight_decay = 0.1;
  c.beta1 = 0.8;
  c.eps = 1e-6;
  torch::manual_seed(3);
  const std::vector<torch::Tensor> start{torch::randn({4200000}), torch::randn({7, 5}), torch::randn({3})};
  auto copies = [&] {
    std::vector<torch::Tensor> out;
    for (const auto& t : start) out.push_back(t.clone().requires_grad_(true));
    return out;
  };
  std::vector<torch::Tensor> ours = copies(), theirs = copies();
  const auto opt = make_optimizer(c, ours);
  torch::optim::AdamW reference(theirs, torch::optim::AdamWOptions(c.lr)
                                            .betas({c.beta1, c.beta2})
                                            .eps(c.eps)
                                            .weight_decay(c.weight_decay));
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < start.size(); ++i) {
      const torch::Tensor g = torch::randn(start[i].sizes());
      ours[i].mutable_grad() = g.clone();
      theirs[i].mutable_grad() = g.clone();
    }
    if (step == 2) ours[2].mutable_grad() = theirs[2].mutable_grad() = torch::Tensor();  // no gradient: no update
    opt->step();
    reference.step();
    for (size_t i = 0; i < start.size(); ++i)
      EXPECT_TRUE(torch::equal(ours[i], theirs[i])) << "parameter " << i << " after step " << step;
  }
  for (size_t i = 0; i < start.size(); ++i) {
    const auto a = optimizer_state_of(*opt, c, ours[i]), b = optimizer_state_of(reference, c, theirs[i]);
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [key, value] : a) EXPECT_TRUE(torch::equal(value, b.at(key))) << key << " of parameter " << i;
  }
}

TEST(Launch, RecognisesEachLauncher) {
  {
    Env e({});
    const auto l = detect_launch();
    EXPECT_EQ(l.launcher, "single");
    EXPECT_EQ(l.world_size, 1);
  }
  {
    Env e({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
           {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "1234"}});
    const auto l = detect_launch();
    EXPECT_EQ(l.launcher, "torchrun");
    EXPECT_EQ(l.rank, 3);
    EXPECT_EQ(l.local_rank, 1);
    EXPECT_FALSE(l.single_node());
    EXPECT_EQ(l.master_addr, "node0");
    EXPECT_EQ(l.master_port, 1234);
  }
  {
    Env e({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
           {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
    const auto l = detect_launch();
    EXPECT_EQ(l.launcher, "mpirun");
    EXPECT_EQ(l.rank, 1);
    EXPECT_TRUE(l.master_addr.empty());  // found through MPI at rendezvous
    EXPECT_TRUE(l.single_node());
  }
  {
    Env e({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"}});
    const auto l = detect_launch();
    EXPECT_EQ(l.launcher, "slurm");
    EXPECT_EQ(l.rank, 5);
    EXPECT_EQ(l.world_size, 8);
    LaunchInfo copy = l;
    EXPECT_NE(error_of([&] { rendezvous(copy, std::chrono::milliseconds(100)); }).find("MASTER_ADDR is not set"),
              std::string::npos);
  }
  {
    Env e({{"RANK", "4"}, {"WORLD_SIZE", "4"}});
    EXPECT_NE(error_of([] { detect_launch(); }).find("rank 4 of 4 processes, which is impossible"), std::string::npos);
  }
  {
    Env e({{"RANK", "x"}, {"WORLD_SIZE", "4"}});
    EXPECT_NE(error_of([] { detect_launch(); }).find("RANK='x' is not an integer"), std::string::npos);
  }
}

// Runs f(rank) on `n` threads, each a member of one Gloo group over a shared
// in-memory store; rethrows the first failure.
void as_ranks(int n, const std::function<void(Communicator&)>& f, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  static int groups = 0;
  const std::string name = "test" + std::to_string(groups++);
  std::vector<int> ranks(n);
  for (int r = 0; r < n; ++r) ranks[r] = r;
  std::vector<std::string> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        torch::AutoGradMode grad(true);
        Communicator c(store, name, ranks, r, c10::kCPU, timeout);
        f(c);
      } catch (const c10::Error& e) {
        errors[r] = e.what_without_backtrace();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) TORCH_CHECK(errors[r].empty(), "rank ", r, ": ", errors[r]);
}

TEST(Communicator, TransfersCarryShapeDtypeAndRequiresGrad) {
  as_ranks(2, [](Communicator& c) {
    if (c.rank() == 0) {
      c.post_send(torch::arange(12, torch::kFloat64).view({3, 4}).requires_grad_(), 1, 5, "a");
      c.post_send(torch::tensor({7, 8}, torch::kInt64), 1, 6, "b");
      c.wait_sends();
    } else {
      // Received in the other order than sent: distinct tags keep them apart.
      auto got = c.receive({{0, 6, "b"}, {0, 5, "a"}});
      EXPECT_TRUE(torch::equal(got[0], torch::tensor({7, 8}, torch::kInt64)));
      EXPECT_EQ(got[1].sizes(), (std::vector<int64_t>{3, 4}));
      EXPECT_EQ(got[1].scalar_type(), torch::kFloat64);
      EXPECT_TRUE(got[1].requires_grad());
      EXPECT_DOUBLE_EQ(got[1][2][3].item<double>(), 11);
    }
  });
}

TEST(Communicator, AWaitOnASilentPeerTimesOutWithAMessage) {
  std::string message;
  as_ranks(
      2,
      [&](Communicator& c) {
        if (c.rank() == 1) {
          message = error_of([&] { c.receive({{0, 1, "the activation of microbatch 0"}}); });
        } else {
          std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        }
      },
      std::chrono::milliseconds(700));
  EXPECT_NE(message.find("the activation of microbatch 0 from rank 0 timed out after"), std::string::npos)
      << message;
}

TEST(GradientBuckets, AverageReplicasAndStartDuringBackward) {
  as_ranks(2, [](Communicator& c) {
    // (Threads share the global generator: deterministic values instead.)
    auto w1 = (torch::arange(64, torch::kFloat32).view({8, 8}).sin() * 0.5).requires_grad_();
    auto w2 = (torch::arange(64, torch::kFloat32).view({8, 8}).cos() * 0.5).requires_grad_();
    // Buckets of one parameter each (256 bytes): w2's gradient is final first.
    GradientBuckets buckets({w2, w1}, &c, 256);
    EXPECT_EQ(buckets.num_buckets(), 2);
    auto x = torch::full({4, 8}, 1.0 + c.rank());
    // Two microbatches; only the second backward is armed.
    for (int mb = 0; mb < 2; ++mb) {
      if (mb == 1) buckets.arm();
      (x.mm(w1).relu().mm(w2)).sum().backward();
    }
    EXPECT_EQ(buckets.started_during_backward(), 2);
    buckets.finish();
    // Expected: the mean of both replicas' gradients, computed here directly.
    auto expect = [&](const torch::Tensor& w) {
      std::vector<torch::Tensor> g;
      for (double v : {1.0, 2.0}) {
        auto a = w1.detach().clone().requires_grad_(), b = w2.detach().clone().requires_grad_();
        auto xi = torch::full({4, 8}, v);
        (xi.mm(a).relu().mm(b)).sum().backward();
        g.push_back(2 * (w.is_same(w1) ? a.grad() : b.grad()));
      }
      return (g[0] + g[1]) / 2;
    };
    EXPECT_LT(testing::rel_diff(w1.grad(), expect(w1)), 1e-6);
    EXPECT_LT(testing::rel_diff(w2.grad(), expect(w2)), 1e-6);
  });
}

// A TorchScript regressor x -> tanh(x w1) w2, its weights drawn from `seed`.
torch::jit::Module regressor_module(int seed) {
  torch::manual_seed(seed);
  torch::jit::Module m("Regressor");
  m.register_parameter("w1", (torch::randn({6, 16}) * 0.3).requires_grad_(), false);
  m.register_parameter("w2", (torch::randn({16, 1}) * 0.3).requires_grad_(), false);
  m.define(R"(
      def forward(self, x):
          return torch.tanh(x.matmul(self.w1)).matmul(self.w2)
    )");
  return m;
}

TEST(Trainer, SingleProcessTrainsATorchScriptModelAndSavesCheckpoints) {
  Env e({});
  auto make_module = [] { return regressor_module(0); };
  torch::jit::Module m = make_module();
  LossFn mse = [](const std::vector<torch::Tensor>& out, const std::vector<torch::Tensor>& t) {
    return torch::mse_loss(out[0], t[0]);
  };
  // One fixed batch: the model must fit it.
  auto batch = [](int64_t) {
    auto x = torch::linspace(-1, 1, 96).view({16, 6});
    return SampleBatch{{x}, {x.sum(1, true).sin()}};
  };
  TrainConfig c;
  c.global_batch = 16;
  c.microbatches = 4;
  c.optimizer.lr = 0.05;
  c.steps = 40;
  c.log_every = 0;
  // A fresh directory (and one level below it, which the trainer creates).
  char tmpl[] = "/tmp/trine-test-checkpoint-XXXXXX";
  TORCH_CHECK(::mkdtemp(tmpl), "mkdtemp failed");
  const std::string dir = std::string(tmpl) + "/run";
  c.checkpoint_dir = dir;
  torch::jit::Module eager = make_module();
  Trainer trainer(m, mse, batch(0), c);
  EXPECT_EQ(trainer.world_size(), 1);
  const auto report = trainer.fit(batch);
  ASSERT_EQ(report.losses.size(), 40u);
  EXPECT_LT(report.losses.back(), 0.7 * report.losses.front());
  // The same as plain LibTorch on the TorchScript module (whole batch at once).
  std::vector<torch::Tensor> params;
  for (const auto& p : eager.parameters()) params.push_back(p);
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(c.optimizer.lr).weight_decay(0));
  for (int64_t step = 0; step < c.steps; ++step) {
    opt.zero_grad();
    auto b = batch(step);
    auto loss = mse({eager.forward({b.inputs[0]}).toTensor()}, b.targets);
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params, c.optimizer.grad_clip);
    static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[0].options())
        .lr(learning_rate(c.optimizer, c.lr_schedule, step, c.steps));
    opt.step();
    EXPECT_NEAR(report.losses[step], loss.item<double>(), 1e-5 * loss.item<double>()) << "step " << step;
  }
  EXPECT_GT(report.flops_per_second, 0);
  // The checkpoint after step 40: complete, the parameters and AdamW state
  // by name, and nothing else left in the directory.
  EXPECT_EQ(list_directory(dir), std::vector<std::string>{"step-000000040"});
  const std::string step_dir = dir + "/step-000000040";
  EXPECT_EQ(list_directory(step_dir),
            (std::vector<std::string>{"COMPLETE", "meta.json", "stage-0-tp0.safetensors"}));
  const SafetensorsFile saved(step_dir + "/stage-0-tp0.safetensors");
  EXPECT_TRUE(torch::equal(saved.tensor("param/w1"), trainer.parameter("w1").detach()));
  EXPECT_EQ(saved.tensor("optim/w1/step").item<int64_t>(), 40);
  EXPECT_EQ(saved.tensor("optim/w1/exp_avg").sizes(), trainer.parameter("w1").sizes());
  const auto meta = nlohmann::json::parse(read_file(step_dir + "/meta.json"));
  EXPECT_EQ(meta.at("step"), 40);
  EXPECT_EQ(meta.at("parameters").at("w1").at("shape"), trainer.parameter("w1").sizes().vec());
  std::system(("rm -rf " + std::string(tmpl)).c_str());
}

// A small regressor with BatchNorm in training mode.
struct BnNetImpl : torch::nn::Module {
  BnNetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 8));
    bn = register_module("bn", torch::nn::BatchNorm1d(8));
    fc2 = register_module("fc2", torch::nn::Linear(8, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(bn(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};
TORCH_MODULE(BnNet);

LossFn mse_loss() {
  return [](const std::vector<torch::Tensor>& out, const std::vector<torch::Tensor>& t) {
    return torch::mse_loss(out[0], t[0]);
  };
}

SampleBatch bn_batch(int64_t step) {
  torch::manual_seed(100 + step);
  auto x = torch::randn({8, 4}) * 2 + 1;
  return SampleBatch{{x}, {x.sum(1, true).tanh()}};
}

TEST(Trainer, BatchNormBuffersUpdateOncePerMicrobatchAsInSequentialTraining) {
  Env e({});
  torch::manual_seed(0);
  BnNet model;
  torch::manual_seed(0);
  BnNet eager;
  TrainConfig c;
  c.global_batch = 8;
  c.microbatches = 2;
  c.optimizer.name = "sgd";
  c.optimizer.lr = 0.1;
  c.steps = 5;
  c.log_every = 0;
  Trainer trainer(torch::nn::AnyModule(model), mse_loss(), bn_batch(0), c);
  // Tracing (and checking the trace) ran the model, but trained nothing.
  EXPECT_TRUE(torch::equal(model->bn->running_mean, torch::zeros({8})));
  EXPECT_EQ(model->bn->num_batches_tracked.item<int64_t>(), 0);
  torch::optim::SGD opt(eager->parameters(), torch::optim::SGDOptions(c.optimizer.lr));
  for (int64_t step = 0; step < c.steps; ++step) {
    trainer.step(bn_batch(step));
    opt.zero_grad();
    const SampleBatch b = bn_batch(step);
    for (int64_t k = 0; k < 2; ++k)
      (mse_loss()({eager->forward(b.inputs[0].narrow(0, 4 * k, 4))}, {b.targets[0].narrow(0, 4 * k, 4)}) / 2)
          .backward();
    torch::nn::utils::clip_grad_norm_(eager->parameters(), c.optimizer.grad_clip);
    static_cast<torch::optim::SGDOptions&>(opt.param_groups()[0].options())
        .lr(learning_rate(c.optimizer, c.lr_schedule, step, c.steps));
    opt.step();
  }
  EXPECT_LT(testing::rel_diff(trainer.parameter("bn.running_mean"), eager->bn->running_mean), 1e-6);
  EXPECT_LT(testing::rel_diff(trainer.parameter("bn.running_var"), eager->bn->running_var), 1e-6);
  EXPECT_EQ(trainer.parameter("bn.num_batches_tracked").item<int64_t>(), 10);  // 5 steps x 2 microbatches
  EXPECT_LT(testing::rel_diff(trainer.parameter("fc1.weight"), eager->fc1->weight), 1e-6);
  // Checkpoints hold the buffers.
  char tmpl[] = "/tmp/trine-test-bn-XXXXXX";
  TORCH_CHECK(::mkdtemp(tmpl), "mkdtemp failed");
  trainer.save_checkpoint(tmpl);
  const SafetensorsFile saved(std::string(tmpl) + "/step-000000005/stage-0-tp0.safetensors");
  EXPECT_TRUE(torch::equal(saved.tensor("param/bn.running_var"), trainer.parameter("bn.running_var")));
  EXPECT_EQ(saved.tensor("param/bn.num_batches_tracked").item<int64_t>(), 10);
  EXPECT_FALSE(saved.contains("optim/bn.running_var/momentum_buffer"));  // buffers have no optimizer state
  std::system(("rm -rf " + std::string(tmpl)).c_str());
}

TEST(Trainer, NonFiniteStepsAreSkippedCountedAndStopTrainingWhenTheyRepeat) {
  Env e({});
  torch::manual_seed(0);
  BnNet model;
  TrainConfig c;
  c.global_batch = 8;
  c.microbatches = 2;
  c.optimizer.lr = 0.01;
  c.steps = 20;
  c.log_every = 0;
  c.max_skipped_steps = 3;
  Trainer trainer(torch::nn::AnyModule(model), mse_loss(), bn_batch(0), c);
  auto poisoned = [](int64_t step) {
    SampleBatch b = bn_batch(step);
    b.inputs[0][5][2] = std::numeric_limits<float>::quiet_NaN();  // one value in the second microbatch
    return b;
  };
  trainer.step(bn_batch(0));
  const auto weight = trainer.parameter("fc1.weight").clone();
  const auto mean = trainer.parameter("bn.running_mean").clone();
  const double loss = trainer.step(poisoned(1));
  EXPECT_TRUE(std::isnan(loss));
  EXPECT_TRUE(trainer.last_step_skipped());
  EXPECT_EQ(trainer.skipped_steps(), 1);
  EXPECT_TRUE(torch::equal(trainer.parameter("fc1.weight"), weight));  // no update
  EXPECT_TRUE(torch::equal(trainer.parameter("bn.running_mean"), mean));  // no buffer update either
  EXPECT_EQ(trainer.parameter("bn.num_batches_tracked").item<int64_t>(), 2);
  // Training goes on after a skipped step, from the same state.
  EXPECT_TRUE(std::isfinite(trainer.step(bn_batch(2))));
  EXPECT_FALSE(trainer.last_step_skipped());
  EXPECT_FALSE(torch::equal(trainer.parameter("fc1.weight"), weight));
  trainer.step(poisoned(3));
  trainer.step(poisoned(4));
  const std::string error = error_of([&] { trainer.step(poisoned(5)); });
  EXPECT_NE(error.find("training stopped at step 5: the loss or the global gradient norm was NaN or infinite in 3 "
                       "steps in a row (steps 3 to 5"),
            std::string::npos)
      << error;
  EXPECT_EQ(trainer.skipped_steps(), 4);
}

TEST(Trainer, BatchesOfTheWrongSizeAreErrors) {
  Env e({});
  ModelSpec s = testing::small_gpt_spec();
  s.batch = 8;
  ExampleModel model = make_example_model(s);
  TrainConfig c;
  c.microbatches = 3;
  EXPECT_NE(error_of([&] { Trainer(model.module, model.loss, model.batch(0), c); })
                .find("global batch 8 does not split into dp (1) x microbatches (3) = 3"),
            std::string::npos);
  c.microbatches = 2;
  Trainer trainer(model.module, model.loss, model.batch(0), c);
  ModelSpec other = s;
  other.batch = 4;
  EXPECT_NE(error_of([&] { trainer.step(make_example_model(other).batch(0)); })
                .find("step() got a batch of 4 rows; this trainer's global batch is 8"),
            std::string::npos);
  // Rows of another shape than the trace's: caught on every rank before any transfer.
  ModelSpec longer = s;
  longer.seq_len = 16;
  const std::string err = error_of([&] { trainer.step(make_example_model(longer).batch(0)); });
  EXPECT_NE(err.find("input 0 of the batch has rows of shape [16] (Long), but the model was traced with rows of "
                     "shape [8] (Long)"),
            std::string::npos)
      << err;
}

// The stage profile on the thread's CPU clock (docs/design.md §6a): each
// instruction's work as if alone, not above its wall time, with jitter still
// from the wall; a real tp group cannot be timed so.
TEST(Profile, TheCpuClockTimesEachInstructionsWork) {
  Env e({});
  torch::manual_seed(0);
  ModelSpec s = testing::small_gpt_spec();
  s.batch = 8;
  ExampleModel model = make_example_model(s);
  TrainConfig c;
  c.microbatches = 2;
  Trainer trainer(model.module, model.loss, model.batch(0), c);
  SampleBatch mb = model.batch(0);
  for (auto* list : {&mb.inputs, &mb.targets})
    for (auto& t : *list) t = t.slice(0, 0, 4);
  ProfileSettings settings;
  settings.repeats = 3;
  auto profile = [&] {
    return profile_stage_work(trainer.traced_model(), trainer.proxy(), trainer.plan(), trainer.recompute_plan(), mb,
                              settings);
  };
  const auto wall = profile();
  settings.cpu_clock = true;
  const auto cpu = profile();
  ASSERT_EQ(cpu.size(), 1u);
  for (double t : {cpu[0].forward_s, cpu[0].backward_s, cpu[0].optimizer_s}) EXPECT_GT(t, 0);
  // One intra-op thread: a thread's CPU time never exceeds the wall's (the
  // two profiles are separate runs, so with room for noise).
  EXPECT_LT(cpu[0].forward_s, 1.5 * wall[0].forward_s);
  EXPECT_LT(cpu[0].backward_s, 1.5 * wall[0].backward_s);
  const ShardingAnalysis sharding = analyze_sharding(trainer.traced_model(), 2);
  settings.sharding = &sharding;
  settings.tp_group = 0;
  EXPECT_NE(testing::error_of([&] { profile(); }).find("cpu_clock cannot time a real tp group"), std::string::npos);
}

// Resuming (docs/design.md §7a) from a checkpoint of another model or
// optimizer is an error naming the parameter or the optimizer; an empty
// directory is a fresh start.
TEST(Trainer, ResumingChecksTheCheckpointAgainstTheModel) {
  Env e({});
  char tmpl[] = "/tmp/trine-test-resume-XXXXXX";
  TORCH_CHECK(::mkdtemp(tmpl), "mkdtemp failed");
  const std::string dir = tmpl;
  auto config = [&](bool resume) {
    TrainConfig c;
    c.global_batch = 4;
    c.microbatches = 2;
    c.steps = 2;
    c.log_every = 0;
    c.checkpoint_dir = dir;
    c.checkpoint_resume = resume;
    return c;
  };
  ModelSpec spec = testing::small_gpt_spec();
  spec.batch = 4;
  {
    ExampleModel model = make_example_model(spec);
    Trainer fresh(model.module, model.loss, model.batch(0), config(true));
    EXPECT_EQ(fresh.steps_done(), 0);  // nothing to resume from
    fresh.fit([&](int64_t s) { return model.batch(s); });
  }
  {
    ExampleModel model = make_example_model(spec);
    Trainer resumed(model.module, model.loss, model.batch(0), config(true));
    EXPECT_EQ(resumed.steps_done(), 2);
  }
  ModelSpec wider = spec;
  wider.hidden *= 2;
  ExampleModel other = make_example_model(wider);
  const std::string shape_error =
      error_of([&] { Trainer t(other.module, other.loss, other.batch(0), config(true)); });
  EXPECT_NE(shape_error.find("step-000000002': parameter '"), std::string::npos) << shape_error;
  EXPECT_NE(shape_error.find("has shape"), std::string::npos) << shape_error;
  ExampleModel same = make_example_model(spec);
  TrainConfig sgd = config(true);
  sgd.optimizer.name = "sgd";
  const std::string optimizer_error = error_of([&] { Trainer t(same.module, same.loss, same.batch(0), sgd); });
  EXPECT_NE(optimizer_error.find("holds the state of optimizer \"adamw\""), std::string::npos) << optimizer_error;
  std::system(("rm -rf " + dir).c_str());
}

// config.weights (runtime/pretrained_weights.h): a TorchScript or safetensors
// file's tensors replace the model's own by name; a missing, extra or
// differently shaped tensor is an error naming it.
TEST(Trainer, InitialWeightsComeFromAFileByName) {
  Env e({});
  auto make_module = regressor_module;
  LossFn mse = [](const std::vector<torch::Tensor>& out, const std::vector<torch::Tensor>& t) {
    return torch::mse_loss(out[0], t[0]);
  };
  const auto x = torch::linspace(-1, 1, 96).view({16, 6});
  const SampleBatch batch{{x}, {x.sum(1, true).sin()}};
  char tmpl[] = "/tmp/trine-test-weights-XXXXXX";
  TORCH_CHECK(::mkdtemp(tmpl), "mkdtemp failed");
  const std::string dir = tmpl;
  torch::jit::Module pretrained = make_module(5);
  pretrained.save(dir + "/pretrained.pt");
  const torch::Tensor w1 = pretrained.attr("w1").toTensor(), w2 = pretrained.attr("w2").toTensor();
  write_safetensors(dir + "/pretrained.safetensors", {{"w1", w1.to(torch::kBFloat16).to(torch::kFloat)}, {"w2", w2}});
  auto trainer_with = [&](const std::string& file) {
    TrainConfig c;
    c.global_batch = 16;
    c.microbatches = 2;
    c.log_every = 0;
    c.weights_file = file;
    return std::make_unique<Trainer>(make_module(0), mse, batch, c);
  };
  auto from_torchscript = trainer_with(dir + "/pretrained.pt");
  EXPECT_TRUE(torch::equal(from_torchscript->parameter("w1").detach(), w1));
  EXPECT_TRUE(torch::equal(from_torchscript->parameter("w2").detach(), w2));
  auto from_safetensors = trainer_with(dir + "/pretrained.safetensors");
  EXPECT_TRUE(torch::equal(from_safetensors->parameter("w1").detach(), w1.to(torch::kBFloat16).to(torch::kFloat)));
  EXPECT_TRUE(torch::equal(from_safetensors->parameter("w2").detach(), w2));
  write_safetensors(dir + "/missing.safetensors", {{"w1", w1}});
  EXPECT_NE(error_of([&] { trainer_with(dir + "/missing.safetensors"); }).find("has no tensor 'w2'"), std::string::npos);
  write_safetensors(dir + "/extra.safetensors", {{"w1", w1}, {"w2", w2}, {"w3", w2}});
  EXPECT_NE(error_of([&] { trainer_with(dir + "/extra.safetensors"); }).find("holds tensor 'w3' (shape [16, 1])"),
            std::string::npos);
  write_safetensors(dir + "/shape.safetensors", {{"w1", w1.t()}, {"w2", w2}});
  EXPECT_NE(error_of([&] { trainer_with(dir + "/shape.safetensors"); }).find("tensor 'w1' has shape [16, 6]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { trainer_with(dir + "/none.safetensors"); }).find("config.weights '" + dir +
                                                                           "/none.safetensors' does not exist"),
            std::string::npos);
  std::system(("rm -rf " + dir).c_str());
}

}  // namespace
}  // namespace trine
