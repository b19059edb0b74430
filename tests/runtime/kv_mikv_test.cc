// MiKV: the tiers a policy picks on hand-made statistics, and a cache that keeps demoted
// positions at q4 (or q2) within the bytes of its budget, answering closer to the full
// cache than dropping them does; the 2-bit row codec.
#include <cmath>
#include <random>

#include "cache/kv_cache.h"
#include "cache/kv_policy.h"
#include "cache/kv_q2.h"
#include "gtest/gtest.h"
#include "kernels_cpu/attention.h"

namespace moex {
namespace {

TEST(KvMikvTest, TiersFollowTheRankingAndLowEntriesNeverComeBack) {
  auto cfg = ParseKvPolicy("mikv:window=1,pool=1");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  std::vector<int64_t> pos(8);
  for (int64_t i = 0; i < 8; ++i) pos[i] = 100 + i;
  const std::vector<float> acc(8, 0.0f);
  // Votes rank 7 (the window), then 2, 5, 0, 4, 6, 1, 3.
  const std::vector<float> last = {0.5f, 0.1f, 0.9f, 0.0f, 0.4f, 0.8f, 0.3f, 0.0f};
  // Entry 2 is already low: it cannot fill a full-precision place.
  const std::vector<uint8_t> low = {0, 0, 1, 0, 0, 0, 0, 0};
  std::vector<int32_t> evict, demote;
  MakeKvPolicy(*cfg)->SelectTiers(KvHeadView{pos, acc, last, low}, 3, 3, &evict, &demote);
  // High: 7, 5, 0. Low: 2 (stays), 4, 6 (demoted). Dropped: 1, 3.
  EXPECT_EQ(evict, (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(demote, (std::vector<int32_t>{4, 6}));
}

TEST(KvMikvTest, RejectsLowRowsThatSaveNothing) {
  KvCache::Options o{.n_layer = 1, .n_ctx = 64, .n_head_kv = 1, .head_dim = 32};
  o.type = kcpu::GgmlType::kQ4_1;
  o.policy = *ParseKvPolicy("mikv:budget=8");
  auto c = KvCache::Create(o);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("q4"), std::string::npos) << c.status();
  o.type = kcpu::GgmlType::kQ8_0;
  EXPECT_TRUE(KvCache::Create(o).ok());  // q4 rows under q8 ones do save
  EXPECT_FALSE(ParseKvPolicy("mikv:bits=3").ok());
  EXPECT_FALSE(ParseKvPolicy("mikv:hi=0").ok());
  // q2 rows save even under q4 ones (12 bytes a group against 20).
  o.type = kcpu::GgmlType::kQ4_1;
  o.policy = *ParseKvPolicy("mikv:budget=8,bits=2");
  EXPECT_TRUE(KvCache::Create(o).ok());
  o.head_dim = 48;  // not a multiple of the 32-value group
  o.type = kcpu::GgmlType::kF32;
  EXPECT_FALSE(KvCache::Create(o).ok());
}

// Relative RMS error against a plain f32 cache of the attention outputs after a prefill
// of `pre` tokens and single-token steps to `total`, the cache compressed after each.
double RunError(const char* spec, kcpu::GgmlType type, KvCache** keep_cache,
                std::unique_ptr<KvCache>* holder) {
  KvCache::Options o{.n_layer = 1, .n_ctx = 96, .n_head_kv = 2, .head_dim = 32};
  o.type = type;
  o.policy = *ParseKvPolicy(spec);
  auto c = KvCache::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  *holder = std::move(*c);
  *keep_cache = holder->get();
  KvCache& kv = **holder;
  const int64_t n_head = 4, hd = 32, kvd = 64, qd = n_head * hd, pre = 24, total = 80;
  std::mt19937_64 rng(23);
  std::normal_distribution<float> d(0, 1);
  std::vector<float> q(total * qd), k(total * kvd), v(total * kvd);
  for (float& x : q) x = 0.5f * d(rng);
  for (float& x : k) x = d(rng);
  for (float& x : v) x = d(rng);
  std::vector<float> out(total * qd), ref(total * qd);
  const float scale = 1.0f / std::sqrt(32.0f);
  kcpu::AttentionShape shape{n_head, 2, hd, scale};
  double err = 0, norm = 0;
  for (int64_t pos = 0; pos < total;) {
    const int64_t n = pos == 0 ? pre : 1;
    EXPECT_TRUE(kv.Append(0, pos, n, k.data() + pos * kvd, v.data() + pos * kvd).ok());
    kv.Attend(0, q.data() + pos * qd, n, pos, n_head, scale, out.data() + pos * qd);
    kv.Advance(n);
    kcpu::CausalAttention(shape, q.data() + pos * qd, n, pos, k.data(), v.data(), kvd,
                          ref.data() + pos * qd);
    pos += n;
  }
  for (int64_t i = pre * qd; i < total * qd; ++i) {
    err += (out[i] - ref[i]) * (out[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  return std::sqrt(err / norm);
}

TEST(KvMikvTest, KeepsDemotedPositionsWithinTheByteBudget) {
  KvCache* c = nullptr;
  std::unique_ptr<KvCache> holder;
  const double mikv = RunError("mikv:budget=16", kcpu::GgmlType::kF16, &c, &holder);
  // f16 rows of 32 values are 64 bytes, q4 ones 20: 8 full-precision rows and the bytes
  // of the other 8 (512) pay for 25 q4 rows.
  EXPECT_EQ(c->high_budget(), 8);
  EXPECT_EQ(c->low_budget(), 25);
  for (int64_t h = 0; h < 2; ++h) {
    const std::vector<int64_t> kept = c->KeptPositions(0, h), low = c->LowPositions(0, h);
    EXPECT_EQ(kept.size(), 33u);
    EXPECT_EQ(low.size(), 25u);
    EXPECT_EQ(kept.back(), 79);  // the newest is in the window, at full precision
    EXPECT_NE(low.back(), 79);
  }
  EXPECT_EQ(c->bytes(), 2 * 2 * (8 * 64 + 25 * 20));
  EXPECT_LE(c->bytes(), 2 * 2 * 16 * 64);  // within the bytes of 16 f16 rows per head

  // Dropping instead of demoting, at the same bytes, answers worse.
  const double snap = RunError("snapkv:budget=16", kcpu::GgmlType::kF16, &c, &holder);
  EXPECT_EQ(c->bytes(), 2 * 2 * 16 * 64);
  EXPECT_LT(mikv, snap);
  EXPECT_GT(mikv, 0.0);
  // hi=1 is snapkv itself.
  const double all_high = RunError("mikv:budget=16,hi=1", kcpu::GgmlType::kF16, &c, &holder);
  EXPECT_EQ(all_high, snap);
  EXPECT_EQ(c->low_budget(), 0);
}

// The 2-bit row codec on random rows of many scales: every value within half a step of
// its decoded value (plus the f16 rounding of the group's minimum and step), constant
// groups exact, and each group's extremes decoded to the ends of its range.
TEST(KvMikvTest, Q2RowsRoundTripWithinHalfAStep) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (float scale : {1e-3f, 1.0f, 300.0f}) {
    for (int64_t n : {32, 128, 256}) {
      std::vector<float> x(n), y(n, std::nanf(""));
      for (float& v : x) v = scale * d(rng);
      std::vector<uint8_t> q(Q2RowBytes(n), 0xAB);
      QuantizeRowQ2(x.data(), q.data(), n);
      DequantizeRowQ2(q.data(), y.data(), n);
      for (int64_t g = 0; g < n; g += kQ2Group) {
        float lo = x[g], hi = x[g];
        for (int64_t j = g; j < g + kQ2Group; ++j) {
          lo = std::min(lo, x[j]);
          hi = std::max(hi, x[j]);
        }
        const float step = (hi - lo) / 3.0f;
        const float slack = 2e-3f * (std::fabs(lo) + std::fabs(hi));  // f16 of min and step
        for (int64_t j = g; j < g + kQ2Group; ++j) {
          ASSERT_LE(std::fabs(y[j] - x[j]), 0.5f * step + slack)
              << "scale " << scale << " n " << n << " j " << j;
        }
      }
    }
  }
  std::vector<float> c(32, 0.75f), y(32);
  std::vector<uint8_t> q(Q2RowBytes(32));
  QuantizeRowQ2(c.data(), q.data(), 32);
  DequantizeRowQ2(q.data(), y.data(), 32);
  for (float v : y) EXPECT_EQ(v, 0.75f);
}

// bits=2: the demoted tier is q2, so the same bytes keep more positions than bits=4.
TEST(KvMikvTest, TwoBitRowsKeepMorePositionsInTheSameBytes) {
  KvCache* c = nullptr;
  std::unique_ptr<KvCache> holder;
  const double mikv2 = RunError("mikv:budget=16,bits=2", kcpu::GgmlType::kF16, &c, &holder);
  // f16 rows of 32 values are 64 bytes, q2 ones 12: 8 full-precision rows and the bytes
  // of the other 8 (512) pay for 42 q2 rows.
  EXPECT_EQ(c->high_budget(), 8);
  EXPECT_EQ(c->low_budget(), 42);
  for (int64_t h = 0; h < 2; ++h) {
    EXPECT_EQ(c->KeptPositions(0, h).size(), 50u);
    EXPECT_EQ(c->LowPositions(0, h).size(), 42u);
  }
  EXPECT_EQ(c->bytes(), 2 * 2 * (8 * 64 + 42 * 12));
  EXPECT_LE(c->bytes(), 2 * 2 * 16 * 64);
  EXPECT_GT(mikv2, 0.0);
  EXPECT_LT(mikv2, 1.0);
}

}  // namespace
}  // namespace moex
