// Expert predictors and their meter on hand-made layers whose right answers are known.
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "predictor/expert_predictor.h"

namespace moex {
namespace {

TEST(PredictorTest, RecallAtKCountsTheTrueExpertsFound) {
  const int32_t truth[4] = {3, 1, 7, 0};
  const int32_t all[4] = {0, 1, 3, 7};
  const int32_t half[4] = {3, 9, 8, 0};
  const int32_t none[4] = {4, 5, 6, 2};
  EXPECT_DOUBLE_EQ(RecallAtK(all, truth, 4), 1.0);  // order does not matter
  EXPECT_DOUBLE_EQ(RecallAtK(half, truth, 4), 0.5);
  EXPECT_DOUBLE_EQ(RecallAtK(none, truth, 4), 0.0);
}

// Layers that all have the same router and see the same hidden state: the cross-layer
// gate must then be exact at every distance, both variants.
TEST(PredictorTest, CrossLayerGateIsExactWhenLayersAgree) {
  const int64_t E = 32, NE = 8, K = 2, L = 4, T = 5;
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<float> d(0, 1);
  std::vector<float> router(NE * E), h(T * E), ones(E, 1.0f);
  for (float& x : router) x = d(rng);
  for (float& x : h) x = d(rng);
  // h already has unit RMS per token, so the residual variant (RMSNorm with unit weights)
  // sees the same input up to the norm's epsilon.
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t c = 0; c < E; ++c) ss += h[t * E + c] * h[t * E + c];
    for (int64_t c = 0; c < E; ++c) h[t * E + c] /= static_cast<float>(std::sqrt(ss / E));
  }
  WeightMatrix w{kcpu::GgmlType::kF32, reinterpret_cast<const uint8_t*>(router.data()), NE, E,
                 E * 4};
  std::vector<int32_t> truth;
  GateTopK(w, h.data(), T, K, &truth);
  PredictorMeter m(std::vector<PredictorLayer>(L, {w, ones.data()}), E, NE, K, 1e-9f, 3);
  for (int64_t l = 0; l < L; ++l) m.OnLayer(l, T, h.data(), h.data(), truth.data());
  for (int p : {0, 1}) {
    for (int dist = 1; dist <= 3; ++dist) {
      const auto s = m.ModelScore(p, dist);
      EXPECT_EQ(s.samples, T * (L - dist)) << PredictorMeter::kNames[p] << " d=" << dist;
      EXPECT_DOUBLE_EQ(s.recall(), 1.0) << PredictorMeter::kNames[p] << " d=" << dist;
    }
  }
}

TEST(PredictorTest, PreviousTokenIsExactOnAConstantTraceAndForgetsBetweenSequences) {
  const int64_t E = 8, NE = 6, K = 2, T = 4;
  std::vector<float> router(NE * E, 0.0f), h(T * E, 0.0f), ones(E, 1.0f);
  WeightMatrix w{kcpu::GgmlType::kF32, reinterpret_cast<const uint8_t*>(router.data()), NE, E,
                 E * 4};
  PredictorMeter m({{w, ones.data()}}, E, NE, K, 1e-6f, 1);
  const std::vector<int32_t> same = {4, 1, 4, 1, 4, 1, 4, 1};
  m.OnLayer(0, T, h.data(), h.data(), same.data());
  EXPECT_EQ(m.ModelScore(2, 1).samples, T - 1);  // the first token has no predecessor
  EXPECT_DOUBLE_EQ(m.ModelScore(2, 1).recall(), 1.0);
  m.NewSequence();
  const std::vector<int32_t> other = {0, 2, 0, 2, 0, 2, 0, 2};
  m.OnLayer(0, T, h.data(), h.data(), other.data());
  // Not compared with the last token of the previous sequence: still exact.
  EXPECT_EQ(m.ModelScore(2, 1).samples, 2 * (T - 1));
  EXPECT_DOUBLE_EQ(m.ModelScore(2, 1).recall(), 1.0);
  // Frequency: after the first batch (4 and 1 used), the second batch (0 and 2) is missed.
  EXPECT_EQ(m.ModelScore(3, 1).samples, T);
  EXPECT_DOUBLE_EQ(m.ModelScore(3, 1).recall(), 0.0);
}

}  // namespace
}  // namespace moex
