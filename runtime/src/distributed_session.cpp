#include "trine/runtime/distributed_session.h"

#include <mutex>

namespace trine {

DistributedSession& DistributedSession::get(std::chrono::milliseconds timeout) {
  static std::unique_ptr<DistributedSession> session;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (!session) {
    auto s = std::make_unique<DistributedSession>();
    s->launch = detect_launch();
    s->store = rendezvous(s->launch, timeout);
    session = std::move(s);
  }
  return *session;
}

std::string DistributedSession::next_prefix() { return "t" + std::to_string(trainers_++); }

}  // namespace trine
