#include "trine/tensor_parallel/tensor_parallel_group.h"

#include <c10/util/Exception.h>

#include <map>
#include <memory>
#include <mutex>

namespace trine {

namespace {

struct Registry {
  std::mutex mutex;
  int64_t next = 1;
  // Pointers stay valid while registered: autograd nodes keep them.
  std::map<int64_t, std::unique_ptr<TensorParallelGroup>> groups;
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

RegisteredGroup::RegisteredGroup(TensorParallelGroup group) {
  TORCH_CHECK(group.size >= 1 && group.rank >= 0 && group.rank < group.size, "tensor-parallel rank ", group.rank,
              " of ", group.size);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  id_ = r.next++;
  r.groups[id_] = std::make_unique<TensorParallelGroup>(std::move(group));
}

RegisteredGroup::~RegisteredGroup() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.groups.erase(id_);
}

const TensorParallelGroup& registered_group(int64_t id) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.groups.find(id);
  TORCH_CHECK(it != r.groups.end(), "no tensor-parallel group is registered as ", id,
              ": the trainer that rewrote this graph is gone");
  return *it->second;
}

}  // namespace trine
