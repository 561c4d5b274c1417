// The one place that includes c10d's backend headers (Gloo's need gloo's own
// headers, NCCL's need CUDA's): the rest of trine sees only c10d::Backend.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

namespace trine::detail {

// Gloo for CPU devices, NCCL for CUDA devices (an error naming the fix when
// trine was built without CUDA). Collective over the group's members.
c10::intrusive_ptr<c10d::Backend> make_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                               c10::Device device, std::chrono::milliseconds timeout);

}  // namespace trine::detail
