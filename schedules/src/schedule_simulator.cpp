#include "trine/schedules/schedule_simulator.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <tuple>

namespace trine {

namespace {

using Kind = Transfer::Kind;
using Op = Instruction::Op;
constexpr double kNever = std::numeric_limits<double>::infinity();

// Mean 1, coefficient of variation `cv`: sigma^2 = ln(1 + cv^2), mu = -sigma^2 / 2.
std::lognormal_distribution<double> jitter_distribution(double cv) {
  const double sigma2 = std::log1p(cv * cv);
  return std::lognormal_distribution<double>(-sigma2 / 2, std::sqrt(sigma2));
}

// How far a microbatch's forward went on one stage.
enum class Kept { Nothing, Inputs, Policy, Whole };  // after -, F*, F, R

// One transfer to or from one peer stage, once posted.
struct Wire {
  bool send = false, grad = false;
  int microbatch = 0, stage = 0, peer = 0;
  double posted = 0;
  double done = kNever;  // when this side completes
};

struct RankClock {
  size_t pc = 0;
  enum class Phase { Ready, Computing, Waiting, AtSync, Done } phase = Phase::Ready;
  double started = 0;    // the current instruction's
  double remaining = 0;  // compute work left
  double computed = 0;   // compute time of the current instruction
  double wait_until = -1;  // ReduceGrads: its end; -1 none
  std::vector<Wire> wires;  // posted, not yet complete
  // Receives posted ahead of the instruction (by index) that waits for them,
  // and which of its transfers they are.
  std::map<size_t, std::pair<std::vector<Transfer>, std::vector<Wire>>> ahead;
  bool post_pending = false;  // a Communicate posts its transfers once its overhead is spent
  double final_backward_start = 0;
  int backwards_left = 0;  // in the whole step, all chunks
  double busy = 0;
};

class TimedPlay {
 public:
  TimedPlay(const std::vector<std::vector<Instruction>>& program, int microbatches, const StageTopology& topology,
            const std::vector<StageTimes>& times, const SimulationOptions& options)
      : program_(program), topo_(topology), times_(times), options_(options),
        ranks_(static_cast<int>(program.size())), chunks_(topology.stages() / ranks_),
        kept_(topology.stages(), std::vector<Kept>(microbatches, Kept::Nothing)), clocks_(ranks_),
        random_(options.seed), jitter_(jitter_distribution(options.jitter)) {
    for (int r = 0; r < ranks_; ++r)
      for (const Instruction& ins : program_[r])
        if (ins.op == Op::Backward) ++clocks_[r].backwards_left;
  }

  SimulationReport run();

 private:
  int rank_of(int stage) const { return stage % ranks_; }
  int stage_of(int r, int chunk) const { return stage_of_chunk(chunk, r, ranks_); }
  const Instruction& current(int r) const { return program_[r][clocks_[r].pc]; }
  double compute_time(int r, const Instruction& ins);
  double work_time(int r, const Instruction& ins);
  void post(int r, const std::vector<Transfer>& transfers);
  void post(int r, const Transfer& t, std::vector<Wire>& into);
  void post_receives_ahead(int r);
  void start(int r);
  void match();
  bool waiting_done(const RankClock& c) const;
  double wires_done(const RankClock& c) const;
  void finish(int r);
  void sync_and_step();
  double rate() const;
  void record(int r, char kind, int stage);

  const std::vector<std::vector<Instruction>>& program_;
  const StageTopology& topo_;
  const std::vector<StageTimes>& times_;
  const SimulationOptions& options_;
  int ranks_, chunks_;
  std::vector<std::vector<Kept>> kept_;  // stage -> microbatch
  std::vector<RankClock> clocks_;
  // buffered: (grad, mb, from, to) -> (when the send was posted, how long the data takes)
  std::map<std::tuple<bool, int, int, int>, std::pair<double, double>> arrivals_;
  double now_ = 0;
  std::vector<TimelineEvent> timeline_;
  std::mt19937_64 random_;
  std::lognormal_distribution<double> jitter_;
};

double TimedPlay::compute_time(int r, const Instruction& ins) {
  return work_time(r, ins) * (options_.jitter > 0 ? jitter_(random_) : 1.0);
}

double TimedPlay::work_time(int r, const Instruction& ins) {
  const int stage = stage_of(r, ins.chunk);
  const StageTimes& t = times_[stage];
  Kept& k = kept_[stage][ins.microbatch];
  const double redo = k == Kept::Inputs ? t.forward : k == Kept::Policy ? t.recompute : 0;
  switch (ins.op) {
    case Op::Forward: k = Kept::Policy; return t.forward;
    case Op::ForwardCheckpoint: k = Kept::Inputs; return t.forward;
    case Op::Recompute: k = Kept::Whole; return redo;
    case Op::Backward: k = Kept::Nothing; return t.backward + redo;
    default: return 0;
  }
}

void TimedPlay::post(int r, const Transfer& t, std::vector<Wire>& into) {
  const int stage = stage_of(r, t.chunk);
  const bool send = t.kind == Kind::SendAct || t.kind == Kind::SendGrad;
  const bool grad = t.kind == Kind::SendGrad || t.kind == Kind::RecvGrad;
  const bool downstream = t.kind == Kind::SendAct || t.kind == Kind::RecvGrad;
  for (int peer : downstream ? topo_.consumers[stage] : topo_.producers(stage))
    into.push_back({send, grad, t.microbatch, stage, peer, now_});
}

// The current instruction's transfers, less the receives posted ahead of it
// (whose wires join, posted when they were).
void TimedPlay::post(int r, const std::vector<Transfer>& transfers) {
  RankClock& c = clocks_[r];
  std::vector<Transfer> early;
  if (auto it = c.ahead.find(c.pc); it != c.ahead.end()) {
    early = std::move(it->second.first);
    for (Wire& w : it->second.second) c.wires.push_back(w);
    c.ahead.erase(it);
  }
  for (const Transfer& t : transfers)
    if (std::find(early.begin(), early.end(), t) == early.end()) post(r, t, c.wires);
}

// As the executor does before each instruction: the receives of the next
// instruction with transfers, where their shapes are known (a gradient's once
// its microbatch's forward ran here) and they come from another rank.
void TimedPlay::post_receives_ahead(int r) {
  RankClock& c = clocks_[r];
  size_t next = c.pc + 1;
  while (next < program_[r].size() && program_[r][next].transfers.empty()) ++next;
  if (next >= program_[r].size() || c.ahead.count(next)) return;
  std::pair<std::vector<Transfer>, std::vector<Wire>> posted;
  for (const Transfer& t : program_[r][next].transfers) {
    const int stage = stage_of(r, t.chunk);
    const bool act = t.kind == Kind::RecvAct;
    if (!act && t.kind != Kind::RecvGrad) continue;
    const auto peers = act ? topo_.producers(stage) : topo_.consumers[stage];
    if (std::any_of(peers.begin(), peers.end(), [&](int p) { return rank_of(p) == r; })) continue;
    if (!act && kept_[stage][t.microbatch] == Kept::Nothing) continue;
    posted.first.push_back(t);
    post(r, t, posted.second);
  }
  if (!posted.first.empty()) c.ahead[next] = std::move(posted);
}

void TimedPlay::record(int r, char kind, int stage) {
  const RankClock& c = clocks_[r];
  timeline_.push_back({r, stage, kind, to_string(current(r)), c.started, now_, c.computed});
}

void TimedPlay::start(int r) {
  RankClock& c = clocks_[r];
  const Instruction& ins = current(r);
  c.started = now_;
  c.computed = 0;
  if (options_.receives_ahead) post_receives_ahead(r);
  switch (ins.op) {
    case Op::Forward:
    case Op::ForwardCheckpoint:
    case Op::Recompute:
    case Op::Backward:
      if (ins.op == Op::Backward && --c.backwards_left == 0) c.final_backward_start = now_;
      if (ins.op == Op::Recompute) post(r, ins.transfers);
      c.computed = compute_time(r, ins);
      c.remaining = c.computed + options_.instruction_overhead;
      c.phase = RankClock::Phase::Computing;
      return;
    case Op::Communicate:
      if (options_.instruction_overhead > 0) {
        c.remaining = options_.instruction_overhead;
        c.post_pending = true;
        c.phase = RankClock::Phase::Computing;
        return;
      }
      post(r, ins.transfers);
      c.phase = RankClock::Phase::Waiting;
      return;
    case Op::ReduceGrads: {
      double reduce = 0;
      for (int chunk = 0; chunk < chunks_; ++chunk) reduce += times_[stage_of(r, chunk)].reduce;
      c.wait_until = std::max(now_, c.final_backward_start + reduce);
      c.phase = RankClock::Phase::Waiting;
      return;
    }
    case Op::OptimizerStep:
      c.phase = RankClock::Phase::AtSync;
      return;
  }
}

// Transfers meet: a receive completes when its data has arrived (under
// rendezvous, the data leaves once the receive is posted); a blocking send
// when its receive has taken it.
void TimedPlay::match() {
  auto through_memory = [&](const Wire& w) { return rank_of(w.stage) == rank_of(w.peer); };
  auto cost = [&](const Wire& send) {
    if (through_memory(send)) return 0.0;
    return send.grad ? times_[send.stage].gradient_transfer : times_[send.stage].activation_transfer;
  };
  const bool buffered = options_.mode == SendMode::Buffered;
  for (auto& c : clocks_)
    for (Wire& w : c.wires)
      if (w.send && w.done == kNever && (buffered || through_memory(w))) {
        arrivals_[{w.grad, w.microbatch, w.stage, w.peer}] = {w.posted, cost(w)};
        w.done = w.posted;
      }
  for (auto& c : clocks_)
    for (Wire& w : c.wires) {
      if (w.send || w.done != kNever) continue;
      auto it = arrivals_.find({w.grad, w.microbatch, w.peer, w.stage});
      if (it != arrivals_.end()) {
        const auto [sent, crossing] = it->second;
        w.done = options_.rendezvous ? std::max(w.posted, sent) + crossing : std::max(w.posted, sent + crossing);
        arrivals_.erase(it);
        continue;
      }
      if (buffered || through_memory(w)) continue;
      for (Wire& s : clocks_[rank_of(w.peer)].wires)
        if (s.send && s.done == kNever && s.grad == w.grad && s.microbatch == w.microbatch && s.stage == w.peer &&
            s.peer == w.stage) {
          s.done = w.done = std::max(s.posted, w.posted) + cost(s);
          break;
        }
    }
}

double TimedPlay::wires_done(const RankClock& c) const {
  double last = c.started;
  for (const Wire& w : c.wires) last = std::max(last, w.done);
  return last;
}

double TimedPlay::rate() const {
  const auto& speed = options_.speed;
  if (speed.empty()) return 1;
  int computing = 0;
  for (const auto& c : clocks_) computing += c.phase == RankClock::Phase::Computing;
  return speed[std::min<size_t>(std::max(computing, 1), speed.size()) - 1];
}

void TimedPlay::finish(int r) {
  RankClock& c = clocks_[r];
  const Instruction& ins = current(r);
  const int stage = ins.op == Op::Communicate || ins.op == Op::ReduceGrads ? -1 : stage_of(r, ins.chunk);
  static const std::map<Op, char> kinds = {{Op::Forward, 'F'}, {Op::ForwardCheckpoint, 'C'}, {Op::Recompute, 'R'},
                                           {Op::Backward, 'B'}, {Op::Communicate, 'T'}, {Op::ReduceGrads, 'G'}};
  record(r, kinds.at(ins.op), stage);
  c.wires.clear();
  c.wait_until = -1;
  ++c.pc;
  c.phase = c.pc < program_[r].size() ? RankClock::Phase::Ready : RankClock::Phase::Done;
}

// Every rank at its optimizer step: the world all-reduce, then each steps.
void TimedPlay::sync_and_step() {
  const double synced = now_ + options_.step_sync;
  double end = synced;
  for (int r = 0; r < ranks_; ++r) {
    RankClock& c = clocks_[r];
    double optimizer = 0;
    for (int chunk = 0; chunk < chunks_; ++chunk) optimizer += times_[stage_of(r, chunk)].optimizer;
    // Every rank steps at once.
    optimizer /= options_.speed.empty() ? 1.0 : options_.speed[std::min<size_t>(ranks_, options_.speed.size()) - 1];
    if (options_.step_sync > 0) timeline_.push_back({r, -1, 'S', "sync", now_, synced, 0});
    timeline_.push_back({r, -1, 'O', "step", synced, synced + optimizer, optimizer});
    c.busy += optimizer;
    end = std::max(end, synced + optimizer);
    ++c.pc;
    c.phase = RankClock::Phase::Done;
  }
  now_ = end;
}

SimulationReport TimedPlay::run() {
  constexpr double eps = 1e-12;
  for (;;) {
    // Start what can start, finish what has finished, until nothing changes at this instant.
    for (bool changed = true; changed;) {
      changed = false;
      for (int r = 0; r < ranks_; ++r)
        if (clocks_[r].phase == RankClock::Phase::Ready) {
          start(r);
          changed = true;
        }
      match();
      for (int r = 0; r < ranks_; ++r) {
        RankClock& c = clocks_[r];
        if (c.phase == RankClock::Phase::Computing && c.remaining <= eps) {
          c.remaining = 0;
          c.phase = RankClock::Phase::Waiting;
          if (c.post_pending) {
            c.post_pending = false;
            post(r, current(r).transfers);
            match();
          }
          changed = true;
        }
        if (c.phase == RankClock::Phase::Waiting && c.wait_until <= now_ + eps && wires_done(c) <= now_ + eps) {
          finish(r);
          changed = true;
        }
      }
      if (std::all_of(clocks_.begin(), clocks_.end(),
                      [](const RankClock& c) { return c.phase == RankClock::Phase::AtSync; })) {
        sync_and_step();
        changed = true;
      }
    }
    if (std::all_of(clocks_.begin(), clocks_.end(),
                    [](const RankClock& c) { return c.phase == RankClock::Phase::Done; }))
      break;
    // The next instant something happens.
    const double speed = rate();
    double next = kNever;
    for (const auto& c : clocks_) {
      if (c.phase == RankClock::Phase::Computing) next = std::min(next, now_ + c.remaining / speed);
      if (c.phase == RankClock::Phase::Waiting) next = std::min(next, std::max(c.wait_until, wires_done(c)));
    }
    // check_schedule proved the play finishes; an endless wait here is a bug.
    TORCH_INTERNAL_ASSERT(next < kNever && next > now_ - eps, "the timed play of a proven schedule stalls");
    for (auto& c : clocks_)
      if (c.phase == RankClock::Phase::Computing) {
        c.remaining -= (next - now_) * speed;
        c.busy += next - now_;
      }
    now_ = next;
  }
  SimulationReport report;
  report.makespan = now_;
  double busy = 0;
  for (const auto& c : clocks_) {
    report.busy.push_back(c.busy);
    busy += c.busy;
  }
  report.bubble = now_ > 0 ? 1 - busy / ranks_ / now_ : 0;
  report.timeline = std::move(timeline_);
  return report;
}

std::string escape_json(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out;
}

}  // namespace

std::vector<double> shared_cores_speed(double cores, int ranks) {
  TORCH_CHECK(cores > 0 && ranks >= 1, "shared cores need cores > 0 and ranks >= 1");
  std::vector<double> speed;
  for (int k = 1; k <= ranks; ++k) speed.push_back(std::min(1.0, cores / k));
  return speed;
}

SimulationReport simulate_schedule(const std::vector<std::vector<Instruction>>& program, int microbatches,
                                   const StageTopology& topology, const std::vector<StageTimes>& times,
                                   const SimulationOptions& options) {
  TORCH_CHECK(options.speed.empty() || static_cast<int>(options.speed.size()) >= static_cast<int>(program.size()),
              "the speed table has ", options.speed.size(), " entries; give one per number of ranks computing at "
              "once (", program.size(), ")");
  for (double v : options.speed) TORCH_CHECK(std::isfinite(v) && v > 0, "every speed must be finite and > 0");
  TORCH_CHECK(static_cast<int>(times.size()) == topology.stages(), "stage times for ", times.size(),
              " stages, the topology has ", topology.stages());
  for (size_t s = 0; s < times.size(); ++s) {
    const StageTimes& t = times[s];
    for (double v : {t.forward, t.backward, t.recompute, t.activation_transfer, t.gradient_transfer, t.reduce,
                     t.optimizer})
      TORCH_CHECK(std::isfinite(v) && v >= 0, "stage ", s, ": every time must be finite and >= 0");
  }
  TORCH_CHECK(std::isfinite(options.instruction_overhead) && options.instruction_overhead >= 0 &&
                  std::isfinite(options.step_sync) && options.step_sync >= 0,
              "instruction_overhead and step_sync must be finite and >= 0");
  TORCH_CHECK(std::isfinite(options.jitter) && options.jitter >= 0, "jitter must be finite and >= 0");
  ScheduleReport memory = check_schedule(program, microbatches, topology, options.mode, options.memory);
  SimulationReport report = TimedPlay(program, microbatches, topology, times, options).run();
  report.memory = std::move(memory);
  return report;
}

std::string chrome_trace(const std::vector<TimelineEvent>& timeline, double scale,
                         const std::vector<std::string>& rank_names) {
  std::ostringstream os;
  os << std::setprecision(12) << "{\"traceEvents\": [";
  bool first = true;
  for (size_t r = 0; r < rank_names.size(); ++r) {
    os << (first ? "\n" : ",\n") << "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": " << r
       << ", \"args\": {\"name\": \"" << escape_json(rank_names[r]) << "\"}}";
    first = false;
  }
  for (const TimelineEvent& e : timeline) {
    os << (first ? "\n" : ",\n") << "{\"name\": \"" << escape_json(e.name) << "\", \"cat\": \"" << e.kind
       << "\", \"ph\": \"X\", \"pid\": " << e.rank << ", \"tid\": 0, \"ts\": " << e.start * scale
       << ", \"dur\": " << (e.end - e.start) * scale << ", \"args\": {\"stage\": " << e.stage
       << ", \"step\": " << e.step << ", \"compute\": " << e.compute * scale << "}}";
    first = false;
  }
  os << "\n], \"displayTimeUnit\": \"ms\"}\n";
  return os.str();
}

}  // namespace trine
