// SRP and SCH reproduce the numbers of the paper's own code (ljcleo/moe-lrc) on the
// reference traces of ../shared/testdata: Mixtral-8x7B on GSM8K (traces/reference) and the
// trained tiny MoE on val-mix (tiny-moe/val-mix-lrc.json). Skips when the data is absent.
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "moex/trace.h"
#include "tests/test_util.h"

namespace moex {
namespace {

// A JSON value, enough for the reference files (objects, arrays, numbers).
struct Json {
  double num = 0;
  std::map<std::string, Json> obj;
  std::vector<Json> arr;
  const Json& operator[](const std::string& k) const { return obj.at(k); }
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}
  Json Parse() {
    Skip();
    Json v;
    if (s_[i_] == '{') {
      ++i_;
      Skip();
      while (s_[i_] != '}') {
        const std::string key = Str();
        Skip();
        ++i_;  // ':'
        v.obj[key] = Parse();
        Skip();
        if (s_[i_] == ',') ++i_;
        Skip();
      }
      ++i_;
    } else if (s_[i_] == '[') {
      ++i_;
      Skip();
      while (s_[i_] != ']') {
        v.arr.push_back(Parse());
        Skip();
        if (s_[i_] == ',') ++i_;
        Skip();
      }
      ++i_;
    } else if (s_[i_] == '"') {
      Str();
    } else {
      size_t used = 0;
      v.num = std::stod(s_.substr(i_, 40), &used);
      i_ += used;
    }
    return v;
  }

 private:
  void Skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  std::string Str() {
    Skip();
    const size_t e = s_.find('"', i_ + 1);
    std::string out = s_.substr(i_ + 1, e - i_ - 1);
    i_ = e + 1;
    return out;
  }
  const std::string& s_;
  size_t i_ = 0;
};

Json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  return JsonParser(text).Parse();
}

// Compares every SRP and SCH figure of `rep` (m = 4, 16, 64) with the reference file.
void ExpectMatches(const LrcReport& rep, const Json& ref) {
  const std::vector<int> ms = {4, 16, 64};
  ASSERT_EQ(rep.header.num_experts, ref["num_experts"].num);
  ASSERT_EQ(rep.header.top_k, ref["top_k"].num);
  ASSERT_EQ(rep.header.num_layers, ref["num_layers"].num);
  ASSERT_EQ(rep.tokens, ref["tokens"].num);
  double worst = 0;
  auto check = [&](const LrcFigures& f, const Json& r, const std::string& where) {
    for (size_t i = 0; i < ms.size(); ++i) {
      const std::string m = std::to_string(ms[i]);
      // The reference is rounded to 6 decimals.
      EXPECT_NEAR(f.srp[i].value, r["srp"][m].num, 6e-7) << where << " SRP m=" << m;
      worst = std::max(worst, std::fabs(f.srp[i].value - r["srp"][m].num));
      for (int c = 1; c <= rep.header.num_experts; ++c) {
        const double want = r["sch"][m][std::to_string(c)].num;
        EXPECT_NEAR(f.sch[i][c - 1].value, want, 6e-7) << where << " SCH m=" << m << " C=" << c;
        worst = std::max(worst, std::fabs(f.sch[i][c - 1].value - want));
      }
    }
  };
  check(rep.model, ref["model"], "model");
  for (const Json& l : ref["layers"].arr) {
    const int layer = static_cast<int>(l["layer"].num);
    check(rep.layers[layer], l, "layer " + std::to_string(layer));
  }
  std::printf("largest difference from the reference: %.2g\n", worst);
}

TEST(TraceReferenceTest, MixtralGsm8kMatchesThePapersCode) {
  const std::string dir = testing::TestDataDir();
  if (dir.empty()) GTEST_SKIP() << "no ../shared/testdata";
  const std::string csv = dir + "/traces/reference/mixtral-gsm8k.csv";
  int64_t dropped = 0;
  absl::StatusOr<Trace> t = ImportCsv(csv, 0, &dropped);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(dropped, 3);  // tokens cut off mid-model at the end of the recording
  LrcOptions opt;
  opt.segment_lengths = {4, 16, 64};
  absl::StatusOr<LrcReport> rep = AnalyzeTrace(*t, opt);
  ASSERT_TRUE(rep.ok()) << rep.status();
  ExpectMatches(*rep, ReadJson(dir + "/traces/reference/mixtral-gsm8k-ref.json"));
  const LrcFigures& m = rep->model;
  std::printf(
      "Mixtral-8x7B gsm8k: SRP m=16 %.6f; SCH m=16 C=k %.6f C=2k %.6f; "
      "LRU C=k %.6f C=2k %.6f; Belady C=k %.6f C=2k %.6f\n",
      m.srp[1].value, m.sch[1][1].value, m.sch[1][3].value, m.policies[0][1].value,
      m.policies[0][3].value, m.policies[3][1].value, m.policies[3][3].value);

  // The JSON-lines original gives the same trace as the reference CSV made from it.
  absl::StatusOr<Trace> j = ImportMixtralJsonl(
      dir + "/traces/mixtral-8x7b-instruct-fp8/gsm8k_2_routing.jsonl", 8, &dropped);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->seq_names, t->seq_names);
  EXPECT_EQ(j->seq_start, t->seq_start);
  EXPECT_EQ(j->experts, t->experts);
}

TEST(TraceReferenceTest, TinyMoeValMixMatchesThePapersCode) {
  const std::string dir = testing::TestDataDir();
  if (dir.empty()) GTEST_SKIP() << "no ../shared/testdata";
  const std::string csv = dir + "/tiny-moe/val-mix.trace.csv";
  if (!std::ifstream(csv)) GTEST_SKIP() << "no " << csv;
  absl::StatusOr<Trace> t = ImportCsv(csv, 16);
  ASSERT_TRUE(t.ok()) << t.status();
  LrcOptions opt;
  opt.segment_lengths = {4, 16, 64};
  opt.policies = false;
  absl::StatusOr<LrcReport> rep = AnalyzeTrace(*t, opt);
  ASSERT_TRUE(rep.ok()) << rep.status();
  ExpectMatches(*rep, ReadJson(dir + "/tiny-moe/val-mix-lrc.json"));
}

}  // namespace
}  // namespace moex
