#include "trine/partitioner/profiler.h"

#include "trine/frontend/deferred_init.h"

#include "trine/frontend/sequential_staged_model.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>
#include <sstream>

namespace trine {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Sets the intra-op thread count for a scope and puts the old one back.
class ThreadScope {
 public:
  explicit ThreadScope(int threads) : previous_(at::get_num_threads()), set_(threads > 0) {
    if (set_) at::set_num_threads(threads);
  }
  ~ThreadScope() {
    if (set_) at::set_num_threads(previous_);
  }

 private:
  int previous_;
  bool set_;
};

}  // namespace

CostModel profile_layers(const TracedModel& model, const ProxyGraph& proxy, const SampleBatch& batch,
                         const ProfileOptions& options) {
  TORCH_CHECK(model.has_loss, "profiling times the backward too: trace the model with a loss function");
  check_not_deferred(model, "profiling layer costs");
  TORCH_CHECK(options.repeats >= 1 && options.warmup >= 0, "profile needs repeats >= 1 and warmup >= 0");
  ThreadScope threads(options.threads);
  const int n = static_cast<int>(proxy.layers.size());
  std::vector<int> one_stage_per_layer(n);
  std::iota(one_stage_per_layer.begin(), one_stage_per_layer.end(), 0);
  // Own parameter copies: profiling never touches the user's weights or gradients.
  SequentialStagedModel staged(model, proxy, one_stage_per_layer);

  std::vector<std::vector<double>> fwd(n), bwd(n);
  std::vector<int64_t> kept(n, 0);
  for (int r = 0; r < options.warmup + options.repeats; ++r) {
    StageMeasurements m;
    staged.zero_grad();
    staged.forward_backward(batch, options.rng, &m);
    if (r < options.warmup) continue;
    for (int l = 0; l < n; ++l) {
      fwd[l].push_back(m.forward_s[l]);
      bwd[l].push_back(m.backward_s[l]);
      kept[l] = std::max(kept[l], m.kept_bytes[l]);
    }
  }
  staged.zero_grad();
  // Once more with every layer's attention cores recomputed: what selective
  // recomputation leaves each layer keeping.
  SequentialStagedModel selective(model, proxy, one_stage_per_layer);
  for (int l = 0; l < n; ++l) selective.checkpoint_layers(l, {}, /*attention_cores=*/true);
  StageMeasurements selective_m;
  selective.forward_backward(batch, options.rng, &selective_m);
  selective.zero_grad();

  CostModel costs;
  std::ostringstream src;
  const c10::Device device = batch.inputs.empty() ? c10::Device(c10::kCPU) : batch.inputs[0].device();
  src << "profile: " << device << ", " << at::get_num_threads() << " intra-op thread(s), median of "
      << options.repeats << " after " << options.warmup << " warm-up";
  costs.source = src.str();
  costs.optimizer_state_factor = options.optimizer_state_factor;
  for (int l = 0; l < n; ++l)
    costs.layers.push_back({median(fwd[l]), median(bwd[l]), kept[l], selective_m.kept_bytes[l]});
  return costs;
}

}  // namespace trine
