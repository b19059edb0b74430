// The KV cache: limits, bit-identity of the uncompressed path with the reference
// attention, quantised rows within their error bounds, and each compression policy's
// choices on hand-made attention statistics.
#include "cache/kv_cache.h"

#include <cmath>
#include <random>

#include "cache/kv_policy.h"
#include "gtest/gtest.h"
#include "kernels_cpu/attention.h"
#include "tests/test_util.h"

namespace moex {
namespace {

KvCache::Options Shape(int64_t layers, int64_t ctx, int64_t heads_kv, int64_t hd) {
  KvCache::Options o;
  o.n_layer = layers;
  o.n_ctx = ctx;
  o.n_head_kv = heads_kv;
  o.head_dim = hd;
  return o;
}

TEST(KvCacheTest, ReserveRefusesToOverflowAndNamesTheLimit) {
  auto c = KvCache::Create(Shape(2, 8, 2, 32));
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE((*c)->Reserve(8).ok());
  (*c)->Advance(5);
  absl::Status st = (*c)->Reserve(4);
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("context size 8"), std::string::npos) << st;
  EXPECT_TRUE((*c)->Reserve(3).ok());
  (*c)->Clear();
  EXPECT_EQ((*c)->size(), 0);
}

TEST(KvCacheTest, QuantisedTypeMustDivideTheHeadDimension) {
  KvCache::Options o = Shape(1, 8, 1, 48);
  o.type = kcpu::GgmlType::kQ8_0;
  auto c = KvCache::Create(o);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("48"), std::string::npos);
  EXPECT_FALSE(ParseKvType("q3").ok());
}

// Runs a prefill of `pre` tokens then `dec` one-token steps through the cache, returning
// every attention output; also through the reference kernel over a plain F32 cache.
struct Outputs {
  std::vector<float> out, ref;
};
Outputs Drive(KvCache& c, int64_t n_head, int64_t pre, int64_t dec, uint64_t seed) {
  const KvCache::Options& o = c.options();
  const int64_t hd = o.head_dim, kvd = o.n_head_kv * hd, qd = n_head * hd;
  const int64_t total = pre + dec;
  std::mt19937_64 rng(seed);
  const std::vector<float> q = testing::RandomNormal(rng, total * qd),
                           k = testing::RandomNormal(rng, total * kvd),
                           v = testing::RandomNormal(rng, total * kvd);
  Outputs r;
  r.out.assign(total * qd, std::nanf(""));
  r.ref.assign(total * qd, std::nanf(""));
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  kcpu::AttentionShape shape{n_head, o.n_head_kv, hd, scale};
  for (int64_t pos = 0; pos < total;) {
    const int64_t n = pos == 0 ? pre : 1;
    for (int64_t l = 0; l < o.n_layer; ++l) {
      EXPECT_TRUE(c.Append(l, pos, n, k.data() + pos * kvd, v.data() + pos * kvd).ok());
      c.Attend(l, q.data() + pos * qd, n, pos, n_head, scale, r.out.data() + pos * qd);
    }
    c.Advance(n);
    kcpu::CausalAttention(shape, q.data() + pos * qd, n, pos, k.data(), v.data(), kvd,
                          r.ref.data() + pos * qd);
    pos += n;
  }
  return r;
}

TEST(KvCacheTest, FullF32IsBitIdenticalToThePlainCache) {
  auto c = KvCache::Create(Shape(2, 64, 2, 32));
  ASSERT_TRUE(c.ok());
  const Outputs r = Drive(**c, 6, 13, 9, std::random_device{}());
  EXPECT_EQ(r.out, r.ref);                            // exact, not near
  EXPECT_EQ((*c)->bytes(), 2 * 2 * 22 * 32 * 4 * 2);  // layers x heads x positions x row x K,V
  EXPECT_EQ((*c)->peak_bytes(), (*c)->bytes());
}

TEST(KvCacheTest, QuantisedRowsStayWithinTheirErrorBounds) {
  for (auto [type, bound] :
       {std::pair{kcpu::GgmlType::kF16, 2e-3}, std::pair{kcpu::GgmlType::kBF16, 1.5e-2},
        std::pair{kcpu::GgmlType::kQ8_0, 1.5e-2}, std::pair{kcpu::GgmlType::kQ4_1, 0.15}}) {
    KvCache::Options o = Shape(1, 64, 2, 64);
    o.type = type;
    auto c = KvCache::Create(o);
    ASSERT_TRUE(c.ok());
    const Outputs r = Drive(**c, 4, 20, 10, 17);
    double d = 0, n = 0;
    for (size_t i = 0; i < r.out.size(); ++i) {
      d += (r.out[i] - r.ref[i]) * (r.out[i] - r.ref[i]);
      n += r.ref[i] * r.ref[i];
    }
    EXPECT_LT(std::sqrt(d / n), bound) << KvTypeName(type);
    EXPECT_GT(std::sqrt(d / n), 0.0) << KvTypeName(type);
    // Fewer bytes than f32 rows, as the type promises.
    EXPECT_LT((*c)->bytes(), 2 * 30 * 64 * 4 * 2) << KvTypeName(type);
  }
}

TEST(KvCacheTest, EveryPolicyKeepsWithinBudgetAndTheRecentWindow) {
  for (const char* spec : {"streaming:budget=12,sinks=2", "h2o:budget=12,window=4",
                           "snapkv:budget=12,window=4", "h2o:budget=0.25"}) {
    KvCache::Options o = Shape(2, 48, 2, 32);
    auto p = ParseKvPolicy(spec);
    ASSERT_TRUE(p.ok()) << p.status();
    o.policy = *p;
    auto c = KvCache::Create(o);
    ASSERT_TRUE(c.ok());
    const int64_t budget = (*c)->budget();
    EXPECT_EQ(budget, 12) << spec;
    Outputs r = Drive(**c, 4, 20, 28, 5);
    for (float x : r.out) ASSERT_TRUE(std::isfinite(x)) << spec;
    for (int64_t l = 0; l < 2; ++l) {
      for (int64_t h = 0; h < 2; ++h) {
        const std::vector<int64_t> kept = (*c)->KeptPositions(l, h);
        EXPECT_EQ(static_cast<int64_t>(kept.size()), budget) << spec;
        EXPECT_TRUE(std::is_sorted(kept.begin(), kept.end()));
        EXPECT_EQ(kept.back(), 47) << spec;  // the newest position always stays
      }
    }
    EXPECT_EQ((*c)->bytes(), 2 * 2 * budget * 32 * 4 * 2) << spec;
    EXPECT_GT((*c)->peak_bytes(), (*c)->bytes()) << spec;  // the prefill held more
  }
}

TEST(KvCacheTest, TruncateForgetsLaterPositions) {
  auto c = KvCache::Create(Shape(1, 32, 1, 32));
  ASSERT_TRUE(c.ok());
  Drive(**c, 2, 10, 0, 3);
  (*c)->Truncate(4);
  EXPECT_EQ((*c)->size(), 4);
  EXPECT_EQ((*c)->KeptPositions(0, 0), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ((*c)->bytes(), 4 * 32 * 4 * 2);
}

// Policies on hand-made statistics: which positions stay.
std::vector<int64_t> Kept(const char* spec, int64_t budget, std::vector<float> acc,
                          std::vector<float> last) {
  auto cfg = ParseKvPolicy(spec);
  EXPECT_TRUE(cfg.ok());
  std::vector<int64_t> pos(acc.size());
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<int64_t>(10 + i);
  std::vector<int32_t> evict;
  MakeKvPolicy(*cfg)->SelectEvictions(KvHeadView{pos, acc, last, {}}, budget, &evict);
  std::vector<int64_t> kept;
  for (size_t i = 0, j = 0; i < pos.size(); ++i) {
    if (j < evict.size() && evict[j] == static_cast<int32_t>(i)) {
      ++j;
    } else {
      kept.push_back(pos[i]);
    }
  }
  return kept;
}

TEST(KvPolicyTest, StreamingKeepsSinksAndTheRecentWindow) {
  const std::vector<float> z(10, 0.0f);
  EXPECT_EQ(Kept("streaming:sinks=2", 6, z, z), (std::vector<int64_t>{10, 11, 16, 17, 18, 19}));
}

TEST(KvPolicyTest, H2oKeepsHeavyHittersAndTheRecentWindow) {
  std::vector<float> acc = {0.1f, 0.2f, 5.0f, 0.1f, 3.0f, 0.2f, 0.1f, 9.0f, 0.0f, 0.0f};
  const std::vector<float> z(10, 0.0f);
  // Window 3 keeps 17, 18, 19 (the 9.0 at 17 is in it); then the two heaviest: 12, 14.
  EXPECT_EQ(Kept("h2o:window=3", 5, acc, z), (std::vector<int64_t>{12, 14, 17, 18, 19}));
}

TEST(KvPolicyTest, SnapKvKeepsVotedPositionsWithTheirNeighbours) {
  std::vector<float> last(12, 0.01f);
  last[3] = 1.0f;  // the observation window attends to position 13
  const std::vector<float> acc(12, 0.0f);
  // Pool 3 spreads the vote to 12 and 14; window 2 keeps 20, 21.
  EXPECT_EQ(Kept("snapkv:window=2,pool=3", 5, acc, last),
            (std::vector<int64_t>{12, 13, 14, 20, 21}));
  // Without pooling, the next-best votes are ties resolved towards recent positions.
  EXPECT_EQ(Kept("snapkv:window=2,pool=1", 5, acc, last)[0], 13);
}

TEST(KvPolicyTest, ParseRejectsNonsenseAndNamesIt) {
  EXPECT_FALSE(ParseKvPolicy("lru").ok());
  EXPECT_FALSE(ParseKvPolicy("h2o:budget=-1").ok());
  EXPECT_FALSE(ParseKvPolicy("h2o:budget=2.5").ok());
  auto bad = ParseKvPolicy("h2o:colour=3");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("colour"), std::string::npos);
  auto frac = ParseKvPolicy("snapkv:budget=0.125,window=8");
  ASSERT_TRUE(frac.ok());
  EXPECT_EQ(frac->BudgetFor(256), 32);
  EXPECT_EQ(frac->window, 8);
  EXPECT_EQ(ParseKvPolicy("full")->BudgetFor(256), 256);
}

}  // namespace
}  // namespace moex
