// Data-parallel gradient averaging that overlaps the backward pass: the
// stage's parameters are grouped into buckets of about `bucket_bytes`, in the
// order backward produces their gradients (last layer first). During the
// step's final backward a hook on each parameter's gradient accumulation marks
// it done (after its last accumulation, when that backward runs in parts); a
// bucket whose parameters are all done is flattened and its all-reduce started
// at once, while backward goes on. Buckets start strictly in order, so every
// replica issues the same collectives in the same order. `finish()` starts
// what is left (parameters that got no gradient this step contribute zeros),
// waits, and writes the averages back into `.grad`.
#pragma once
#include "trine/runtime/communicator.h"

#include <memory>
#include <vector>

namespace trine {

class GradientBuckets {
 public:
  // `params` in the order their gradients are expected to become final.
  GradientBuckets(std::vector<torch::Tensor> params, Communicator* dp, int64_t bucket_bytes);
  ~GradientBuckets();
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  // The next backward is this step's last for these parameters; it
  // accumulates into each of them `accumulations` times (once per
  // sub-microbatch: StageExecution::split_microbatches).
  void arm(int accumulations = 1);
  void finish();
  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  // Buckets whose all-reduce started inside backward in the last step (for tests).
  int started_during_backward() const { return started_early_; }

 private:
  struct Bucket {
    std::vector<int> params;
    int pending = 0;
    torch::Tensor flat;
    c10::intrusive_ptr<c10d::Work> work;
  };
  void on_ready(int param);
  void start(int bucket);

  std::vector<torch::Tensor> params_;
  std::vector<int> bucket_of_;
  std::vector<Bucket> buckets_;
  Communicator* dp_;
  bool armed_ = false;
  int next_ = 0;  // first bucket not started
  int started_early_ = 0;
};

}  // namespace trine
