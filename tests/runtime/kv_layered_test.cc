// Per-layer KV budgets (pyramid, cake): the split on hand-made inputs, CAKE's preference
// on hand-made attention, and that a cache keeps each layer within its budget and the
// total within the sum.
#include <cmath>
#include <numeric>
#include <random>

#include "cache/kv_cache.h"
#include "cache/kv_policy.h"
#include "gtest/gtest.h"

namespace moex {
namespace {

KvPolicyConfig Cfg(const char* spec) {
  auto c = ParseKvPolicy(spec);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : KvPolicyConfig{};
}

TEST(KvLayerBudgetTest, PyramidFallsLinearlyWithDepthAroundTheMean) {
  // B = 64, beta = 4: from 2B - B/4 = 112 down to B/4 = 16.
  EXPECT_EQ(LayerBudgets(Cfg("pyramid:budget=64,beta=4"), 4, 256, {}),
            (std::vector<int64_t>{112, 80, 48, 16}));
  // A layer's share beyond the context is capped and handed to the others.
  EXPECT_EQ(LayerBudgets(Cfg("pyramid:budget=200"), 2, 256, {}), (std::vector<int64_t>{256, 144}));
  // Other policies: every layer the same.
  EXPECT_EQ(LayerBudgets(Cfg("snapkv:budget=0.25"), 3, 256, {}),
            (std::vector<int64_t>{64, 64, 64}));
}

TEST(KvLayerBudgetTest, CakeSplitsByPreferenceWithAFloorOfOne) {
  const std::vector<double> pref = {1, 3, 0, 4};
  // 128 in all: layer 2 gets the floor, 127 split 1:3:4 = 15.9, 47.6, 63.5, remainders to
  // the largest fractions.
  EXPECT_EQ(LayerBudgets(Cfg("cake:budget=32"), 4, 256, pref),
            (std::vector<int64_t>{16, 48, 1, 63}));
  const std::vector<double> zero(4, 0.0);
  EXPECT_EQ(LayerBudgets(Cfg("cake:budget=32"), 4, 256, zero),
            (std::vector<int64_t>{32, 32, 32, 32}));
  // Never more than the total, whatever the rounding.
  for (int64_t b = 1; b < 40; ++b) {
    const std::vector<double> p = {0.3, 0.3, 0.3, 7.0, 1e-9};
    KvPolicyConfig c = Cfg("cake");
    c.budget = b;
    const std::vector<int64_t> split = LayerBudgets(c, 5, 40, p);
    EXPECT_LE(std::accumulate(split.begin(), split.end(), int64_t{0}), 5 * b) << b;
    for (int64_t x : split) {
      EXPECT_GE(x, 1);
      EXPECT_LE(x, 40);
    }
  }
}

TEST(KvLayerBudgetTest, CakePreferenceIsEntropyTimesVariance) {
  // Two queries over four entries, one attending only entry 0, the other only entry 3:
  // mean attention (0.5, 0, 0, 0.5), entropy ln 2; variance 0.25 at both ends.
  const std::vector<float> last = {1, 0, 0, 1}, last_sq = {1, 0, 0, 1};
  EXPECT_NEAR(CakePreference(last, last_sq, 2, 1, 1), std::log(2.0) * 0.5, 1e-7);
  EXPECT_NEAR(CakePreference(last, last_sq, 2, 2, 1), std::sqrt(std::log(2.0)) * 0.5, 1e-7);
  // Both queries spread evenly: the widest entropy, but no shift between queries.
  const std::vector<float> even(4, 0.5f), even_sq(4, 0.125f);
  EXPECT_NEAR(CakePreference(even, even_sq, 2, 1, 1), 0.0, 1e-9);
  // Queries agreeing on one entry: no entropy.
  const std::vector<float> one = {0, 2, 0, 0}, one_sq = {0, 2, 0, 0};
  EXPECT_NEAR(CakePreference(one, one_sq, 2, 1, 1), 0.0, 1e-9);
}

TEST(KvLayerBudgetTest, ParseAndPrintTheNewKeys) {
  KvPolicyConfig c = Cfg("cake:budget=0.25,score=h2o,tau1=2,tau2=0.5");
  EXPECT_EQ(c.score, "h2o");
  EXPECT_EQ(c.tau1, 2);
  EXPECT_EQ(c.tau2, 0.5);
  EXPECT_EQ(ParseKvPolicy(c.ToString())->ToString(), c.ToString());
  EXPECT_EQ(Cfg("pyramid:beta=8").beta, 8);
  EXPECT_FALSE(ParseKvPolicy("pyramid:beta=0.5").ok());
  EXPECT_FALSE(ParseKvPolicy("cake:tau1=0").ok());
  auto bad = ParseKvPolicy("cake:score=lru");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("lru"), std::string::npos);
}

// Feeds `total` tokens in chunks of `chunk` through every layer; layer l's queries are
// the random ones times scale[l] (0: every query attends evenly).
void Feed(KvCache& c, int64_t n_head, int64_t total, int64_t chunk,
          const std::vector<float>& scale) {
  const KvCache::Options& o = c.options();
  const int64_t hd = o.head_dim, kvd = o.n_head_kv * hd, qd = n_head * hd;
  std::mt19937_64 rng(11);
  std::normal_distribution<float> d(0, 1);
  std::vector<float> q(total * qd), k(total * kvd), v(total * kvd), out(chunk * qd);
  for (float& x : q) x = d(rng);
  for (float& x : k) x = d(rng);
  for (float& x : v) x = d(rng);
  std::vector<float> ql(chunk * qd);
  for (int64_t pos = 0; pos < total; pos += chunk) {
    const int64_t n = std::min(chunk, total - pos);
    for (int64_t l = 0; l < o.n_layer; ++l) {
      for (int64_t i = 0; i < n * qd; ++i) ql[i] = q[pos * qd + i] * scale[l];
      EXPECT_TRUE(c.Append(l, pos, n, k.data() + pos * kvd, v.data() + pos * kvd).ok());
      c.Attend(l, ql.data(), n, pos, n_head, 0.2f, out.data());
    }
    c.Advance(n);
  }
}

TEST(KvLayerBudgetTest, PyramidCacheKeepsEachLayerWithinItsBudget) {
  KvCache::Options o{.n_layer = 3, .n_ctx = 64, .n_head_kv = 2, .head_dim = 32};
  o.policy = Cfg("pyramid:budget=12,beta=2");  // 18, 12, 6
  auto c = KvCache::Create(o);
  ASSERT_TRUE(c.ok());
  Feed(**c, 4, 48, 4, {1, 1, 1});
  const std::vector<int64_t> want = {18, 12, 6};
  int64_t kept = 0;
  for (int64_t l = 0; l < 3; ++l) {
    EXPECT_EQ((*c)->LayerBudget(l), want[l]);
    for (int64_t h = 0; h < 2; ++h) {
      const std::vector<int64_t> pos = (*c)->KeptPositions(l, h);
      EXPECT_EQ(static_cast<int64_t>(pos.size()), want[l]) << l;
      EXPECT_EQ(pos.back(), 47);
      kept += static_cast<int64_t>(pos.size());
    }
  }
  EXPECT_EQ(kept, 2 * 3 * 12);
  EXPECT_EQ((*c)->bytes(), kept * 32 * 4 * 2);
}

TEST(KvLayerBudgetTest, CakeMeasuresOnceAndGivesTheEvenLayerTheFloor) {
  KvCache::Options o{.n_layer = 2, .n_ctx = 64, .n_head_kv = 2, .head_dim = 32};
  o.policy = Cfg("cake:budget=16");
  auto c = KvCache::Create(o);
  ASSERT_TRUE(c.ok());
  // Up to the mean budget nothing is measured or dropped.
  Feed(**c, 4, 16, 1, {0, 1});
  EXPECT_FALSE((*c)->budgets_measured());
  EXPECT_EQ((*c)->KeptPositions(0, 0).size(), 16u);
  (*c)->Clear();
  // One token at a time, so the measuring batch (position 16) is one query per head.
  Feed(**c, 4, 40, 1, {0, 1});
  ASSERT_TRUE((*c)->budgets_measured());
  // Layer 0's queries are zero: both query heads of a KV head spread evenly over the same
  // positions, so no temporal shift, preference 0, the floor of one; layer 1 gets the rest.
  EXPECT_EQ((*c)->LayerBudget(0), 1);
  EXPECT_EQ((*c)->LayerBudget(1), 31);
  for (int64_t h = 0; h < 2; ++h) {
    // Even votes tie, and ties go to the most recent position.
    EXPECT_EQ((*c)->KeptPositions(0, h), (std::vector<int64_t>{39}));
    const std::vector<int64_t> kept1 = (*c)->KeptPositions(1, h);
    EXPECT_EQ(kept1.size(), 31u);
    EXPECT_EQ(kept1.back(), 39);
  }
  EXPECT_EQ((*c)->bytes(), 2 * (1 + 31) * 32 * 4 * 2);
  // Clear forgets the split; the next sequence measures its own.
  (*c)->Clear();
  EXPECT_FALSE((*c)->budgets_measured());
  EXPECT_EQ((*c)->LayerBudget(0), 16);
}

}  // namespace
}  // namespace moex
