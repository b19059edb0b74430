// Predictor accuracy over traces (AnalyzeTrace's "predictors"): recall and precision on
// hand-made guesses, previous-token exact on a constant trace, frequency worked by hand.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "moex/trace.h"
#include "runtime/trace/lrc_internal.h"

namespace moex {
namespace {

// A trace of one layer... or more, from [token][layer][j] ids, sequences of the given sizes.
Trace MakeTrace(int E, int k, int L, const std::vector<int64_t>& seq_sizes,
                const std::vector<uint16_t>& ids) {
  Trace t;
  t.header = {"hand", E, k, L, false, false};
  t.seq_start = {0};
  for (size_t s = 0; s < seq_sizes.size(); ++s) {
    t.seq_names.push_back(std::to_string(s));
    t.seq_start.push_back(t.seq_start.back() + seq_sizes[s]);
  }
  t.experts = ids;
  return t;
}

const PredictorFigures* Find(const LrcFigures& f, const std::string& name) {
  for (const PredictorFigures& p : f.predictors) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

LrcReport Analyze(const Trace& t) {
  LrcOptions opt;
  opt.segment_lengths = {2};
  opt.policies = false;
  opt.group_sizes = {};
  opt.threads = 1;
  absl::StatusOr<LrcReport> r = AnalyzeTrace(t, opt);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : LrcReport{};
}

TEST(PredictorMetricsTest, HitsRecallAndPrecisionByHand) {
  const uint16_t truth[2] = {3, 5};
  const uint16_t four[4] = {5, 0, 1, 2};  // one of two true experts among four guesses
  EXPECT_EQ(lrc::GuessHits(four, 4, truth, 2), 1);
  const PredictorScore s = lrc::MakeScore(1, 1, 2, 4);
  EXPECT_DOUBLE_EQ(s.recall, 0.5);
  EXPECT_DOUBLE_EQ(s.precision, 0.25);
  const uint16_t both[2] = {5, 3};  // order does not matter
  EXPECT_EQ(lrc::GuessHits(both, 2, truth, 2), 2);
  const uint16_t none[2] = {0, 1};
  EXPECT_EQ(lrc::GuessHits(none, 2, truth, 2), 0);
  EXPECT_TRUE(std::isnan(lrc::MakeScore(0, 0, 2, 2).recall));
}

// Recorded guesses of 3 ids against top-2 truth, hits chosen per (token, layer, d).
TEST(PredictorMetricsTest, RecordedGuessesAreScoredPerLayerAndDistance) {
  const int E = 6, k = 2, L = 3, T = 2;
  // Token t, layer l: experts {l, l + 1}.
  std::vector<uint16_t> ids;
  for (int t = 0; t < T; ++t) {
    for (int l = 0; l < L; ++l) ids.insert(ids.end(), {uint16_t(l), uint16_t(l + 1)});
  }
  Trace tr = MakeTrace(E, k, L, {T}, ids);
  tr.header.predictors = {"gate"};
  tr.header.predict_distance = 2;
  tr.header.predict_size = 3;
  tr.predictions.assign(tr.PredictionIndex(T, 0, 1, 0), kNoGuess);
  auto put = [&](int t, int d, int l, std::vector<uint16_t> g) {
    std::copy(g.begin(), g.end(), tr.predictions.begin() + tr.PredictionIndex(t, 0, d, l));
  };
  // d = 1, layer 1 (truth {1, 2}): token 0 finds both, token 1 one.
  put(0, 1, 1, {1, 2, 5});
  put(1, 1, 1, {2, 4, 5});
  // d = 1, layer 2 (truth {2, 3}): none, none.
  put(0, 1, 2, {0, 1, 4});
  put(1, 1, 2, {0, 1, 5});
  // d = 2, layer 2: both, both.
  put(0, 2, 2, {3, 2, 0});
  put(1, 2, 2, {2, 3, 1});
  const LrcReport r = Analyze(tr);
  const PredictorFigures* m = Find(r.model, "gate");
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(m->recorded);
  ASSERT_EQ(m->by_distance.size(), 2u);
  EXPECT_EQ(m->by_distance[0].samples, 4);
  EXPECT_EQ(m->by_distance[0].hits, 3);
  EXPECT_DOUBLE_EQ(m->by_distance[0].recall, 3.0 / 8);
  EXPECT_DOUBLE_EQ(m->by_distance[0].precision, 3.0 / 12);
  EXPECT_DOUBLE_EQ(m->by_distance[1].recall, 1.0);
  EXPECT_DOUBLE_EQ(m->by_distance[1].precision, 4.0 / 6);
  const PredictorFigures* l1 = Find(r.layers[1], "gate");
  ASSERT_NE(l1, nullptr);
  EXPECT_DOUBLE_EQ(l1->by_distance[0].recall, 3.0 / 4);
  EXPECT_EQ(l1->by_distance[1].samples, 0);  // layer 1 has no layer 2 before it
  EXPECT_TRUE(std::isnan(l1->by_distance[1].recall));
  EXPECT_DOUBLE_EQ(Find(r.layers[2], "gate")->by_distance[0].recall, 0.0);
  EXPECT_EQ(Find(r.layers[0], "gate")->by_distance[0].samples, 0);
  // The routing-only predictors are there too, at distance 1 only.
  ASSERT_NE(Find(r.model, "previous-token"), nullptr);
  EXPECT_FALSE(Find(r.model, "previous-token")->recorded);
  EXPECT_EQ(Find(r.model, "previous-token")->by_distance.size(), 1u);
}

TEST(PredictorMetricsTest, PreviousTokenIsExactOnAConstantTrace) {
  const int E = 8, k = 3, L = 4;
  std::vector<uint16_t> ids;
  for (int t = 0; t < 10; ++t) {
    for (int l = 0; l < L; ++l) ids.insert(ids.end(), {uint16_t(l + 4), 0, uint16_t(l + 1)});
  }
  const LrcReport r = Analyze(MakeTrace(E, k, L, {4, 6}, ids));
  const PredictorFigures* p = Find(r.model, "previous-token");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->by_distance[0].samples, (10 - 2) * L);  // each sequence's first token has none
  EXPECT_DOUBLE_EQ(p->by_distance[0].recall, 1.0);
  EXPECT_DOUBLE_EQ(p->by_distance[0].precision, 1.0);
  // Frequency is exact here as well from the second token on: one set, always.
  EXPECT_DOUBLE_EQ(Find(r.model, "frequency")->by_distance[0].recall, 1.0);
  EXPECT_EQ(Find(r.model, "frequency")->by_distance[0].samples, 9 * L);
}

TEST(PredictorMetricsTest, PreviousTokenAndFrequencyByHand) {
  // One layer, top-1 of 3 experts, two sequences: [0, 0, 1] and [1, 2, 1].
  const Trace tr = MakeTrace(3, 1, 1, {3, 3}, {0, 0, 1, 1, 2, 1});
  int64_t hits = 0, samples = 0;
  // Previous token: 0->0 hit, 0->1 miss | 1->2 miss, 2->1 miss.
  lrc::PreviousTokenCounts(tr, 0, &hits, &samples);
  EXPECT_EQ(samples, 4);
  EXPECT_EQ(hits, 1);
  // Frequency over the whole trace so far (ties to the lower id): token 1 guesses 0 (hit),
  // 2 guesses 0 (miss), 3 guesses 0 (counts 0:2 1:1; miss), 4 guesses 0 or 1 at 2:2 -> 0
  // (miss), 5 guesses 0 (counts 0:2 1:2 2:1; miss).
  hits = samples = 0;
  lrc::FrequencyCounts(tr, 0, &hits, &samples);
  EXPECT_EQ(samples, 5);
  EXPECT_EQ(hits, 1);
  // Now a trace where the ranking must move past a lower id: [2, 2, 1, 2, 2].
  const Trace moving = MakeTrace(3, 1, 1, {5}, {2, 2, 1, 2, 2});
  hits = samples = 0;
  lrc::FrequencyCounts(moving, 0, &hits, &samples);
  EXPECT_EQ(samples, 4);
  EXPECT_EQ(hits, 3);  // 2 after token 0, 2 (miss on 1), 2, 2
}

}  // namespace
}  // namespace moex
