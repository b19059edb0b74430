// The sampler's filters and its randomness, each pinned by a case where getting it
// wrong changes the answer.
#include "runtime/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace moex {
namespace {

SamplingOptions Plain(float temp = 1.0f) {
  SamplingOptions o;
  o.temperature = temp;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.min_p = 0.0f;
  o.repeat_penalty = 1.0f;
  return o;
}

TEST(SamplerTest, ZeroTemperatureIsArgmax) {
  Sampler s(Plain(0.0f));
  std::vector<float> l = {0.1f, 2.0f, 1.9f, -3.0f};
  EXPECT_EQ(s.Sample(l, {}), 1);
}

TEST(SamplerTest, TopKOneIsArgmaxAtAnyTemperature) {
  SamplingOptions o = Plain(5.0f);
  o.top_k = 1;
  Sampler s(o);
  for (int i = 0; i < 50; ++i) {
    std::vector<float> l = {0.1f, 2.0f, 1.9f, -3.0f};
    EXPECT_EQ(s.Sample(l, {}), 1);
  }
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // Probabilities ~ {0.665, 0.245, 0.090}: top_p 0.6 keeps only the first.
  SamplingOptions o = Plain(1.0f);
  o.top_p = 0.6f;
  Sampler s(o);
  for (int i = 0; i < 50; ++i) {
    std::vector<float> l = {2.0f, 1.0f, 0.0f};
    EXPECT_EQ(s.Sample(l, {}), 0);
  }
}

TEST(SamplerTest, MinPDropsTokensBelowAFractionOfTheBest) {
  SamplingOptions o = Plain(1.0f);
  o.min_p = 0.5f;  // keeps tokens with p >= 0.5 * p_max: logits within ln 2 of the best
  Sampler s(o);
  std::map<int, int> seen;
  for (int i = 0; i < 400; ++i) {
    std::vector<float> l = {1.0f, 0.5f, -1.0f};
    ++seen[s.Sample(l, {})];
  }
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], 0);
  EXPECT_EQ(seen[2], 0);
}

TEST(SamplerTest, RepeatPenaltyTurnsTheChoiceAway) {
  SamplingOptions o = Plain(0.0f);
  o.repeat_penalty = 2.0f;
  Sampler s(o);
  std::vector<float> l = {3.0f, 2.0f, -1.0f};
  const std::vector<int32_t> history = {0};
  EXPECT_EQ(s.Sample(l, history), 1);  // 3/2 = 1.5 < 2
  EXPECT_FLOAT_EQ(l[0], 1.5f);
  std::vector<float> neg = {-1.0f, -1.5f};
  const std::vector<int32_t> h2 = {0};
  EXPECT_EQ(s.Sample(neg, h2), 1);  // -1 * 2 = -2 < -1.5
}

TEST(SamplerTest, SameSeedSameDrawsDifferentSeedDifferentDraws) {
  auto draws = [](uint64_t seed) {
    SamplingOptions o = Plain(1.0f);
    o.seed = seed;
    Sampler s(o);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) {
      std::vector<float> l(50, 0.0f);
      out.push_back(s.Sample(l, {}));
    }
    return out;
  };
  EXPECT_EQ(draws(3), draws(3));
  EXPECT_NE(draws(3), draws(4));
}

TEST(SamplerTest, FrequenciesFollowSoftmaxAtTemperature) {
  SamplingOptions o = Plain(0.5f);
  o.seed = 11;
  Sampler s(o);
  const std::vector<float> base = {0.0f, 0.5f, 1.0f};
  std::vector<double> p(3);
  double z = 0;
  for (int i = 0; i < 3; ++i) z += (p[i] = std::exp(base[i] / 0.5));
  const int n = 20000;
  std::vector<int> count(3);
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = base;
    ++count[s.Sample(l, {})];
  }
  for (int i = 0; i < 3; ++i) {
    const double expect = p[i] / z;
    EXPECT_NEAR(count[i] / double{n}, expect, 4 * std::sqrt(expect * (1 - expect) / n)) << i;
  }
}

}  // namespace
}  // namespace moex
