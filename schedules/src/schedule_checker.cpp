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

// One transfer with one peer: what actually goes over a wire.
struct PeerOp {
  bool send = false;
  bool grad = false;
  int microbatch = 0;
  int peer = 0;
  bool done = false;
};

std::string describe(const PeerOp& o, int stage) {
  std::ostringstream os;
  os << "stage " << stage << (o.send ? " sends " : " receives ") << (o.grad ? "the gradient" : "the activation")
     << " of microbatch " << o.microbatch << (o.send ? " to" : " from") << " stage " << o.peer;
  return os.str();
}

std::vector<PeerOp> expand(const Transfer& t, int stage, const StageTopology& topo) {
  const bool send = t.kind == Kind::SendAct || t.kind == Kind::SendGrad;
  const bool grad = t.kind == Kind::SendGrad || t.kind == Kind::RecvGrad;
  const bool downstream = t.kind == Kind::SendAct || t.kind == Kind::RecvGrad;  // peers are consumers
  std::vector<PeerOp> out;
  for (int peer : downstream ? topo.consumers[stage] : topo.producers(stage))
    out.push_back({send, grad, t.microbatch, peer, false});
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
  size_t pc = 0;
  std::vector<PeerOp> posted;  // the current Communicate's (or Recompute's) transfers
  bool posted_valid = false;
  std::vector<int> forwarded, backwarded, recomputed;  // per microbatch: times done
  std::vector<int> acts_received, grads_received;      // per microbatch: peers heard from
  std::vector<Held> held;                              // per microbatch
  int in_flight = 0, peak = 0;
  double held_bytes = 0, peak_bytes = 0;
  bool reduced = false, stepped = false;

  // Microbatch `mb` goes from what it holds to `after`.
  void hold(int mb, Held after, const ActivationCosts& c) {
    held_bytes += bytes_of(after, c) - bytes_of(held[mb], c);
    held[mb] = after;
    peak_bytes = std::max(peak_bytes, held_bytes);
  }
};

}  // namespace

ScheduleReport check_schedule(const std::vector<std::vector<Instruction>>& program, int microbatches,
                              const StageTopology& topology, SendMode mode,
                              const std::vector<ActivationCosts>& costs) {
  const int p = static_cast<int>(program.size());
  TORCH_CHECK(costs.empty() || static_cast<int>(costs.size()) == p, "activation costs for ", costs.size(),
              " stages, the schedule has ", p);
  const std::vector<ActivationCosts> cost = costs.empty() ? std::vector<ActivationCosts>(p) : costs;
  TORCH_CHECK(p == topology.stages(), "the schedule has ", p, " stages, the topology ", topology.stages());
  TORCH_CHECK(microbatches >= 1, "need at least one microbatch");
  for (int s = 0; s < p; ++s)
    for (int c : topology.consumers[s])
      TORCH_CHECK(c > s && c < p, "stage ", s, " sends to stage ", c, ": data must flow to later stages");

  // Static matching: every (kind, microbatch, from, to) sent exactly once and received exactly once.
  std::map<std::tuple<bool, int, int, int>, std::pair<int, int>> wires;  // -> (sends, receives)
  for (int s = 0; s < p; ++s)
    for (const Instruction& ins : program[s])
      for (const Transfer& t : ins.transfers) {
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
  for (int s = 0; s < p; ++s)
    for (int c : topology.consumers[s])
      for (int mb = 0; mb < microbatches; ++mb)
        for (bool grad : {false, true})
          TORCH_CHECK(grad ? wires.count({true, mb, c, s}) : wires.count({false, mb, s, c}), "the ", grad ? "gradient" : "activation", " of microbatch ", mb,
                      " between stages ", s, " and ", c, " is never transferred");

  // Play it with blocking point-to-point.
  std::vector<StageState> st(p);
  for (auto& x : st) {
    x.forwarded.assign(microbatches, 0);
    x.backwarded.assign(microbatches, 0);
    x.recomputed.assign(microbatches, 0);
    x.held.assign(microbatches, Held::Nothing);
    x.acts_received.assign(microbatches, 0);
    x.grads_received.assign(microbatches, 0);
  }
  auto where = [&](int s) {
    std::ostringstream os;
    os << "stage " << s << ", instruction " << st[s].pc << " (" << to_string(program[s][st[s].pc]) << ")";
    return os.str();
  };
  ScheduleReport report;
  std::map<std::tuple<bool, int, int, int>, int> mailbox;  // buffered sends not yet received
  for (;;) {
    bool progress = false, finished = true;
    // 1. Compute instructions run; Communicate instructions post their transfers.
    for (int s = 0; s < p; ++s) {
      StageState& x = st[s];
      if (x.pc >= program[s].size()) continue;
      finished = false;
      const Instruction& ins = program[s][x.pc];
      const int mb = ins.microbatch;
      const int n_producers = static_cast<int>(topology.producers(s).size());
      const int n_consumers = static_cast<int>(topology.consumers[s].size());
      // Posts a batch's transfers; the stage waits for them in phase 3.
      auto post = [&]() {
        for (const Transfer& t : ins.transfers) {
          if (t.kind == Kind::SendAct)
            TORCH_CHECK(x.forwarded[t.microbatch], where(s), ": sends microbatch ", t.microbatch,
                        "'s activations before forwarding it");
          if (t.kind == Kind::SendGrad)
            TORCH_CHECK(x.backwarded[t.microbatch], where(s), ": sends microbatch ", t.microbatch,
                        "'s gradients before its backward");
          for (PeerOp& o : expand(t, s, topology)) x.posted.push_back(o);
        }
        x.posted_valid = true;
        progress = true;
      };
      switch (ins.op) {
        case Instruction::Op::Forward:
        case Instruction::Op::ForwardCheckpoint:
          TORCH_CHECK(mb >= 0 && mb < microbatches, where(s), ": no such microbatch");
          TORCH_CHECK(x.forwarded[mb] == 0, where(s), ": microbatch ", mb, " is forwarded twice");
          TORCH_CHECK(x.acts_received[mb] == n_producers, where(s), ": forwards microbatch ", mb,
                      " before receiving its activations");
          x.forwarded[mb] = 1;
          x.peak = std::max(x.peak, ++x.in_flight);
          x.hold(mb, ins.op == Instruction::Op::Forward ? Held::Kept : Held::Checkpoint, cost[s]);
          break;
        case Instruction::Op::Recompute:
          if (x.posted_valid) continue;  // recomputed; still waiting for its transfers
          TORCH_CHECK(mb >= 0 && mb < microbatches, where(s), ": no such microbatch");
          TORCH_CHECK(x.forwarded[mb] == 1 && x.backwarded[mb] == 0, where(s), ": recomputes microbatch ", mb,
                      " outside its forward and backward");
          TORCH_CHECK(x.recomputed[mb] == 0, where(s), ": microbatch ", mb, " is recomputed twice");
          x.recomputed[mb] = 1;
          x.hold(mb, Held::Full, cost[s]);
          if (!ins.transfers.empty()) {
            post();
            continue;
          }
          break;
        case Instruction::Op::Backward:
          TORCH_CHECK(mb >= 0 && mb < microbatches, where(s), ": no such microbatch");
          TORCH_CHECK(x.forwarded[mb] == 1, where(s), ": backward of microbatch ", mb, " before its forward");
          TORCH_CHECK(x.backwarded[mb] == 0, where(s), ": microbatch ", mb, " is backwarded twice");
          TORCH_CHECK(x.grads_received[mb] == n_consumers, where(s), ": backward of microbatch ", mb,
                      " before receiving its gradients");
          x.backwarded[mb] = 1;
          --x.in_flight;
          x.hold(mb, Held::Nothing, cost[s]);
          break;
        case Instruction::Op::ReduceGrads:
          for (int k = 0; k < microbatches; ++k)
            TORCH_CHECK(x.backwarded[k] == 1, where(s), ": reduces gradients before the backward of microbatch ", k);
          TORCH_CHECK(!x.reduced, where(s), ": reduces gradients twice");
          x.reduced = true;
          break;
        case Instruction::Op::OptimizerStep:
          TORCH_CHECK(x.reduced && !x.stepped, where(s), ": the optimizer step must follow ReduceGrads, once");
          TORCH_CHECK(x.pc + 1 == program[s].size(), where(s), ": the optimizer step must be the last instruction");
          x.stepped = true;
          break;
        case Instruction::Op::Communicate:
          if (!x.posted_valid) post();  // else still waiting
          continue;
      }
      ++x.pc;
      progress = true;
    }
    if (finished) break;
    ++report.rounds;
    // 2. Posted transfers meet their peers' matching transfers.
    if (mode == SendMode::Buffered) {
      for (int s = 0; s < p; ++s)
        for (PeerOp& o : st[s].posted)
          if (o.send && !o.done) {
            o.done = true;
            mailbox[{o.grad, o.microbatch, s, o.peer}]++;
            progress = true;
          }
      for (int s = 0; s < p; ++s)
        for (PeerOp& r : st[s].posted) {
          if (r.send || r.done) continue;
          auto it = mailbox.find({r.grad, r.microbatch, r.peer, s});
          if (it == mailbox.end() || it->second == 0) continue;
          --it->second;
          r.done = true;
          (r.grad ? st[s].grads_received : st[s].acts_received)[r.microbatch]++;
          progress = true;
        }
    }
    for (int s = 0; s < p; ++s) {
      for (PeerOp& o : st[s].posted) {
        if (o.done || !o.send) continue;
        for (PeerOp& r : st[o.peer].posted)
          if (!r.done && !r.send && r.grad == o.grad && r.microbatch == o.microbatch && r.peer == s) {
            o.done = r.done = true;
            (o.grad ? st[o.peer].grads_received : st[o.peer].acts_received)[o.microbatch]++;
            progress = true;
            break;
          }
      }
    }
    // 3. Batches whose transfers all completed let their stage move on.
    for (int s = 0; s < p; ++s) {
      StageState& x = st[s];
      if (!x.posted_valid) continue;
      bool all = true;
      for (const PeerOp& o : x.posted) all = all && o.done;
      if (!all) continue;
      x.posted.clear();
      x.posted_valid = false;
      ++x.pc;
      progress = true;
    }
    if (!progress) {
      std::ostringstream os;
      os << "the schedule deadlocks under " << (mode == SendMode::Blocking ? "blocking" : "buffered")
         << " point-to-point:";
      for (int s = 0; s < p; ++s) {
        if (st[s].pc >= program[s].size()) continue;
        os << "\n  " << where(s) << " waits:";
        for (const PeerOp& o : st[s].posted)
          if (!o.done) os << " " << describe(o, s) << ";";
      }
      TORCH_CHECK(false, os.str());
    }
  }
  for (int s = 0; s < p; ++s) {
    for (int mb = 0; mb < microbatches; ++mb)
      TORCH_CHECK(st[s].forwarded[mb] == 1 && st[s].backwarded[mb] == 1, "stage ", s, " never ",
                  st[s].forwarded[mb] ? "backwards" : "forwards", " microbatch ", mb);
    TORCH_CHECK(st[s].stepped, "stage ", s, " never runs the optimizer step");
    report.peak_in_flight.push_back(st[s].peak);
    report.peak_activations.push_back(st[s].peak_bytes);
  }
  return report;
}

}  // namespace trine
