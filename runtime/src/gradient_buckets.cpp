#include "trine/runtime/gradient_buckets.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

namespace trine {

namespace {

struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  ReadyHook(std::function<void()> f) : f_(std::move(f)) {}
  void operator()(const torch::autograd::Variable&) override { f_(); }
  std::function<void()> f_;
};

}  // namespace

GradientBuckets::GradientBuckets(std::vector<torch::Tensor> params, Communicator* dp, int64_t bucket_bytes)
    : params_(std::move(params)), dp_(dp) {
  bucket_of_.resize(params_.size());
  int64_t bytes = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t b = params_[i].numel() * params_[i].element_size();
    if (buckets_.empty() || (bytes > 0 && bytes + b > bucket_bytes)) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().params.push_back(static_cast<int>(i));
    bucket_of_[i] = static_cast<int>(buckets_.size()) - 1;
    bytes += b;
  }
  if (dp_->size() == 1) return;
  for (size_t i = 0; i < params_.size(); ++i)
    torch::autograd::impl::set_post_acc_grad_hooks(
        params_[i], std::make_unique<ReadyHook>([this, i] { on_ready(static_cast<int>(i)); }));
}

GradientBuckets::~GradientBuckets() {
  if (dp_->size() == 1) return;
  for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void GradientBuckets::arm(int accumulations) {
  armed_ = true;
  next_ = 0;
  started_early_ = 0;
  for (auto& b : buckets_) {
    b.pending = static_cast<int>(b.params.size()) * accumulations;
    b.work.reset();
    b.flat = torch::Tensor();
  }
}

void GradientBuckets::on_ready(int param) {
  if (!armed_) return;
  Bucket& b = buckets_[bucket_of_[param]];
  if (--b.pending > 0) return;
  while (next_ < num_buckets() && buckets_[next_].pending == 0) {
    start(next_++);
    ++started_early_;
  }
}

void GradientBuckets::start(int bucket) {
  Bucket& b = buckets_[bucket];
  std::vector<torch::Tensor> parts;
  for (int i : b.params) {
    const auto& g = params_[i].grad();
    parts.push_back(g.defined() ? g.detach().reshape(-1) : torch::zeros({params_[i].numel()}, params_[i].options()));
  }
  b.flat = torch::cat(parts);
  b.work = dp_->allreduce_sum_async(b.flat);
}

void GradientBuckets::finish() {
  if (dp_->size() == 1) return;
  armed_ = false;
  while (next_ < num_buckets()) start(next_++);
  torch::NoGradGuard no_grad;
  const double scale = 1.0 / dp_->size();
  for (size_t k = 0; k < buckets_.size(); ++k) {
    Bucket& b = buckets_[k];
    dp_->wait(b.work, "the data-parallel all-reduce of gradient bucket " + std::to_string(k));
    b.flat.mul_(scale);
    int64_t offset = 0;
    for (int i : b.params) {
      auto& p = params_[i];
      auto avg = b.flat.narrow(0, offset, p.numel()).view(p.sizes());
      offset += p.numel();
      if (p.grad().defined()) p.mutable_grad().copy_(avg);
      else p.mutable_grad() = avg.clone();
    }
    b.flat = torch::Tensor();
    b.work.reset();
  }
}

}  // namespace trine
