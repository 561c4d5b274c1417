// Collectives among threads that stand for the ranks of a group (tests of
// tensor parallelism without processes): every call is one collective, and
// every thread calls in the same order.
#pragma once
#include <torch/torch.h>

#include <condition_variable>
#include <mutex>

namespace trine::testing {

class InProcessGroup {
 public:
  explicit InProcessGroup(int ranks) : ranks_(ranks) {}

  // In-place sum over the threads.
  void all_reduce(torch::Tensor& t) {
    std::unique_lock<std::mutex> lock(mutex_);
    const int64_t round = round_;
    acc_ = arrived_ == 0 ? t.detach().clone() : acc_ + t.detach();
    if (++arrived_ == ranks_) {
      result_ = acc_;
      arrived_ = 0;
      ++round_;
      done_.notify_all();
    } else {
      done_.wait(lock, [&] { return round_ != round; });
    }
    torch::NoGradGuard no_grad;
    t.copy_(result_);
  }


 private:
  int ranks_;
  std::mutex mutex_;
  std::condition_variable done_;
  int arrived_ = 0;
  int64_t round_ = 0;
  torch::Tensor acc_, result_;
};

}  // namespace trine::testing
