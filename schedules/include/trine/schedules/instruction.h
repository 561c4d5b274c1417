// The instructions a pipeline stage runs in one training step
// (docs/design.md §6). A schedule is data: the executor interprets it, the checker
// proves it, and neither needs the other.
#pragma once
#include <string>
#include <vector>

namespace trine {

// A rank runs one stage of the plan, or, under an interleaved schedule with
// v virtual stages, v of them: its model chunks. Chunk c of pipeline rank r
// is plan stage c·p + r (p pipeline ranks), so chunk 0 is stage r itself.
inline int stage_of_chunk(int chunk, int rank, int ranks) { return chunk * ranks + rank; }

// One point-to-point transfer of one microbatch, named from the side of the
// stage `chunk` is on this rank. Which peers it involves comes from the stage
// topology: SendAct goes to every stage that reads this stage's outputs,
// RecvAct comes from every stage this one reads from, and gradients flow the
// other way.
struct Transfer {
  enum class Kind { SendAct, RecvAct, SendGrad, RecvGrad };
  Kind kind = Kind::SendAct;
  int microbatch = 0;
  int chunk = 0;
  bool operator==(const Transfer& o) const {
    return kind == o.kind && microbatch == o.microbatch && chunk == o.chunk;
  }
};

struct Instruction {
  enum class Op {
    Forward,            // F: run the stage on `microbatch`, keep what the stage's
                        //    recompute policy keeps for its backward
    ForwardCheckpoint,  // F*: run it keeping only the stage's inputs and the random
                        //    state; an R or the backward recomputes the rest
    Recompute,          // R: post `transfers`, re-run the forward with grad from what
                        //    it kept (only what it dropped), then wait for the transfers
    Backward,           // backward of `microbatch` (recomputing in-line whatever is
                        //    still dropped), accumulating parameter gradients
    Communicate,        // post every transfer in `transfers` at once, then wait for all
    ReduceGrads,        // finish gradient sync: data-parallel buckets, tied parameters
    OptimizerStep,      // clip by the global norm, step, zero gradients
  };
  Op op = Op::Forward;
  int microbatch = -1;              // Forward, ForwardCheckpoint, Recompute, Backward
  std::vector<Transfer> transfers;  // Communicate, Recompute: one batch, so ordering
                                    // between the transfers of a batch cannot deadlock
  int chunk = 0;                    // Forward .. Backward: which of the rank's stages runs

  static Instruction forward(int mb, int chunk = 0) { return {Op::Forward, mb, {}, chunk}; }
  static Instruction forward_checkpoint(int mb, int chunk = 0) { return {Op::ForwardCheckpoint, mb, {}, chunk}; }
  // The recompute runs while `overlapped` (typically the gradient it waits
  // for) is in flight: "R5+rG5" in Merak's notation.
  static Instruction recompute(int mb, std::vector<Transfer> overlapped = {}, int chunk = 0) {
    return {Op::Recompute, mb, std::move(overlapped), chunk};
  }
  static Instruction backward(int mb, int chunk = 0) { return {Op::Backward, mb, {}, chunk}; }
  static Instruction communicate(std::vector<Transfer> t) { return {Op::Communicate, -1, std::move(t)}; }
  static Instruction reduce_grads() { return {Op::ReduceGrads, -1, {}}; }
  static Instruction optimizer_step() { return {Op::OptimizerStep, -1, {}}; }
};

// Both forwards: F and F*.
inline bool is_forward(Instruction::Op op) {
  return op == Instruction::Op::Forward || op == Instruction::Op::ForwardCheckpoint;
}

// "F3", "F*3", "R3+[rG3]", "B0", "[sA2 rG0]", "reduce", "step"; a chunk
// other than 0 follows the microbatch: "F3@1", "[sA3@1 rG0@2]".
std::string to_string(const Transfer& t);
std::string to_string(const Instruction& i);
std::string to_string(const std::vector<Instruction>& program);

}  // namespace trine
