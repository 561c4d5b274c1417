// The instructions a pipeline stage runs in one training step
// (docs/design.md §6). A schedule is data: the executor interprets it, the checker
// proves it, and neither needs the other.
#pragma once
#include <string>
#include <vector>

namespace trine {

// One point-to-point transfer of one microbatch, named from the stage's side.
// Which peers it involves comes from the stage topology: SendAct goes to every
// stage that reads this stage's outputs, RecvAct comes from every stage this
// one reads from, and gradients flow the other way.
struct Transfer {
  enum class Kind { SendAct, RecvAct, SendGrad, RecvGrad };
  Kind kind = Kind::SendAct;
  int microbatch = 0;
  bool operator==(const Transfer& o) const { return kind == o.kind && microbatch == o.microbatch; }
};

struct Instruction {
  enum class Op {
    Forward,        // run the stage on `microbatch`, keep what its backward needs
    Backward,       // backward of `microbatch`, accumulating parameter gradients
    Communicate,    // post every transfer in `transfers` at once, then wait for all
    ReduceGrads,    // finish gradient sync: data-parallel buckets, tied parameters
    OptimizerStep,  // clip by the global norm, step, zero gradients
  };
  Op op = Op::Forward;
  int microbatch = -1;              // Forward, Backward
  std::vector<Transfer> transfers;  // Communicate: one batch, so ordering between
                                    // the transfers of a batch cannot deadlock

  static Instruction forward(int mb) { return {Op::Forward, mb, {}}; }
  static Instruction backward(int mb) { return {Op::Backward, mb, {}}; }
  static Instruction communicate(std::vector<Transfer> t) { return {Op::Communicate, -1, std::move(t)}; }
  static Instruction reduce_grads() { return {Op::ReduceGrads, -1, {}}; }
  static Instruction optimizer_step() { return {Op::OptimizerStep, -1, {}}; }
};

// "F3", "B0", "[sA2 rG0]", "reduce", "step".
std::string to_string(const Transfer& t);
std::string to_string(const Instruction& i);
std::string to_string(const std::vector<Instruction>& program);

}  // namespace trine
