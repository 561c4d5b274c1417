#include "trine/runtime/train_config.h"

#include "trine/recompute/recompute_policy.h"
#include "trine/schedules/schedule_registry.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace trine {

TrainConfig TrainConfig::read(JsonObjectReader& r) {
  TrainConfig c;
  {
    if (r.is_string("parallel")) {
      const std::string mode = r.get("parallel", std::string());
      TORCH_CHECK(mode == "auto", "config.parallel is the string '", mode,
                  "': give \"auto\" (the planner chooses the layout) or an object {\"dp\": ..., \"pp\": ..., "
                  "\"tp\": ...}");
      c.parallel.auto_layout = true;
    } else {
      auto p = r.object("parallel");
      c.parallel.dp = p.get("dp", c.parallel.dp);
      c.parallel.pp = p.get("pp", c.parallel.pp);
      c.parallel.tp = p.get("tp", c.parallel.tp);
      c.parallel.order = p.get("order", c.parallel.order);
      p.finish();
    }
  }
  {
    auto t = r.object("tensor_parallel");
    c.tensor_parallel.column = t.get("column", c.tensor_parallel.column);
    c.tensor_parallel.row = t.get("row", c.tensor_parallel.row);
    c.tensor_parallel.replicate = t.get("replicate", c.tensor_parallel.replicate);
    c.tensor_parallel.dropout = t.get("dropout", c.tensor_parallel.dropout);
    c.tensor_parallel.sub_microbatches = t.get("sub_microbatches", c.tensor_parallel.sub_microbatches);
    t.finish();
  }
  c.global_batch = r.get("global_batch", c.global_batch);
  c.microbatches = r.get("microbatches", c.microbatches);
  c.schedule = r.get("schedule", c.schedule);
  c.virtual_stages = r.get("virtual_stages", c.virtual_stages);
  {
    auto p = r.object("partition");
    c.partition.method = p.get("method", c.partition.method);
    c.partition.profile = p.get("profile", c.partition.profile);
    c.partition.memory_limit_bytes = p.get("memory_limit_bytes", c.partition.memory_limit_bytes);
    c.partition.starts = p.get("starts", c.partition.starts);
    p.finish();
  }
  {
    auto o = r.object("optimizer");
    c.optimizer.name = o.get("name", c.optimizer.name);
    c.optimizer.lr = o.get("lr", c.optimizer.lr);
    c.optimizer.weight_decay = o.get("weight_decay", c.optimizer.weight_decay);
    c.optimizer.beta1 = o.get("beta1", c.optimizer.beta1);
    c.optimizer.beta2 = o.get("beta2", c.optimizer.beta2);
    c.optimizer.eps = o.get("eps", c.optimizer.eps);
    c.optimizer.momentum = o.get("momentum", c.optimizer.momentum);
    c.optimizer.grad_clip = o.get("grad_clip", c.optimizer.grad_clip);
    o.finish();
  }
  {
    auto s = r.object("lr_schedule");
    c.lr_schedule.warmup_steps = s.get("warmup_steps", c.lr_schedule.warmup_steps);
    c.lr_schedule.decay = s.get("decay", c.lr_schedule.decay);
    c.lr_schedule.min_lr = s.get("min_lr", c.lr_schedule.min_lr);
    c.lr_schedule.total_steps = s.get("total_steps", c.lr_schedule.total_steps);
    s.finish();
  }
  {
    auto p = r.object("recompute");
    c.recompute.policy = p.get("policy", c.recompute.policy);
    c.recompute.every = p.get("every", c.recompute.every);
    c.recompute.layers = p.get("layers", c.recompute.layers);
    c.recompute.ratio = p.get("ratio", c.recompute.ratio);
    c.recompute.memory_limit_bytes = p.get("memory_limit_bytes", c.recompute.memory_limit_bytes);
    p.finish();
  }
  {
    auto m = r.object("memory");
    c.memory.bytes = m.get("budget_bytes", c.memory.bytes);
    c.memory.policy = memory_policy_named(m.get("policy", std::string(memory_policy_name(c.memory.policy))),
                                         "config.memory.policy");
    c.memory.swap_bytes_per_s = m.get("swap_bytes_per_s", c.memory.swap_bytes_per_s);
    c.memory.prefetch = m.get("prefetch", c.memory.prefetch);
    m.finish();
  }
  c.steps = r.get("steps", c.steps);
  c.seed = static_cast<uint64_t>(r.get("seed", static_cast<int64_t>(c.seed)));
  c.weights_file = r.get("weights", c.weights_file);
  c.device = r.get("device", c.device);
  c.timeout_s = r.get("timeout_s", c.timeout_s);
  c.bucket_bytes = r.get("bucket_bytes", c.bucket_bytes);
  c.max_skipped_steps = r.get("max_skipped_steps", c.max_skipped_steps);
  {
    auto l = r.object("logging");
    c.log_every = l.get("every", c.log_every);
    c.measure_memory = l.get("memory", c.measure_memory);
    c.trace_file = l.get("trace", c.trace_file);
    c.trace_steps = l.get("trace_steps", c.trace_steps);
    l.finish();
  }
  if (r.has("emulate")) {
    auto e = r.object("emulate");
    c.emulate.on = true;
    c.emulate.times_file = e.get("times", c.emulate.times_file);
    c.emulate.write_times = e.get("write_times", c.emulate.write_times);
    e.finish();
  }
  {
    auto k = r.object("checkpoint");
    c.checkpoint_dir = k.get("dir", c.checkpoint_dir);
    c.checkpoint_every = k.get("every", c.checkpoint_every);
    c.checkpoint_keep = k.get("keep", c.checkpoint_keep);
    c.checkpoint_resume = k.get("resume", c.checkpoint_resume);
    k.finish();
  }
  return c;
}

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  JsonObjectReader r(j, "config");
  TrainConfig c = read(r);
  r.finish();
  return c;
}

void TrainConfig::check() const {
  TORCH_CHECK(parallel.tp >= 1, "config.parallel.tp must be at least 1, got ", parallel.tp);
  const int parts = tensor_parallel.sub_microbatches;
  TORCH_CHECK(!parallel.auto_layout || parts == 1, "config.parallel is \"auto\" and config.tensor_parallel."
              "sub_microbatches is ", parts, ": the planner does not choose sub-pipelining; set it to 1 or give the "
              "layout yourself");
  TORCH_CHECK(parts >= 1, "config.tensor_parallel.sub_microbatches must be at least 1, got ", parts);
  TORCH_CHECK(parts == 1 || parallel.tp > 1, "config.tensor_parallel.sub_microbatches is ", parts, ", but "
              "config.parallel.tp is 1: sub-microbatches hide tensor-parallel all-reduces, and there are none; set "
              "tp > 1 or sub_microbatches to 1");
  TORCH_CHECK(parts == 1 || device == "cpu", "config.tensor_parallel.sub_microbatches is ", parts, " on \"", device,
              "\": sub-pipelining runs on CPU (Gloo) only so far (on CUDA it needs a stream per part, not built); "
              "set sub_microbatches to 1");
  TORCH_CHECK(tensor_parallel.dropout == "exact" || tensor_parallel.dropout == "per_shard",
              "config.tensor_parallel.dropout '", tensor_parallel.dropout, "' is unknown; use \"exact\" (the "
              "single-process masks) or \"per_shard\" (each rank draws its own; not equal to one process)");
  const bool overrides = !tensor_parallel.column.empty() || !tensor_parallel.row.empty() ||
                         !tensor_parallel.replicate.empty();
  TORCH_CHECK(parallel.tp > 1 || !overrides, "config.tensor_parallel.column/row/replicate are set, but "
              "config.parallel.tp is 1: set tp > 1 or remove them");
  TORCH_CHECK(global_batch >= 0, "config.global_batch must be positive (or 0: the sample's batch size)");
  TORCH_CHECK(microbatches >= 1, "config.microbatches must be at least 1, got ", microbatches);
  const ScheduleSpec& spec = find_schedule(schedule, "config.schedule");
  check_recompute_settings(recompute, "config.recompute");
  TORCH_CHECK(memory.bytes >= 0, "config.memory.budget_bytes is ", memory.bytes, "; give the most bytes of saved "
              "activations a rank may hold, or 0 for no budget");
  TORCH_CHECK(memory.swap_bytes_per_s > 0 && memory.prefetch >= 0, "config.memory.swap_bytes_per_s must be > 0 and "
              "config.memory.prefetch >= 0");
  TORCH_CHECK(!spec.needs_recompute || recompute.policy != "none", "config.schedule '", schedule,
              "' hides recomputation in the time stages wait for each other, but config.recompute.policy is "
              "\"none\": there is nothing to hide and it would only add work; set a recompute policy or use "
              "\"1f1b\"");
  check_virtual_stages(spec, virtual_stages, "config.virtual_stages");
  // The schedule's own preconditions (stages, microbatches), before any work.
  try {
    pipeline_schedule(schedule, parallel.pp, microbatches, virtual_stages);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "config.schedule with config.parallel.pp = ", parallel.pp, " and config.microbatches = ",
                microbatches, ": ", e.what_without_backtrace());
  }
  TORCH_CHECK(optimizer.name == "adamw" || optimizer.name == "sgd", "config.optimizer.name '", optimizer.name,
              "' is unknown; use \"adamw\" or \"sgd\"");
  TORCH_CHECK(optimizer.lr > 0, "config.optimizer.lr must be positive, got ", optimizer.lr);
  TORCH_CHECK(optimizer.grad_clip >= 0, "config.optimizer.grad_clip must be >= 0 (0: no clipping)");
  TORCH_CHECK(lr_schedule.decay == "cosine" || lr_schedule.decay == "constant", "config.lr_schedule.decay '",
              lr_schedule.decay, "' is unknown; use \"cosine\" or \"constant\"");
  TORCH_CHECK(lr_schedule.warmup_steps >= 0 && lr_schedule.total_steps >= 0 && lr_schedule.min_lr >= 0,
              "config.lr_schedule values must not be negative");
  TORCH_CHECK(steps >= 1, "config.steps must be at least 1, got ", steps);
  TORCH_CHECK(device == "cpu" || device == "cuda", "config.device '", device, "' is unknown; use \"cpu\" or \"cuda\"");
  TORCH_CHECK(timeout_s > 0, "config.timeout_s must be positive, got ", timeout_s);
  TORCH_CHECK(bucket_bytes > 0, "config.bucket_bytes must be positive, got ", bucket_bytes);
  TORCH_CHECK(max_skipped_steps >= 1, "config.max_skipped_steps must be at least 1, got ", max_skipped_steps);
  TORCH_CHECK(log_every >= 0 && checkpoint_every >= 0, "config.logging.every and config.checkpoint.every must be >= 0");
  TORCH_CHECK(checkpoint_keep >= 1, "config.checkpoint.keep must be >= 1 (the newest checkpoints kept), not ",
              checkpoint_keep);
  TORCH_CHECK(!checkpoint_resume || !checkpoint_dir.empty(),
              "config.checkpoint.resume needs config.checkpoint.dir: the directory to resume from");
  TORCH_CHECK(trace_steps >= 1, "config.logging.trace_steps is ", trace_steps,
              ": give the number of first steps to trace (>= 1), or leave out config.logging.trace");
}

double learning_rate(const OptimizerConfig& opt, const LrScheduleConfig& sched, int64_t step, int64_t run_steps) {
  const int64_t warmup = sched.warmup_steps;
  if (step < warmup) return opt.lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (sched.decay == "constant") return opt.lr;
  const int64_t total = sched.total_steps > 0 ? sched.total_steps : run_steps;
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  return sched.min_lr + 0.5 * (opt.lr - sched.min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace trine
