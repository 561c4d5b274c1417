// The tensor-parallel group that a rewritten stage graph talks through
// (docs/design.md §5a). The graph's ops (trine_tp::enter, trine_tp::leave,
// trine_tp::dropout, ...; stage_sharding.h) are ordinary LibTorch operators,
// so they cannot hold a communicator: they name their group by an id, which
// this registry resolves. The runtime registers its tp communicator's
// collectives; tests register in-process ones.
//
// A registration lives as long as its RegisteredGroup: destroy that only
// after the last backward pass through the graphs that name it.
#pragma once
#include "trine/tensor_parallel/collectives.h"

#include <cstdint>

namespace trine {

struct TensorParallelGroup {
  int rank = 0;  // this process's position in the group
  int size = 1;
  AllReduceSum sum;  // in-place sum over the group
};

class RegisteredGroup {
 public:
  explicit RegisteredGroup(TensorParallelGroup group);
  ~RegisteredGroup();
  RegisteredGroup(const RegisteredGroup&) = delete;
  RegisteredGroup& operator=(const RegisteredGroup&) = delete;
  int64_t id() const { return id_; }

 private:
  int64_t id_;
};

// The group registered under `id`; throws when there is none.
const TensorParallelGroup& registered_group(int64_t id);

}  // namespace trine
