#include "trine/frontend/turns.h"

#include <ATen/ThreadLocalState.h>
#include <c10/util/Exception.h>

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace trine {

namespace {

// Whose turn it is, among the tasks that have not ended.
class TurnTable {
 public:
  explicit TurnTable(int tasks) : ended_(static_cast<size_t>(tasks), false) {}

  void wait_for(int task) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return current_ == task; });
  }

  // The next task after `task` that has not ended gets the turn (`task`
  // keeps it when it is the only one left).
  void pass(int task) {
    std::lock_guard<std::mutex> lock(mutex_);
    pass_locked(task);
  }

  void end(int task) {
    std::lock_guard<std::mutex> lock(mutex_);
    ended_[static_cast<size_t>(task)] = true;
    pass_locked(task);
  }

 private:
  void pass_locked(int task) {
    const int n = static_cast<int>(ended_.size());
    for (int k = 1; k < n; ++k) {
      const int next = (task + k) % n;
      if (!ended_[static_cast<size_t>(next)]) {
        current_ = next;
        break;
      }
    }
    changed_.notify_all();
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<bool> ended_;
  int current_ = 0;
};

thread_local TurnTable* current_table = nullptr;
thread_local int current_task = -1;

}  // namespace

void run_taking_turns(int tasks, const std::function<void(int)>& task) {
  TORCH_INTERNAL_ASSERT(tasks >= 1, "run_taking_turns needs a task");
  TORCH_INTERNAL_ASSERT(current_table == nullptr, "run_taking_turns called from inside a task");
  if (tasks == 1) return task(0);
  TurnTable table(tasks);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(tasks));
  auto run_one = [&](int i) {
    current_table = &table;
    current_task = i;
    table.wait_for(i);
    try {
      task(i);
    } catch (...) {
      errors[static_cast<size_t>(i)] = std::current_exception();
    }
    current_table = nullptr;
    current_task = -1;
    table.end(i);
  };
  const at::ThreadLocalState state;
  std::vector<std::thread> threads;
  for (int i = 1; i < tasks; ++i)
    threads.emplace_back([&, i] {
      at::ThreadLocalStateGuard guard(state);
      run_one(i);
    });
  run_one(0);
  for (auto& t : threads) t.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

void pass_turn_then_wait(const std::function<void()>& wait) {
  if (TurnTable* table = current_table) {
    table->pass(current_task);
    table->wait_for(current_task);
  }
  wait();
}

}  // namespace trine
