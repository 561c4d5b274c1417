// Hooks on every saved tensor (frontend/saved_tensors.h): a policy that only
// watches, and one that keeps a copy in place of each tensor (as a swap to
// host memory does), leave a GPT's loss and gradients bit-equal; every
// tensor packed is unpacked by the backward; tensors saved outside a scope,
// or on another thread, are not packed.
#include "../support/reference.h"
#include "trine/examples/example_tasks.h"
#include "trine/frontend/saved_tensors.h"

#include <gtest/gtest.h>

#include <thread>

namespace trine {
namespace {

struct CountingPolicy : SavedTensorPolicy {
  struct Slot : SavedTensorSlot {
    Slot(CountingPolicy& p, torch::Tensor t) : policy(p), kept(std::move(t)) {}
    torch::Tensor unpack() override {
      ++policy.unpacked;
      return kept;
    }
    CountingPolicy& policy;
    torch::Tensor kept;
  };
  explicit CountingPolicy(bool copy) : copy_(copy) {}
  std::unique_ptr<SavedTensorSlot> pack(const torch::Tensor& saved, const PackSite&) override {
    ++packed;
    bytes += saved.numel() * saved.element_size();
    return std::make_unique<Slot>(*this, copy_ ? saved.detach().clone() : saved);
  }
  bool copy_;
  int packed = 0, unpacked = 0;
  int64_t bytes = 0;
};

testing::Reference step_under(CountingPolicy* policy) {
  ExampleModel m = make_example_model(testing::small_gpt_spec(true, 0.0));
  const SampleBatch batch = m.batch(0);
  if (!policy) return testing::eager_step(m, batch);
  SavedTensorScope scope(*policy);
  return testing::eager_step(m, batch);
}

void expect_bit_equal(const testing::Reference& got, const testing::Reference& expected) {
  EXPECT_EQ(got.loss, expected.loss);
  ASSERT_EQ(got.grads.size(), expected.grads.size());
  for (const auto& [name, g] : expected.grads) EXPECT_TRUE(torch::equal(got.grads.at(name), g)) << name;
}

TEST(SavedTensors, WatchingEverySavedTensorChangesNothing) {
  const testing::Reference plain = step_under(nullptr);
  CountingPolicy watch(false);
  expect_bit_equal(step_under(&watch), plain);
  EXPECT_GT(watch.packed, 20);
  EXPECT_GT(watch.bytes, 0);
  EXPECT_GE(watch.unpacked, watch.packed);
}

TEST(SavedTensors, KeepingCopiesInsteadOfTheTensorsGivesTheSameGradients) {
  const testing::Reference plain = step_under(nullptr);
  CountingPolicy copy(true);
  expect_bit_equal(step_under(&copy), plain);
  EXPECT_GT(copy.packed, 20);
}

TEST(SavedTensors, OnlyTheScopesThreadAndLifetimeArePacked) {
  CountingPolicy watch(false);
  const auto x = torch::randn({4, 4}, torch::requires_grad());
  {
    SavedTensorScope scope(watch);
    std::thread([&] { (x * x).sum().backward(); }).join();  // another thread: no scope there
    EXPECT_EQ(watch.packed, 0);
    (x * x).sum().backward();
    EXPECT_EQ(watch.packed, 2);  // mul saves both operands
  }
  (x * x).sum().backward();
  EXPECT_EQ(watch.packed, 2);
  EXPECT_EQ(watch.unpacked, 2);
}

}  // namespace
}  // namespace trine
