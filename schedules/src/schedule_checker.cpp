#include "trine/schedules/schedule_checker.h"

#include <c10/util/Exception.h>

#include <map>
#include <sstream>
#include <tuple>

namespace trine {

StageTopology StageTopology::chain(int stages) {
  StageTopology t;
  t.consumers.resize(stages);
  for (int s = 0; s + 1 < stages; ++s) t.consumers[s] = {s + 1};
  return t;
}

std::vector<int> StageTopology::producers(int stage) const {
  std::vector<int> out;
  for (int s = 0; s < stages(); ++s)
    for (int c : consumers[s])
      if (c == stage) out.push_back(s);
  return out;
}

namespace {

using Kind = Transfer::Kind;

// One transfer between `stage` and one peer stage: what actually goes over a
// wire (or, between two stages of one rank, through that rank's memory).
struct PeerOp {
  bool send = false;
  bool grad = false;
  int microbatch = 0;
  int stage = 0;
  int peer = 0;
  bool done = false;
};

std::string describe(const PeerOp& o) {
  std::ostringstream os;
  os << "stage " << o.stage << (o.send ? " sends " : " receives ") << (o.grad ? "the gradient" : "the activation")
     << " of microbatch " << o.microbatch << (o.send ? " to" : " from") << " stage " << o.peer;
  return os.str();
}

std::vector<PeerOp> expand(const Transfer& t, int stage, const StageTopology& topo) {
  const bool send = t.kind == Kind::SendAct || t.kind == Kind::SendGrad;
  const bool grad = t.kind == Kind::SendGrad || t.kind == Kind::RecvGrad;
  const bool downstream = t.kind == Kind::SendAct || t.kind == Kind::RecvGrad;  // peers are consumers
  std::vector<PeerOp> out;
  for (int peer : downstream ? topo.consumers[stage] : topo.producers(stage))
    out.push_back({send, grad, t.microbatch, stage, peer, false});
  return out;
}

// What a stage holds of one microbatch between its forward and backward.
enum class Held { Nothing, Checkpoint, Kept, Full };

double bytes_of(Held h, const ActivationCosts& c) {
  switch (h) {
    case Held::Nothing: return 0;
    case Held::Checkpoint: return c.checkpoint;
    case Held::Kept: return c.kept;
    case Held::Full: return c.full;
  }
  return 0;
}

struct StageState {
  std::vector<int> forwarded, backwarded, recomputed;  // per microbatch: times done
  std::vector<int> acts_received, grads_received;      // per microbatch: peers heard from
  std::vector<Held> held;                              // per microbatch
  int in_flight = 0, peak = 0;
  double held_bytes = 0, peak_bytes = 0;

  explicit StageState(int microbatches)
      : forwarded(microbatches), backwarded(microbatches), recomputed(microbatches),
        acts_received(microbatches), grads_received(microbatches), held(microbatches, Held::Nothing) {}
};

// One pipeline rank: it runs its program one instruction at a time, for
// every stage (model chunk) it holds.
struct RankState {
  size_t pc = 0;
  std::vector<PeerOp> posted;  // the current Communicate's (or Recompute's) transfers
  bool posted_valid = false;
  double held_bytes = 0, peak_bytes = 0;  // all its stages together
  bool reduced = false, stepped = false;
};

// Who runs which stage: rank r's chunk c is stage c·p + r.
struct Placement {
  int ranks = 1, chunks = 1;
  int stage(int rank, int chunk) const { return stage_of_chunk(chunk, rank, ranks); }
  int rank_of(int stage) const { return stage % ranks; }
};

class Play {
 public:
  Play(const std::vector<std::vector<Instruction>>& program, int microbatches, const StageTopology& topology,
       SendMode mode, std::vector<ActivationCosts> costs, Placement placement)
      : program_(program), m_(microbatches), topo_(topology), mode_(mode), cost_(std::move(costs)), at_(placement),
        stages_(topology.stages(), StageState(microbatches)), ranks_(placement.ranks) {}

  ScheduleReport run();

 private:
  std::string where(int r) const;
  int stage_of(int r, const Instruction& ins) const;
  void hold(int r, int stage, int mb, Held after);
  void post(int r, const Instruction& ins);
  // Phase 1: rank r runs (or posts) its current instruction.
  void step(int r);
  // Phase 2: posted transfers meet their peers'.
  void exchange();
  // Phase 3: batches whose transfers all completed let their rank move on.
  void complete();
  std::string deadlock() const;

  const std::vector<std::vector<Instruction>>& program_;
  int m_;
  const StageTopology& topo_;
  SendMode mode_;
  std::vector<ActivationCosts> cost_;
  Placement at_;
  std::vector<StageState> stages_;
  std::vector<RankState> ranks_;
  std::map<std::tuple<bool, int, int, int>, int> mailbox_;  // buffered sends not yet received
  bool progress_ = false;
};

std::string Play::where(int r) const {
  std::ostringstream os;
  const Instruction& ins = program_[r][ranks_[r].pc];
  if (at_.chunks == 1)
    os << "stage " << r;
  else
    os << "rank " << r << " (stage " << stage_of(r, ins) << ")";
  os << ", instruction " << ranks_[r].pc << " (" << to_string(ins) << ")";
  return os.str();
}

int Play::stage_of(int r, const Instruction& ins) const { return at_.stage(r, ins.chunk); }

void Play::hold(int r, int stage, int mb, Held after) {
  StageState& x = stages_[stage];
  const double delta = bytes_of(after, cost_[stage]) - bytes_of(x.held[mb], cost_[stage]);
  x.held[mb] = after;
  x.held_bytes += delta;
  x.peak_bytes = std::max(x.peak_bytes, x.held_bytes);
  ranks_[r].held_bytes += delta;
  ranks_[r].peak_bytes = std::max(ranks_[r].peak_bytes, ranks_[r].held_bytes);
}

// Posts a batch's transfers; the rank waits for them in phase 3.
void Play::post(int r, const Instruction& ins) {
  RankState& y = ranks_[r];
  for (const Transfer& t : ins.transfers) {
    const int stage = at_.stage(r, t.chunk);
    const StageState& x = stages_[stage];
    if (t.kind == Kind::SendAct)
      TORCH_CHECK(x.forwarded[t.microbatch], where(r), ": sends microbatch ", t.microbatch,
                  "'s activations before forwarding it");
    if (t.kind == Kind::SendGrad)
      TORCH_CHECK(x.backwarded[t.microbatch], where(r), ": sends microbatch ", t.microbatch,
                  "'s gradients before its backward");
    for (PeerOp& o : expand(t, stage, topo_)) y.posted.push_back(o);
  }
  y.posted_valid = true;
  progress_ = true;
}

void Play::step(int r) {
  RankState& y = ranks_[r];
  const Instruction& ins = program_[r][y.pc];
  const int mb = ins.microbatch;
  const bool compute = is_forward(ins.op) || ins.op == Instruction::Op::Recompute ||
                       ins.op == Instruction::Op::Backward;
  const int stage = stage_of(r, ins);
  if (compute) {
    TORCH_CHECK(ins.chunk >= 0 && ins.chunk < at_.chunks, where(r), ": no such model chunk (the rank holds ",
                at_.chunks, ")");
    TORCH_CHECK(mb >= 0 && mb < m_, where(r), ": no such microbatch");
  }
  StageState* x = compute ? &stages_[stage] : nullptr;
  switch (ins.op) {
    case Instruction::Op::Forward:
    case Instruction::Op::ForwardCheckpoint:
      TORCH_CHECK(x->forwarded[mb] == 0, where(r), ": microbatch ", mb, " is forwarded twice");
      TORCH_CHECK(x->acts_received[mb] == static_cast<int>(topo_.producers(stage).size()), where(r),
                  ": forwards microbatch ", mb, " before receiving its activations");
      x->forwarded[mb] = 1;
      x->peak = std::max(x->peak, ++x->in_flight);
      hold(r, stage, mb, ins.op == Instruction::Op::Forward ? Held::Kept : Held::Checkpoint);
      break;
    case Instruction::Op::Recompute:
      if (y.posted_valid) return;  // recomputed; still waiting for its transfers
      TORCH_CHECK(x->forwarded[mb] == 1 && x->backwarded[mb] == 0, where(r), ": recomputes microbatch ", mb,
                  " outside its forward and backward");
      TORCH_CHECK(x->recomputed[mb] == 0, where(r), ": microbatch ", mb, " is recomputed twice");
      x->recomputed[mb] = 1;
      hold(r, stage, mb, Held::Full);
      if (!ins.transfers.empty()) {
        post(r, ins);
        return;
      }
      break;
    case Instruction::Op::Backward:
      TORCH_CHECK(x->forwarded[mb] == 1, where(r), ": backward of microbatch ", mb, " before its forward");
      TORCH_CHECK(x->backwarded[mb] == 0, where(r), ": microbatch ", mb, " is backwarded twice");
      TORCH_CHECK(x->grads_received[mb] == static_cast<int>(topo_.consumers[stage].size()), where(r),
                  ": backward of microbatch ", mb, " before receiving its gradients");
      x->backwarded[mb] = 1;
      --x->in_flight;
      hold(r, stage, mb, Held::Nothing);
      break;
    case Instruction::Op::ReduceGrads:
      for (int c = 0; c < at_.chunks; ++c)
        for (int k = 0; k < m_; ++k)
          TORCH_CHECK(stages_[at_.stage(r, c)].backwarded[k] == 1, where(r),
                      ": reduces gradients before the backward of microbatch ", k,
                      at_.chunks > 1 ? " on stage " + std::to_string(at_.stage(r, c)) : std::string());
      TORCH_CHECK(!y.reduced, where(r), ": reduces gradients twice");
      y.reduced = true;
      break;
    case Instruction::Op::OptimizerStep:
      TORCH_CHECK(y.reduced && !y.stepped, where(r), ": the optimizer step must follow ReduceGrads, once");
      TORCH_CHECK(y.pc + 1 == program_[r].size(), where(r), ": the optimizer step must be the last instruction");
      y.stepped = true;
      break;
    case Instruction::Op::Communicate:
      if (!y.posted_valid) post(r, ins);  // else still waiting
      return;
  }
  ++y.pc;
  progress_ = true;
}

void Play::exchange() {
  // Buffered sends, and every transfer between two stages of one rank, go
  // through the mailbox: the send completes at once, its receive finds it.
  auto buffered = [&](const PeerOp& o) {
    return mode_ == SendMode::Buffered || at_.rank_of(o.stage) == at_.rank_of(o.peer);
  };
  for (auto& y : ranks_)
    for (PeerOp& o : y.posted)
      if (o.send && !o.done && buffered(o)) {
        o.done = true;
        mailbox_[{o.grad, o.microbatch, o.stage, o.peer}]++;
        progress_ = true;
      }
  for (auto& y : ranks_)
    for (PeerOp& r : y.posted) {
      if (r.send || r.done || !buffered(r)) continue;
      auto it = mailbox_.find({r.grad, r.microbatch, r.peer, r.stage});
      if (it == mailbox_.end() || it->second == 0) continue;
      --it->second;
      r.done = true;
      (r.grad ? stages_[r.stage].grads_received : stages_[r.stage].acts_received)[r.microbatch]++;
      progress_ = true;
    }
  for (auto& y : ranks_)
    for (PeerOp& o : y.posted) {
      if (o.done || !o.send) continue;
      for (PeerOp& r : ranks_[at_.rank_of(o.peer)].posted)
        if (!r.done && !r.send && r.grad == o.grad && r.microbatch == o.microbatch && r.stage == o.peer &&
            r.peer == o.stage) {
          o.done = r.done = true;
          (o.grad ? stages_[o.peer].grads_received : stages_[o.peer].acts_received)[o.microbatch]++;
          progress_ = true;
          break;
        }
    }
}

void Play::complete() {
  for (auto& y : ranks_) {
    if (!y.posted_valid) continue;
    bool all = true;
    for (const PeerOp& o : y.posted) all = all && o.done;
    if (!all) continue;
    y.posted.clear();
    y.posted_valid = false;
    ++y.pc;
    progress_ = true;
  }
}

std::string Play::deadlock() const {
  std::ostringstream os;
  os << "the schedule deadlocks under " << (mode_ == SendMode::Blocking ? "blocking" : "buffered")
     << " point-to-point:";
  for (int r = 0; r < at_.ranks; ++r) {
    if (ranks_[r].pc >= program_[r].size()) continue;
    os << "\n  " << where(r) << " waits:";
    for (const PeerOp& o : ranks_[r].posted)
      if (!o.done) os << " " << describe(o) << ";";
  }
  return os.str();
}

ScheduleReport Play::run() {
  ScheduleReport report;
  for (;;) {
    progress_ = false;
    bool finished = true;
    for (int r = 0; r < at_.ranks; ++r) {
      if (ranks_[r].pc >= program_[r].size()) continue;
      finished = false;
      step(r);
    }
    if (finished) break;
    ++report.rounds;
    exchange();
    complete();
    TORCH_CHECK(progress_, deadlock());
  }
  for (int s = 0; s < topo_.stages(); ++s) {
    const StageState& x = stages_[s];
    for (int mb = 0; mb < m_; ++mb)
      TORCH_CHECK(x.forwarded[mb] == 1 && x.backwarded[mb] == 1, "stage ", s, " never ",
                  x.forwarded[mb] ? "backwards" : "forwards", " microbatch ", mb);
    report.peak_in_flight.push_back(x.peak);
    report.peak_activations.push_back(x.peak_bytes);
  }
  for (int r = 0; r < at_.ranks; ++r) {
    TORCH_CHECK(ranks_[r].stepped, at_.chunks == 1 ? "stage " : "rank ", r, " never runs the optimizer step");
    report.rank_peak_activations.push_back(ranks_[r].peak_bytes);
  }
  return report;
}

}  // namespace

ScheduleReport check_schedule(const std::vector<std::vector<Instruction>>& program, int microbatches,
                              const StageTopology& topology, SendMode mode,
                              const std::vector<ActivationCosts>& costs) {
  const int p = static_cast<int>(program.size());
  const int stages = topology.stages();
  TORCH_CHECK(p >= 1 && stages % p == 0, "the schedule has programs for ", p, " ranks, the topology ", stages,
              " stages: each rank must hold the same number of stages");
  const Placement at{p, stages / p};
  TORCH_CHECK(costs.empty() || static_cast<int>(costs.size()) == stages, "activation costs for ", costs.size(),
              " stages, the schedule has ", stages);
  TORCH_CHECK(microbatches >= 1, "need at least one microbatch");
  for (int s = 0; s < stages; ++s)
    for (int c : topology.consumers[s])
      TORCH_CHECK(c > s && c < stages, "stage ", s, " sends to stage ", c, ": data must flow to later stages");

  // Static matching: every (kind, microbatch, from, to) sent exactly once and received exactly once.
  std::map<std::tuple<bool, int, int, int>, std::pair<int, int>> wires;  // -> (sends, receives)
  for (int r = 0; r < p; ++r)
    for (const Instruction& ins : program[r])
      for (const Transfer& t : ins.transfers) {
        TORCH_CHECK(t.chunk >= 0 && t.chunk < at.chunks, "rank ", r, ": ", to_string(t), " names model chunk ",
                    t.chunk, "; each rank holds ", at.chunks);
        const int s = at.stage(r, t.chunk);
        TORCH_CHECK(t.microbatch >= 0 && t.microbatch < microbatches, "stage ", s, ": ", to_string(t),
                    " names a microbatch outside [0, ", microbatches, ")");
        for (const PeerOp& o : expand(t, s, topology)) {
          const int from = o.send ? s : o.peer, to = o.send ? o.peer : s;
          auto& w = wires[{o.grad, o.microbatch, from, to}];
          (o.send ? w.first : w.second)++;
        }
      }
  for (const auto& [key, count] : wires) {
    const auto [grad, mb, from, to] = key;
    const char* what = grad ? "gradient" : "activation";
    TORCH_CHECK(count.first == 1 && count.second == 1, "the ", what, " of microbatch ", mb, " from stage ", from,
                " to stage ", to, " is sent ", count.first, " time(s) and received ", count.second,
                " time(s); each must be exactly once");
  }
  for (int s = 0; s < stages; ++s)
    for (int c : topology.consumers[s])
      for (int mb = 0; mb < microbatches; ++mb)
        for (bool grad : {false, true})
          TORCH_CHECK(grad ? wires.count({true, mb, c, s}) : wires.count({false, mb, s, c}), "the ",
                      grad ? "gradient" : "activation", " of microbatch ", mb, " between stages ", s, " and ", c,
                      " is never transferred");

  return Play(program, microbatches, topology, mode,
              costs.empty() ? std::vector<ActivationCosts>(stages) : costs, at)
      .run();
}

}  // namespace trine
