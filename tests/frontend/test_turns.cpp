// Tasks taking turns (frontend/turns.h): one computes at a time, the turn
// goes round in a fixed order whatever the waits take, tasks that end drop
// out, errors come back, and the caller's grad mode reaches every task.
#include "trine/frontend/turns.h"

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace trine {
namespace {

TEST(Turns, OneTaskComputesAtATimeInAFixedOrderWhateverTheWaitsTake) {
  std::vector<std::string> events;
  std::mutex mutex;
  std::atomic<int> computing{0};
  int most = 0;
  const std::vector<int> rounds{3, 1, 2};  // task 1 ends first, then task 2
  run_taking_turns(3, [&](int task) {
    for (int r = 0; r < rounds[task]; ++r) {
      const int now = ++computing;
      {
        std::lock_guard<std::mutex> lock(mutex);
        most = std::max(most, now);
        events.push_back(std::to_string(task) + "." + std::to_string(r));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(task == 0 ? 3 : 0));
      --computing;
      // Waits of different lengths: the order must not follow them.
      pass_turn_then_wait([&] { std::this_thread::sleep_for(std::chrono::milliseconds(5 * (2 - task))); });
    }
  });
  EXPECT_EQ(most, 1);
  EXPECT_EQ(events, (std::vector<std::string>{"0.0", "1.0", "2.0", "0.1", "2.1", "0.2"}));
}

TEST(Turns, TheFirstErrorComesBackAfterEveryTaskEnded) {
  std::atomic<int> finished{0};
  try {
    run_taking_turns(3, [&](int task) {
      pass_turn_then_wait([] {});
      if (task == 1) throw std::runtime_error("part 1 failed");
      pass_turn_then_wait([] {});
      ++finished;
    });
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "part 1 failed");
  }
  EXPECT_EQ(finished.load(), 2);
}

TEST(Turns, TasksSeeTheCallersGradModeAndOneTaskRunsInline) {
  at::NoGradGuard no_grad;
  std::vector<int> enabled(2, -1);
  run_taking_turns(2, [&](int task) { enabled[task] = at::GradMode::is_enabled() ? 1 : 0; });
  EXPECT_EQ(enabled, (std::vector<int>{0, 0}));
  std::thread::id ran_on;
  run_taking_turns(1, [&](int) {
    ran_on = std::this_thread::get_id();
    pass_turn_then_wait([] {});  // nobody to pass to: just waits
  });
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

}  // namespace
}  // namespace trine
