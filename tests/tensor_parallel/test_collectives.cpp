// The tensor-parallel region ops, on t ranks simulated by threads summing
// through shared memory: a Megatron MLP pair (column-parallel fc1 with the
// input entering the region, row-parallel fc2 whose output leaves it) gives
// the unsplit MLP's output, input gradient and weight gradients (sliced).
#include "trine/tensor_parallel/collectives.h"

#include "../support/in_process_group.h"

#include <gtest/gtest.h>

#include <thread>

namespace trine {
namespace {

TEST(TensorParallelCollectives, MegatronMlpPairEqualsTheWholeMlp) {
  torch::manual_seed(0);
  const int64_t batch = 3, width = 8, hidden = 16;
  const int tp = 2;
  auto x = torch::randn({batch, width});
  auto w1 = torch::randn({hidden, width}), b1 = torch::randn({hidden});
  auto w2 = torch::randn({width, hidden}), b2 = torch::randn({width});
  auto seed = torch::randn({batch, width});

  // The whole MLP.
  auto xr = x.clone().requires_grad_(), w1r = w1.clone().requires_grad_(), w2r = w2.clone().requires_grad_();
  auto b1r = b1.clone().requires_grad_(), b2r = b2.clone().requires_grad_();
  auto whole = torch::linear(torch::gelu(torch::linear(xr, w1r, b1r)), w2r, b2r);
  whole.backward(seed);

  testing::InProcessGroup group(tp);
  const AllReduceSum all_reduce = [&](torch::Tensor& t) { group.all_reduce(t); };
  std::vector<torch::Tensor> outputs(tp), x_grads(tp), w1_grads(tp), w2_grads(tp), b1_grads(tp), b2_grads(tp);
  std::vector<std::thread> ranks;
  for (int r = 0; r < tp; ++r)
    ranks.emplace_back([&, r] {
      const int64_t part = hidden / tp;
      auto xi = x.clone().requires_grad_();
      auto w1i = w1.narrow(0, r * part, part).clone().requires_grad_();  // column: rows of W1
      auto b1i = b1.narrow(0, r * part, part).clone().requires_grad_();
      auto w2i = w2.narrow(1, r * part, part).clone().requires_grad_();  // row: columns of W2
      auto b2i = b2.clone().requires_grad_();
      auto h = torch::gelu(torch::linear(enter_parallel_region(xi, all_reduce), w1i, b1i));
      auto y = leave_parallel_region(torch::matmul(h, w2i.t()), all_reduce) + b2i;  // bias once, after the sum
      y.backward(seed);
      outputs[r] = y.detach();
      x_grads[r] = xi.grad();
      w1_grads[r] = w1i.grad();
      b1_grads[r] = b1i.grad();
      w2_grads[r] = w2i.grad();
      b2_grads[r] = b2i.grad();
    });
  for (auto& t : ranks) t.join();

  for (int r = 0; r < tp; ++r) {
    const int64_t part = hidden / tp;
    EXPECT_TRUE(torch::allclose(outputs[r], whole.detach(), 1e-5, 1e-5)) << "rank " << r;
    EXPECT_TRUE(torch::allclose(x_grads[r], xr.grad(), 1e-5, 1e-5)) << "rank " << r;
    EXPECT_TRUE(torch::allclose(w1_grads[r], w1r.grad().narrow(0, r * part, part), 1e-5, 1e-5));
    EXPECT_TRUE(torch::allclose(b1_grads[r], b1r.grad().narrow(0, r * part, part), 1e-5, 1e-5));
    EXPECT_TRUE(torch::allclose(w2_grads[r], w2r.grad().narrow(1, r * part, part), 1e-5, 1e-5));
    EXPECT_TRUE(torch::allclose(b2_grads[r], b2r.grad(), 1e-5, 1e-5));
  }
}

}  // namespace
}  // namespace trine
