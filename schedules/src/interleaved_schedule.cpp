// Interleaved 1F1B (docs/design.md §6): each pipeline rank holds v model
// chunks, rank r chunks r, r+p, ... of a plan with p·v stages, so a
// microbatch passes every rank v times and the pipeline fills and drains in
// chunk-sized steps: bubble (p-1)/(v·m) of the step instead of (p-1)/m, for v
// times the point-to-point transfers.
//
// Every rank runs the same order of (microbatch, chunk) units, Megatron's:
// microbatches in groups of p, each group through chunk 0, then chunk 1, ...
// (forward unit k: chunk (k / p) mod v, microbatch (k / (p·v))·p + k mod p);
// backwards in the same order with the chunks reversed. Rank r runs
// 2(p-1-r) + (v-1)p warm-up forwards, then one forward and one backward in
// turn, then the remaining backwards. The transfers of a forward and a
// backward go as one batch after both (send the activation and the gradient,
// receive the next of each), so that rank r's k-th batch meets rank r+1's
// (k+1)-th, and the last rank's meets rank 0's p-1 batches earlier.
#include "trine/schedules/pipeline_schedule.h"

#include "program_builder.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace trine {

namespace {

using Kind = Transfer::Kind;

struct Unit {
  int microbatch = 0, chunk = 0;
};

class InterleavedOrder {
 public:
  InterleavedOrder(int ranks, int microbatches, int chunks) : p_(ranks), v_(chunks), units_(microbatches * chunks) {}
  int units() const { return units_; }
  Unit forward(int k) const { return {(k / (p_ * v_)) * p_ + k % p_, (k / p_) % v_}; }
  Unit backward(int k) const {
    Unit u = forward(k);
    u.chunk = v_ - 1 - u.chunk;
    return u;
  }

 private:
  int p_, v_, units_;
};

void check_interleaved_shape(int ranks, int microbatches, int rank, int chunks) {
  check_pipeline_shape(ranks, microbatches, rank);
  TORCH_CHECK(chunks >= 2, "schedule 'interleaved_1f1b' needs virtual_stages >= 2 (model chunks per pipeline rank), "
              "got ", chunks, "; with one chunk per rank use '1f1b'");
  TORCH_CHECK(ranks >= 2, "schedule 'interleaved_1f1b' needs at least 2 pipeline ranks, got ", ranks);
  TORCH_CHECK(microbatches % ranks == 0, "schedule 'interleaved_1f1b' needs the microbatches (", microbatches,
              ") to be a multiple of the pipeline ranks (", ranks, "): microbatches go through the chunks in groups "
              "of ", ranks);
}

}  // namespace

std::vector<Instruction> interleaved_one_f_one_b_schedule(int ranks, int microbatches, int rank, int chunks) {
  check_interleaved_shape(ranks, microbatches, rank, chunks);
  const InterleavedOrder order(ranks, microbatches, chunks);
  const int units = order.units();
  const int warmup = std::min(units, 2 * (ranks - rank - 1) + (chunks - 1) * ranks);
  ProgramBuilder b(ranks, rank, chunks);
  // Unit k's transfers; none past the last unit.
  auto move = [&](Kind kind, int k) {
    if (k >= units) return;
    const bool forward = kind == Kind::SendAct || kind == Kind::RecvAct;
    const Unit u = forward ? order.forward(k) : order.backward(k);
    b.transfer(kind, u.microbatch, u.chunk);
  };
  auto forward = [&](int k) {
    const Unit u = order.forward(k);
    b.compute(Instruction::forward(u.microbatch, u.chunk));
  };
  auto backward = [&](int k) {
    const Unit u = order.backward(k);
    b.compute(Instruction::backward(u.microbatch, u.chunk));
  };

  move(Kind::RecvAct, 0);
  for (int k = 0; k < warmup; ++k) {
    forward(k);
    move(Kind::SendAct, k);
    move(Kind::RecvAct, k + 1);
    if (k == warmup - 1) move(Kind::RecvGrad, 0);
    b.flush();
  }
  for (int k = 0; k + warmup < units; ++k) {
    const int f = k + warmup;
    forward(f);
    backward(k);
    move(Kind::SendAct, f);
    move(Kind::SendGrad, k);
    move(Kind::RecvAct, f + 1);
    move(Kind::RecvGrad, k + 1);
    b.flush();
  }
  for (int k = units - warmup; k < units; ++k) {
    backward(k);
    move(Kind::SendGrad, k);
    move(Kind::RecvGrad, k + 1);
    b.flush();
  }
  return b.finish();
}

}  // namespace trine
