// One group of processes and the c10d backend that connects them: Gloo for
// CPU tensors, NCCL for CUDA tensors (when LibTorch has CUDA). Every wait has
// the group's timeout, and a failed or timed-out wait throws naming the group,
// the operation and the peer, so a dead or stuck process becomes an error on
// every rank that depends on it, never a hang.
//
// Point-to-point transfers carry their own shape, dtype and requires-grad flag
// (a small header message before the data), so a receiver needs no prior
// knowledge of what arrives. Sends are posted asynchronously and completed by
// `wait_sends`; receives are posted as one batch and waited together, so no
// order of transfers inside a batch can deadlock. A receive whose shape and
// dtype are known in advance posts header and data together (one round trip,
// the header checked on arrival).
#pragma once
#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace trine {

struct RecvRequest {
  RecvRequest(int peer_, uint32_t tag_, std::string what_, std::optional<std::vector<int64_t>> shape_ = std::nullopt,
              c10::ScalarType dtype_ = c10::ScalarType::Undefined)
      : peer(peer_), tag(tag_), what(std::move(what_)), shape(std::move(shape_)), dtype(dtype_) {}
  int peer = 0;       // rank in this group
  uint32_t tag = 0;
  std::string what;   // for messages: "the activation of microbatch 3"
  // When the receiver knows what must arrive (a traced stage's inputs do),
  // header and data are received at once and the header is checked against
  // it; otherwise the data is received after its header says what it is.
  std::optional<std::vector<int64_t>> shape;
  c10::ScalarType dtype = c10::ScalarType::Undefined;
};

// Receives posted and not yet waited for: what post_receives returns and
// finish_receives completes.
struct PendingReceives {
  std::vector<RecvRequest> requests;
  std::vector<std::vector<torch::Tensor>> headers, data;
  std::vector<c10::intrusive_ptr<c10d::Work>> header_works, data_works;
};

class Communicator {
 public:
  // A group of one process: collectives return their input, no network.
  Communicator() = default;
  // Collective over the members: every process in `ranks` (world ranks,
  // ordered) constructs it with the same name; processes outside do not.
  Communicator(const c10::intrusive_ptr<c10d::Store>& store, const std::string& name, std::vector<int> ranks,
               int world_rank, c10::Device device, std::chrono::milliseconds timeout);

  int rank() const { return rank_; }
  int size() const { return static_cast<int>(ranks_.size()); }
  int world_rank_of(int r) const { return ranks_.at(r); }
  const std::vector<int>& ranks() const { return ranks_; }
  const std::string& name() const { return name_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  // In-place sum over the group; returns when done.
  void allreduce_sum(torch::Tensor& t);
  // Started now, finished by wait(); the tensor must stay alive until then.
  c10::intrusive_ptr<c10d::Work> allreduce_sum_async(torch::Tensor& t);
  // In-place elementwise maximum over the group; returns when done.
  void allreduce_max(torch::Tensor& t);
  void barrier();
  // Waits with the group's timeout; errors name `what`.
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what) const;

  void post_send(const torch::Tensor& t, int peer, uint32_t tag, const std::string& what);
  std::vector<torch::Tensor> receive(const std::vector<RecvRequest>& requests);
  // The same in two halves, so that work can run while the data travels.
  PendingReceives post_receives(std::vector<RecvRequest> requests);
  std::vector<torch::Tensor> finish_receives(PendingReceives pending);
  void wait_sends();

 private:
  void post_data(PendingReceives& r, size_t i, const std::vector<int64_t>& shape, c10::ScalarType dtype);
  struct PendingSend {
    c10::intrusive_ptr<c10d::Work> work;
    torch::Tensor keep;  // the buffer must outlive the send
    std::string what;
  };
  std::string name_;
  std::vector<int> ranks_{0};
  int rank_ = 0;
  c10::Device device_ = c10::kCPU;
  std::chrono::milliseconds timeout_{60000};
  c10::intrusive_ptr<c10d::Backend> backend_;
  std::vector<PendingSend> sends_;
};

}  // namespace trine
