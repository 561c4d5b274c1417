// Internal to recompute/: copying a storage's bytes to host memory and back
// for the memory manager's swaps (docs/design.md §4b). On the CPU a copy is
// done when it is made; on CUDA it runs on a side stream into pinned host
// memory, ordered after the work queued so far, and the caller learns when it
// has finished (the device storage of a copy out may only be given up then)
// and makes the compute stream wait for a copy back before using it.
#pragma once
#include <torch/torch.h>

#include <memory>

namespace trine {

class HostTransfer {
 public:
  virtual ~HostTransfer() = default;
  // What the copy writes: host bytes (to host) or device bytes (to device).
  const torch::Tensor& bytes() const { return bytes_; }
  // What it reads, kept until the copy has finished; undefined after
  // release_from() (and always for a copy done at once).
  const torch::Tensor& from() const { return from_; }
  void release_from() { from_ = torch::Tensor(); }
  virtual bool finished() = 0;  // without waiting
  virtual void wait() = 0;      // blocks the host until it has finished
  // Work queued on the device's current stream from now on runs after the
  // copy (a copy to device, before its bytes are used).
  virtual void order_before_use() = 0;

 protected:
  torch::Tensor bytes_, from_;
};

std::unique_ptr<HostTransfer> copy_to_host(const c10::Storage& storage);
std::unique_ptr<HostTransfer> copy_to_device(const torch::Tensor& host_bytes, c10::Device device);

}  // namespace trine
