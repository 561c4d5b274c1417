// c10d's backend headers are compiled only under these macros (LibTorch's own
// build defines them); the wheel's libraries contain both backends' code.
#define USE_C10D_GLOO 1
#ifdef TRINE_WITH_CUDA
#define USE_C10D_NCCL 1
#endif
#include "backend_factory.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#ifdef TRINE_WITH_CUDA
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>

namespace trine::detail {

namespace {

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                            std::chrono::milliseconds timeout) {
  auto opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
  opts->timeout = timeout;
  opts->devices.clear();
  // GLOO_SOCKET_IFNAME picks the network interface (multi-node); otherwise
  // the host's name is resolved, and TRINE_GLOO_HOST overrides it (a single
  // machine can say 127.0.0.1).
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  else if (const char* host = std::getenv("TRINE_GLOO_HOST"); host && *host)
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
  else
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, opts);
}

}  // namespace

c10::intrusive_ptr<c10d::Backend> make_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                               c10::Device device, std::chrono::milliseconds timeout) {
  if (device.is_cpu()) return make_gloo(store, rank, size, timeout);
#ifdef TRINE_WITH_CUDA
  TORCH_CHECK(device.is_cuda(), "no communication backend for device ", device);
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
#else
  TORCH_CHECK(false, "device ", device, " needs NCCL, but this trine was built without CUDA: rebuild with ",
              "-DTRINE_WITH_CUDA=ON (scripts/gpu-check.sh does) or set \"device\": \"cpu\"");
#endif
}

}  // namespace trine::detail
