#include "host_transfers.h"

#ifdef TRINE_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <map>
#include <mutex>
#endif

namespace trine {

namespace {

// The bytes of a whole storage as one flat byte tensor.
torch::Tensor bytes_of(const c10::Storage& storage) {
  torch::NoGradGuard no_grad;
  return at::empty({0}, at::TensorOptions().dtype(at::kByte).device(storage.device()))
      .set_(storage, 0, {static_cast<int64_t>(storage.nbytes())}, {1});
}

// A copy made at once (CPU: the host pool is host memory).
class DoneTransfer : public HostTransfer {
 public:
  explicit DoneTransfer(torch::Tensor bytes) { bytes_ = std::move(bytes); }
  bool finished() override { return true; }
  void wait() override {}
  void order_before_use() override {}
};

#ifdef TRINE_WITH_CUDA
// One side stream per device for every swap, so copies run in order.
c10::cuda::CUDAStream side_stream(c10::DeviceIndex device) {
  static std::mutex mutex;
  static std::map<c10::DeviceIndex, c10::cuda::CUDAStream> streams;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = streams.find(device);
  if (it == streams.end()) it = streams.emplace(device, c10::cuda::getStreamFromPool(false, device)).first;
  return it->second;
}

class CudaTransfer : public HostTransfer {
 public:
  // Copies `from` into `to` on the side stream after what the current
  // stream has queued. Device memory either side is not reused before the
  // copy is done (the caching allocator waits for the side stream).
  CudaTransfer(torch::Tensor from, torch::Tensor to, c10::Device device) {
    from_ = std::move(from);
    bytes_ = std::move(to);
    const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(device.index());
    const c10::cuda::CUDAStream side = side_stream(device.index());
    at::cuda::CUDAEvent ready;
    ready.record(current);
    ready.block(side);
    {
      c10::cuda::CUDAStreamGuard guard(side);
      bytes_.copy_(from_, /*non_blocking=*/true);
    }
    const torch::Tensor& on_device = bytes_.is_cuda() ? bytes_ : from_;
    c10::cuda::CUDACachingAllocator::recordStream(on_device.storage().data_ptr(), side);
    done_.record(side);
  }
  bool finished() override { return done_.query(); }
  void wait() override { done_.synchronize(); }
  void order_before_use() override { done_.block(c10::cuda::getCurrentCUDAStream(bytes_.device().index())); }

 private:
  at::cuda::CUDAEvent done_;
};
#endif

}  // namespace

std::unique_ptr<HostTransfer> copy_to_host(const c10::Storage& storage) {
  const torch::Tensor device_bytes = bytes_of(storage);
  if (storage.device().is_cpu()) return std::make_unique<DoneTransfer>(device_bytes.clone());
#ifdef TRINE_WITH_CUDA
  if (storage.device().is_cuda()) {
    torch::Tensor host = at::empty(device_bytes.sizes(), at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    return std::make_unique<CudaTransfer>(device_bytes, std::move(host), storage.device());
  }
#endif
  TORCH_CHECK(false, "the memory manager cannot swap tensors on ", storage.device(),
              " (this build copies to host from the CPU and CUDA only); set config.memory.policy to \"recompute\"");
}

std::unique_ptr<HostTransfer> copy_to_device(const torch::Tensor& host_bytes, c10::Device device) {
  if (device.is_cpu()) return std::make_unique<DoneTransfer>(host_bytes.clone());
#ifdef TRINE_WITH_CUDA
  if (device.is_cuda()) {
    torch::Tensor back = at::empty(host_bytes.sizes(), at::TensorOptions().dtype(at::kByte).device(device));
    return std::make_unique<CudaTransfer>(host_bytes, std::move(back), device);
  }
#endif
  TORCH_CHECK(false, "the memory manager cannot bring tensors back to ", device);
}

}  // namespace trine
