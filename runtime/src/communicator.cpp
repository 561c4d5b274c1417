#include "trine/runtime/communicator.h"

#include "backend_factory.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <algorithm>
#include <cmath>

namespace trine {

namespace {

// Header of a point-to-point transfer: dtype, requires_grad, ndim, dims.
constexpr int64_t kMaxDims = 8;
constexpr int64_t kHeaderLen = 3 + kMaxDims;

torch::Tensor make_header(const torch::Tensor& t, c10::Device device) {
  TORCH_CHECK(t.dim() <= kMaxDims, "cannot send a tensor of ", t.dim(), " dimensions (at most ", kMaxDims, ")");
  std::vector<int64_t> h(kHeaderLen, 0);
  h[0] = static_cast<int64_t>(t.scalar_type());
  h[1] = t.requires_grad() ? 1 : 0;
  h[2] = t.dim();
  for (int64_t d = 0; d < t.dim(); ++d) h[3 + d] = t.size(d);
  return torch::tensor(h, torch::kInt64).to(device);
}

}  // namespace

Communicator::Communicator(const c10::intrusive_ptr<c10d::Store>& store, const std::string& name,
                           std::vector<int> ranks, int world_rank, c10::Device device,
                           std::chrono::milliseconds timeout)
    : name_(name), ranks_(std::move(ranks)), device_(device), timeout_(timeout) {
  auto it = std::find(ranks_.begin(), ranks_.end(), world_rank);
  TORCH_INTERNAL_ASSERT(it != ranks_.end(), "rank ", world_rank, " is not a member of group ", name);
  rank_ = static_cast<int>(it - ranks_.begin());
  if (ranks_.size() == 1) return;
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("trine/" + name, store);
  try {
    backend_ = detail::make_backend(prefixed, rank_, size(), device, timeout);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "group ", name, ": rank ", world_rank, " could not connect to its ", size() - 1,
                " peer(s) within ", timeout.count() / 1000.0, " s (did every process start?): ", e.what());
  }
}

void Communicator::wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what) const {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    work->wait(timeout_);
  } catch (const std::exception& e) {
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool timed_out = waited * 1000 >= 0.99 * static_cast<double>(timeout_.count());
    TORCH_CHECK(false, "group ", name_, ", rank ", ranks_[rank_], ": ", what,
                timed_out ? " timed out after " + c10::str(std::round(waited * 10) / 10) + " s (is the peer stuck?)"
                          : std::string(" failed (did the peer process die?)"),
                ": ", e.what());
  }
}

c10::intrusive_ptr<c10d::Work> Communicator::allreduce_sum_async(torch::Tensor& t) {
  TORCH_INTERNAL_ASSERT(backend_, "allreduce on a group of one");
  std::vector<torch::Tensor> ts{t};
  return backend_->allreduce(ts);
}

void Communicator::allreduce_sum(torch::Tensor& t) {
  if (!backend_) return;
  wait(allreduce_sum_async(t), "an all-reduce");
}

void Communicator::allreduce_max(torch::Tensor& t) {
  if (!backend_) return;
  std::vector<torch::Tensor> ts{t};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::MAX;
  wait(backend_->allreduce(ts, options), "an all-reduce (max)");
}

void Communicator::barrier() {
  if (!backend_) return;
  wait(backend_->barrier(), "a barrier");
}

void Communicator::post_send(const torch::Tensor& t, int peer, uint32_t tag, const std::string& what) {
  TORCH_INTERNAL_ASSERT(backend_ && peer != rank_ && peer >= 0 && peer < size(), "bad send peer ", peer);
  TORCH_INTERNAL_ASSERT(tag < (1u << 30), "tag too large");
  std::vector<torch::Tensor> header{make_header(t, device_)};
  std::vector<torch::Tensor> data{t.detach().contiguous()};
  const std::string to = what + " to rank " + std::to_string(ranks_[peer]);
  sends_.push_back({backend_->send(header, peer, static_cast<int>(tag * 2)), header[0], "sending the header of " + to});
  sends_.push_back({backend_->send(data, peer, static_cast<int>(tag * 2 + 1)), data[0], "sending " + to});
}

void Communicator::post_data(PendingReceives& r, size_t i, const std::vector<int64_t>& shape,
                             c10::ScalarType dtype) {
  r.data[i] = {torch::empty(shape, torch::TensorOptions(dtype).device(device_))};
  r.data_works[i] = backend_->recv(r.data[i], r.requests[i].peer, static_cast<int>(r.requests[i].tag * 2 + 1));
}

PendingReceives Communicator::post_receives(std::vector<RecvRequest> requests) {
  TORCH_INTERNAL_ASSERT(backend_ || requests.empty(), "receive on a group of one");
  const auto int64 = torch::TensorOptions(torch::kInt64).device(device_);
  PendingReceives r;
  r.requests = std::move(requests);
  const size_t n = r.requests.size();
  r.headers.resize(n);
  r.data.resize(n);
  r.header_works.resize(n);
  r.data_works.resize(n);
  for (size_t i = 0; i < n; ++i) {
    r.headers[i] = {torch::zeros({kHeaderLen}, int64)};
    r.header_works[i] = backend_->recv(r.headers[i], r.requests[i].peer, static_cast<int>(r.requests[i].tag * 2));
    if (r.requests[i].shape) post_data(r, i, *r.requests[i].shape, r.requests[i].dtype);
  }
  return r;
}

std::vector<torch::Tensor> Communicator::finish_receives(PendingReceives r) {
  const auto& requests = r.requests;
  auto from = [&](size_t i) { return requests[i].what + " from rank " + std::to_string(ranks_[requests[i].peer]); };
  std::vector<torch::Tensor> out(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    wait(r.header_works[i], "receiving the header of " + from(i));
    const auto h = r.headers[i][0].cpu();
    const int64_t* p = h.data_ptr<int64_t>();
    TORCH_CHECK(p[2] >= 0 && p[2] <= kMaxDims, "group ", name_, ": malformed header receiving ", from(i));
    const std::vector<int64_t> shape(p + 3, p + 3 + p[2]);
    const auto dtype = static_cast<c10::ScalarType>(p[0]);
    if (requests[i].shape) {
      TORCH_CHECK(shape == *requests[i].shape && dtype == requests[i].dtype, "group ", name_, ": expected ",
                  from(i), " as ", requests[i].dtype, " ", c10::IntArrayRef(*requests[i].shape), ", but it is ",
                  dtype, " ", c10::IntArrayRef(shape), " (do both ranks run the same model and plan?)");
    } else {
      post_data(r, i, shape, dtype);
    }
    out[i] = p[1] != 0 ? r.data[i][0].requires_grad_(true) : r.data[i][0];
  }
  for (size_t i = 0; i < requests.size(); ++i) wait(r.data_works[i], "receiving " + from(i));
  return out;
}

std::vector<torch::Tensor> Communicator::receive(const std::vector<RecvRequest>& requests) {
  return finish_receives(post_receives(requests));
}

void Communicator::wait_sends() {
  for (auto& s : sends_) wait(s.work, s.what);
  sends_.clear();
}

}  // namespace trine
