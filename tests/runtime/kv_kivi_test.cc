// q4kivi: keys quantised per channel in groups of 32 arrivals, values per token; round
// trips within a step of each channel's range, the f16 residual, the bytes held, and
// attention within its error bound.
#include <cmath>
#include <random>

#include "cache/kv_cache.h"
#include "gtest/gtest.h"
#include "kernels_cpu/attention.h"

namespace moex {
namespace {

constexpr int64_t kHd = 32;

// Keys with outlier channels (a large offset and spread on a few), as KIVI observed in
// real models; values plain.
void MakeKv(int64_t n, std::vector<float>* k, std::vector<float>* v) {
  std::mt19937_64 rng(41);
  std::normal_distribution<float> d(0, 1);
  k->resize(n * kHd);
  v->resize(n * kHd);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t c = 0; c < kHd; ++c) {
      const float spread = c == 3 ? 12.0f : c == 17 ? 6.0f : 1.0f;
      const float offset = c == 3 ? 40.0f : c == 17 ? -25.0f : 0.0f;
      (*k)[t * kHd + c] = offset + spread * d(rng);
      (*v)[t * kHd + c] = d(rng);
    }
  }
}

std::unique_ptr<KvCache> Filled(kcpu::GgmlType type, const char* policy, int64_t n,
                                const std::vector<float>& k, const std::vector<float>& v) {
  KvCache::Options o{.n_layer = 1, .n_ctx = 256, .n_head_kv = 1, .head_dim = kHd};
  o.type = type;
  o.policy = *ParseKvPolicy(policy);
  auto c = KvCache::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  for (int64_t t = 0; t < n; ++t) {
    EXPECT_TRUE((*c)->Append(0, t, 1, k.data() + t * kHd, v.data() + t * kHd).ok());
    std::vector<float> q(kHd, 0.0f), out(kHd);
    (*c)->Attend(0, q.data(), 1, t, 1, 1.0f, out.data());
    (*c)->Advance(1);
  }
  return std::move(*c);
}

TEST(KvKiviTest, ParsesAndNamesTheType) {
  auto t = ParseKvType("q4kivi");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, kKvQ4Kivi);
  EXPECT_STREQ(KvTypeName(*t), "q4kivi");
}

TEST(KvKiviTest, KeysRoundTripWithinHalfAStepOfTheirChannelPerGroup) {
  const int64_t n = 70;  // two groups of 32 and 6 keys in the f16 residual
  std::vector<float> k, v;
  MakeKv(n, &k, &v);
  std::unique_ptr<KvCache> c = Filled(kKvQ4Kivi, "full", n, k, v);
  std::vector<float> kr(kHd), vr(kHd);
  double kivi_err = 0;
  for (int64_t t = 0; t < n; ++t) {
    c->ReadEntry(0, 0, t, kr.data(), vr.data());
    for (int64_t ch = 0; ch < kHd; ++ch) {
      const float x = k[t * kHd + ch];
      if (t >= 64) {  // residual: f16
        EXPECT_NEAR(kr[ch], x, std::abs(x) * 1e-3 + 1e-6) << t << " " << ch;
        continue;
      }
      // The channel's range over the token's group.
      const int64_t g0 = t / 32 * 32;
      float lo = INFINITY, hi = -INFINITY;
      for (int64_t j = g0; j < g0 + 32; ++j) {
        lo = std::min(lo, k[j * kHd + ch]);
        hi = std::max(hi, k[j * kHd + ch]);
      }
      const float step = (hi - lo) / 15;
      // Half a step, plus the f16 rounding of the key, scale and minimum.
      EXPECT_LE(std::abs(kr[ch] - x), 0.5f * step + 2e-3f * (std::abs(lo) + std::abs(hi)))
          << t << " " << ch;
      kivi_err += (kr[ch] - x) * (kr[ch] - x);
    }
    // Values per token, Q4_1: within half a step of the token's range.
    const float vlo = *std::min_element(v.begin() + t * kHd, v.begin() + (t + 1) * kHd);
    const float vhi = *std::max_element(v.begin() + t * kHd, v.begin() + (t + 1) * kHd);
    for (int64_t ch = 0; ch < kHd; ++ch) {
      EXPECT_LE(std::abs(vr[ch] - v[t * kHd + ch]), 0.5f * (vhi - vlo) / 15 + 1e-2f);
    }
  }
  // The same keys per token (q4): the outlier channels set every token's scale, and the
  // ordinary channels lose most of their precision.
  std::unique_ptr<KvCache> q4 = Filled(kcpu::GgmlType::kQ4_1, "full", n, k, v);
  double token_err = 0;
  for (int64_t t = 0; t < 64; ++t) {
    q4->ReadEntry(0, 0, t, kr.data(), vr.data());
    for (int64_t ch = 0; ch < kHd; ++ch) {
      token_err += (kr[ch] - k[t * kHd + ch]) * (kr[ch] - k[t * kHd + ch]);
    }
  }
  EXPECT_LT(kivi_err, 0.25 * token_err);
  // Bytes: 70 Q4_1 value rows of 20, two groups of 32 x 16 code bytes + 128 of scales,
  // 6 f16 residual keys of 64.
  EXPECT_EQ(c->bytes(), 70 * 20 + 2 * 640 + 6 * 64);
  EXPECT_EQ(q4->bytes(), 70 * 20 * 2);
}

TEST(KvKiviTest, EvictionReleasesAGroupWithItsLastMember) {
  std::vector<float> k, v;
  MakeKv(100, &k, &v);
  // A recent window of 40: at the end positions 60..99 stay. Group 0 (0..31) is gone,
  // group 1 (32..63) holds 4 of them, group 2 (64..95) all, 96..99 are residual.
  std::unique_ptr<KvCache> c = Filled(kKvQ4Kivi, "streaming:budget=40,sinks=0", 100, k, v);
  const std::vector<int64_t> kept = c->KeptPositions(0, 0);
  ASSERT_EQ(kept.size(), 40u);
  EXPECT_EQ(kept.front(), 60);
  EXPECT_EQ(c->bytes(), 40 * 20 + 2 * 640 + 4 * 64);
  EXPECT_GT(c->peak_bytes(), c->bytes());
  // Reused group storage still decodes the right keys.
  std::vector<float> kr(kHd), vr(kHd);
  c->ReadEntry(0, 0, 39, kr.data(), vr.data());  // position 99, residual
  EXPECT_NEAR(kr[3], k[99 * kHd + 3], 0.05);
  c->ReadEntry(0, 0, 10, kr.data(), vr.data());  // position 70, group 2 in group 0's place
  EXPECT_NEAR(kr[3], k[70 * kHd + 3], 2.5);
  EXPECT_NEAR(kr[0], k[70 * kHd + 0], 0.5);
  // Truncating into the residual and a group releases both.
  c->Truncate(64);
  EXPECT_EQ(c->bytes(), 4 * 20 + 640);
}

TEST(KvKiviTest, AttentionStaysWithinTheQ4Bound) {
  KvCache::Options o{.n_layer = 1, .n_ctx = 128, .n_head_kv = 2, .head_dim = kHd};
  o.type = kKvQ4Kivi;
  auto c = KvCache::Create(o);
  ASSERT_TRUE(c.ok());
  const int64_t n_head = 4, kvd = 2 * kHd, qd = n_head * kHd, total = 90;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> d(0, 1);
  std::vector<float> q(total * qd), k(total * kvd), v(total * kvd), out(total * qd),
      ref(total * qd);
  for (float& x : q) x = d(rng);
  for (float& x : k) x = d(rng);
  for (float& x : v) x = d(rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHd));
  kcpu::AttentionShape shape{n_head, 2, kHd, scale};
  for (int64_t pos = 0; pos < total;) {
    const int64_t n = pos == 0 ? 40 : 1;
    EXPECT_TRUE((*c)->Append(0, pos, n, k.data() + pos * kvd, v.data() + pos * kvd).ok());
    (*c)->Attend(0, q.data() + pos * qd, n, pos, n_head, scale, out.data() + pos * qd);
    (*c)->Advance(n);
    kcpu::CausalAttention(shape, q.data() + pos * qd, n, pos, k.data(), v.data(), kvd,
                          ref.data() + pos * qd);
    pos += n;
  }
  double e = 0, r = 0;
  for (int64_t i = 0; i < total * qd; ++i) {
    e += (out[i] - ref[i]) * (out[i] - ref[i]);
    r += ref[i] * ref[i];
  }
  EXPECT_LT(std::sqrt(e / r), 0.15);
  EXPECT_GT(std::sqrt(e / r), 0.0);
}

TEST(KvKiviTest, MikvOverKiviIsRefused) {
  KvCache::Options o{.n_layer = 1, .n_ctx = 64, .n_head_kv = 1, .head_dim = kHd};
  o.type = kKvQ4Kivi;
  o.policy = *ParseKvPolicy("mikv:budget=8");
  EXPECT_FALSE(KvCache::Create(o).ok());
}

}  // namespace
}  // namespace moex
