// Tasks that take turns on one rank's compute (docs/design.md §4a,
// sub-microbatches): each task runs on a thread of its own, but only the task
// holding the turn computes. A task gives the turn up only where it waits on
// something outside this process (a collective it has started), so while one
// sub-microbatch's all-reduce travels the next one computes.
//
// Contract:
//   - The turn goes round in a fixed order (task 0, 1, ..., n-1, 0, ...,
//     skipping tasks that have ended), so the order of computation, of random
//     draws and of collectives started is the same on every rank and in every
//     run: what each task computes and in which order collectives are issued
//     does not depend on timing.
//   - Every task sees the calling thread's LibTorch thread-local state (grad
//     mode, debug info) as it was when run_taking_turns was called.
//   - run_taking_turns returns when every task has ended; it rethrows the
//     first task's exception (by task index) after all have ended. A task
//     that throws gives up its turn for good, so the others can finish (or
//     time out in their collectives).
//   - Not reentrant: a task must not call run_taking_turns.
#pragma once
#include <functional>

namespace trine {

// Runs task(0) .. task(tasks - 1), task 0 on the calling thread and the rest
// on threads of their own, one at a time, passing the turn only at
// pass_turn_then_wait. With one task: just calls it.
void run_taking_turns(int tasks, const std::function<void(int)>& task);

// Inside a task: gives the turn to the next task and, once the turn has come
// back, runs `wait` (which blocks until something outside this process is
// done, such as a collective the task started before passing). While `wait`
// blocks, no task computes: the time it takes is what the others' compute
// did not hide. Outside run_taking_turns: just runs `wait`.
void pass_turn_then_wait(const std::function<void()>& wait);

}  // namespace trine
