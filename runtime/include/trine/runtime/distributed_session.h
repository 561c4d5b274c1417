// The process's connection to the job: launcher facts and the rendezvous
// store, created once per process on first use and shared by every trainer.
#pragma once
#include "trine/runtime/launch.h"

#include <memory>

namespace trine {

struct DistributedSession {
  LaunchInfo launch;
  c10::intrusive_ptr<c10d::Store> store;
  // Connects on the first call (waiting at most `timeout` for the others).
  static DistributedSession& get(std::chrono::milliseconds timeout);
  // A fresh prefix for one trainer's keys and groups ("t0", "t1", ...): every
  // rank creates its trainers in the same order, so the names agree.
  std::string next_prefix();

 private:
  int trainers_ = 0;
};

}  // namespace trine
