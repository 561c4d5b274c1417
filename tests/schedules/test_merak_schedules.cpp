// Merak's recomputing 1F1B variants: each produces exactly the reference
// streams (tests/schedules/reference), every one is proven for p <= 16 and
// m <= 64 within its preconditions, and the checker reports what each stage
// holds in flight and in activation memory.
#include "trine/schedules/pipeline_schedule.h"
#include "trine/schedules/schedule_checker.h"
#include "trine/schedules/schedule_registry.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <sstream>

namespace trine {
namespace {

const char* const kRecomputeSchedules[] = {"pre_recompute_1f1b", "last_no_recompute_1f1b", "shifted_critical_path"};

int min_stages(const std::string& name) { return name == "shifted_critical_path" ? 3 : 2; }

// A program in the reference notation: "F*5", "R5+rG5", "sA3|rG0"; the
// reduce and step instructions (not in the reference) left out.
std::string reference_notation(const std::vector<Instruction>& program) {
  auto batch = [](const std::vector<Transfer>& ts) {
    std::string s;
    for (size_t k = 0; k < ts.size(); ++k) s += (k ? "|" : "") + to_string(ts[k]);
    return s;
  };
  std::string out;
  for (const Instruction& ins : program) {
    std::string token;
    switch (ins.op) {
      case Instruction::Op::Forward: token = "F" + std::to_string(ins.microbatch); break;
      case Instruction::Op::ForwardCheckpoint: token = "F*" + std::to_string(ins.microbatch); break;
      case Instruction::Op::Backward: token = "B" + std::to_string(ins.microbatch); break;
      case Instruction::Op::Recompute:
        token = "R" + std::to_string(ins.microbatch) + (ins.transfers.empty() ? "" : "+" + batch(ins.transfers));
        break;
      case Instruction::Op::Communicate: token = batch(ins.transfers); break;
      case Instruction::Op::ReduceGrads:
      case Instruction::Op::OptimizerStep: continue;
    }
    out += (out.empty() ? "" : " ") + token;
  }
  return out;
}

struct ReferenceStream {
  std::string schedule;  // trine's name
  int stages = 0, microbatches = 0, stage = 0;
  std::string stream;  // without Merak's "rst" bookkeeping
};

std::vector<ReferenceStream> read_reference(const std::string& file) {
  static const std::map<std::string, std::string> names = {
      {"MergeP2PTrainSchedule", "1f1b"},
      {"FullCriticalPathTrainSchedule", "shifted_critical_path"},
      {"PreRecomputeTrainSchedule", "pre_recompute_1f1b"},
      {"LastNoRecomputeTrainSchedule", "last_no_recompute_1f1b"}};
  std::ifstream in(std::string(TRINE_SCHEDULE_REFERENCE_DIR) + "/" + file);
  EXPECT_TRUE(in.good()) << file;
  const std::regex header(R"(===== (\w+) p=(\d+) m=(\d+))"), stage(R"(\s*stage (\d+) \[buf=\d+\]: (.*))");
  std::vector<ReferenceStream> out;
  ReferenceStream current;
  std::string line;
  std::smatch match;
  while (std::getline(in, line)) {
    if (std::regex_match(line, match, header)) {
      current.schedule = names.at(match[1]);
      current.stages = std::stoi(match[2]);
      current.microbatches = std::stoi(match[3]);
    } else if (std::regex_match(line, match, stage)) {
      current.stage = std::stoi(match[1]);
      std::istringstream tokens(match[2].str());
      std::string token;
      current.stream.clear();
      while (tokens >> token)
        if (token != "rst") current.stream += (current.stream.empty() ? "" : " ") + token;
      out.push_back(current);
    }
  }
  return out;
}

TEST(MerakSchedules, ProduceTheReferenceStreamsExactly) {
  int compared = 0;
  for (const char* file : {"merak_variants_p4_m8.txt", "shifted_critical_path_p8_m12.txt"})
    for (const ReferenceStream& ref : read_reference(file)) {
      SCOPED_TRACE(ref.schedule + " p=" + std::to_string(ref.stages) + " m=" + std::to_string(ref.microbatches) +
                   " stage " + std::to_string(ref.stage));
      EXPECT_EQ(reference_notation(stage_schedule(ref.schedule, ref.stages, ref.microbatches, ref.stage)),
                ref.stream);
      ++compared;
    }
  EXPECT_EQ(compared, 4 * 4 + 8);
}

TEST(MerakSchedules, EveryScheduleUpTo16StagesAnd64MicrobatchesIsProven) {
  for (const std::string name : kRecomputeSchedules)
    for (int p = min_stages(name); p <= 16; ++p)
      for (int m = p; m <= 64; ++m) {
        SCOPED_TRACE(name + " p=" + std::to_string(p) + " m=" + std::to_string(m));
        const auto r = check_schedule(pipeline_schedule(name, p, m), m, StageTopology::chain(p));
        for (int s = 0; s < p; ++s) {
          // In flight as under 1F1B, except stage p-2 of the shifted critical
          // path, which hoists its third forward.
          const int expected = name == "shifted_critical_path" && s == p - 2 ? 3 : p - s;
          ASSERT_EQ(r.peak_in_flight[s], expected) << "stage " << s;
        }
      }
}

TEST(MerakSchedules, PreconditionsAreErrorsThatSayWhatToDo) {
  auto error = [](const std::string& name, int p, int m) -> std::string {
    try {
      pipeline_schedule(name, p, m);
    } catch (const c10::Error& e) {
      return e.what_without_backtrace();
    }
    return "";
  };
  EXPECT_NE(error("shifted_critical_path", 2, 8).find("needs at least 3 pipeline stages"), std::string::npos);
  EXPECT_NE(error("pre_recompute_1f1b", 1, 8).find("use \"1f1b\""), std::string::npos);
  const auto few = error("last_no_recompute_1f1b", 4, 3);
  EXPECT_NE(few.find("at least as many microbatches as stages, got 3 microbatches for 4 stages"), std::string::npos)
      << few;
  for (const std::string name : kRecomputeSchedules) EXPECT_TRUE(find_schedule(name).needs_recompute) << name;
  EXPECT_FALSE(find_schedule("1f1b").needs_recompute);
}

// With unit costs (full = kept = 1, checkpoint = 0), peak_activations counts
// the microbatches a stage holds whole between instructions: F* holds none
// until its R.
TEST(MerakSchedules, PeakActivationsCountWhatEachForwardKeeps) {
  const int p = 4, m = 8;
  const auto topo = StageTopology::chain(p);
  const auto plain = check_schedule(pipeline_schedule("1f1b", p, m), m, topo);
  const auto shifted = check_schedule(pipeline_schedule("shifted_critical_path", p, m), m, topo);
  for (int s = 0; s < p; ++s) EXPECT_DOUBLE_EQ(plain.peak_activations[s], p - s) << s;
  // Stage p-2 holds three microbatches in flight, two of them only as inputs
  // until each is recomputed just before its backward: whole, at most two.
  EXPECT_EQ(shifted.peak_in_flight[2], 3);
  EXPECT_DOUBLE_EQ(shifted.peak_activations[2], 2);
  // Recomputation everywhere (a forward keeps 0.1 of the whole): stage 0 of
  // 1F1B holds 4 x 0.1; under the shifted critical path stage 0 recomputes
  // its drain microbatches ahead of their backwards (R: whole again) and
  // stage 2 holds microbatch 2 (0.1) and, after R0, microbatch 0 whole and 1 as
  // its outputs (checkpoint 0.05).
  const std::vector<ActivationCosts> recompute_all(p, ActivationCosts{1, 0.1, 0.05});
  const auto full = check_schedule(pipeline_schedule("1f1b", p, m), m, topo, SendMode::Blocking, recompute_all);
  EXPECT_NEAR(full.peak_activations[0], 4 * 0.1, 1e-12);
  EXPECT_NEAR(full.peak_activations[3], 0.1, 1e-12);
  const auto shifted_full = check_schedule(pipeline_schedule("shifted_critical_path", p, m), m, topo,
                                           SendMode::Blocking, recompute_all);
  EXPECT_NEAR(shifted_full.peak_activations[2], 1 + 0.1 + 0.05, 1e-12);
  // Costs must come one per stage.
  EXPECT_THROW(check_schedule(pipeline_schedule("1f1b", p, m), m, topo, SendMode::Blocking,
                              std::vector<ActivationCosts>(2)),
               c10::Error);
}

TEST(MerakSchedules, CheckerRejectsMisplacedRecomputes) {
  const auto program = gpipe_schedule(1, 2, 0);  // F0 F1 B0 B1 reduce step
  auto twice = program;
  twice.insert(twice.begin() + 2, Instruction::recompute(0));
  twice.insert(twice.begin() + 2, Instruction::recompute(0));
  EXPECT_THROW(
      {
        try {
          check_schedule({twice}, 2, StageTopology::chain(1));
        } catch (const c10::Error& e) {
          EXPECT_NE(std::string(e.what_without_backtrace()).find("recomputed twice"), std::string::npos);
          throw;
        }
      },
      c10::Error);
  auto early = program;
  early.insert(early.begin(), Instruction::recompute(1));
  EXPECT_THROW(check_schedule({early}, 2, StageTopology::chain(1)), c10::Error);
}

}  // namespace
}  // namespace trine
