// The KV cache's paged row storage: rows keep their bytes through random appends and
// removals (against a plain model of the same operations), pages follow the rows in use
// and are reused, and a compressing cache built on it keeps exactly the rows of the
// positions it keeps, in a bounded number of pages.
#include "cache/kv_pages.h"

#include <cmath>
#include <cstring>
#include <random>

#include "cache/kv_cache.h"
#include "cache/kv_policy.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace moex {
namespace {

// Fills a row with bytes derived from `id`, so that a row moved to the wrong place or
// overwritten shows.
void Stamp(uint8_t* row, int64_t bytes, uint32_t id) {
  for (int64_t b = 0; b < bytes; ++b) row[b] = static_cast<uint8_t>(id * 131 + b * 7 + (id >> 8));
}
bool HasStamp(const uint8_t* row, int64_t bytes, uint32_t id) {
  for (int64_t b = 0; b < bytes; ++b) {
    if (row[b] != static_cast<uint8_t>(id * 131 + b * 7 + (id >> 8))) return false;
  }
  return true;
}

TEST(KvRowsTest, RandomAppendsAndRemovalsKeepEveryRowsBytes) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (const int per_page : {1, 4, 32}) {
    for (const int64_t row_bytes : {int64_t{1}, int64_t{37}, int64_t{512}}) {
      SCOPED_TRACE(::testing::Message() << per_page << " rows a page of " << row_bytes);
      KvPagePool pool(row_bytes, per_page);
      KvRows rows(&pool);
      // The model: the id each live row was stamped with, by row index.
      std::vector<uint32_t> ids;
      uint32_t next_id = 1;
      int64_t most_pages = 0;
      std::vector<uint8_t> dead;
      std::vector<int32_t> remap;
      for (int step = 0; step < 300; ++step) {
        const int n_add = static_cast<int>(rng() % 40);
        for (int a = 0; a < n_add; ++a) {
          const int32_t r = rows.Append();
          ASSERT_EQ(r, static_cast<int32_t>(ids.size()));
          Stamp(rows.row(r), row_bytes, next_id);
          ids.push_back(next_id++);
        }
        most_pages = std::max(most_pages, rows.pages());
        // Remove a random share (sometimes none, sometimes all).
        const int share = static_cast<int>(rng() % 5);  // 0, 25, 50, 75, 100 %
        dead.assign(ids.size(), 0);
        for (uint8_t& d : dead) d = static_cast<int>(rng() % 4) < share;
        rows.Remove(dead, &remap);
        std::vector<uint32_t> moved(rows.size(), 0);
        for (size_t i = 0; i < ids.size(); ++i) {
          if (dead[i]) {
            ASSERT_EQ(remap[i], -1);
            continue;
          }
          ASSERT_GE(remap[i], 0);
          ASSERT_LT(remap[i], rows.size());
          ASSERT_EQ(moved[remap[i]], 0u) << "two rows moved to " << remap[i];
          moved[remap[i]] = ids[i];
        }
        ids = moved;
        for (int32_t r = 0; r < rows.size(); ++r) {
          ASSERT_TRUE(HasStamp(rows.row(r), row_bytes, ids[r])) << "row " << r << " step " << step;
        }
        ASSERT_EQ(rows.pages(), (rows.size() + per_page - 1) / per_page);
        // Pages go back to the pool and come out again: never more than the most held.
        ASSERT_EQ(pool.pages(), most_pages);
      }
      rows.Clear();
      EXPECT_EQ(rows.size(), 0);
      EXPECT_EQ(pool.pages(), most_pages);  // kept for reuse
      pool.Trim();
      EXPECT_EQ(pool.pages(), 0);
    }
  }
}

TEST(KvRowsTest, HeadsShareThePoolsPages) {
  KvPagePool pool(8, 32);
  KvRows a(&pool), b(&pool);
  for (int i = 0; i < 100; ++i) a.Append();  // 4 pages
  EXPECT_EQ(pool.pages(), 4);
  std::vector<uint8_t> dead(100, 1);
  std::vector<int32_t> remap;
  a.Remove(dead, &remap);
  EXPECT_EQ(a.pages(), 0);
  for (int i = 0; i < 128; ++i) b.Append();  // takes a's 4 pages back
  EXPECT_EQ(pool.pages(), 4);
  KvRows c = std::move(b);
  EXPECT_EQ(c.size(), 128);
  EXPECT_EQ(b.size(), 0);
  c = KvRows();  // hands its pages back
  for (int i = 0; i < 100; ++i) a.Append();
  EXPECT_EQ(pool.pages(), 4);
}

KvCache::Options Shape(kcpu::GgmlType type, const char* policy) {
  return {.n_layer = 2,
          .n_ctx = 1024,
          .n_head_kv = 2,
          .head_dim = 64,
          .type = type,
          .policy = *ParseKvPolicy(policy)};
}

// Feeds the same random sequence to a compressing cache and to a full one, chunk by chunk
// (each chunk attended, so the policy compresses), and checks that every entry the
// compressing cache keeps reads back as the full cache's entry of that position: exactly
// (a mikv low entry: exactly as that entry re-quantised to q4; a q4kivi key, whose group
// holds other members in the two caches: within two quantisation steps); rows moved
// between pages, or re-indexed wrongly, would not.
TEST(KvCachePagesTest, KeptEntriesReadBackAsStored) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  for (const kcpu::GgmlType type : {kcpu::GgmlType::kF32, kcpu::GgmlType::kF16,
                                    kcpu::GgmlType::kQ8_0, kcpu::GgmlType::kQ4_1, kKvQ4Kivi}) {
    for (const char* policy : {"streaming:budget=40,sinks=3,window=20", "h2o:budget=40",
                               "snapkv:budget=33", "mikv:budget=40,bits=4"}) {
      const bool mikv = std::string(policy).starts_with("mikv");
      if (mikv && (type == kcpu::GgmlType::kQ4_1 || type == kKvQ4Kivi)) continue;
      SCOPED_TRACE(::testing::Message() << KvTypeName(type) << " " << policy);
      std::mt19937_64 rng(seed);
      auto c = KvCache::Create(Shape(type, policy));
      auto full = KvCache::Create(Shape(type, "full"));
      ASSERT_TRUE(c.ok() && full.ok()) << c.status() << full.status();
      const KvCache::Options& o = (*c)->options();
      const int64_t n_head = 4, kv_dim = o.n_head_kv * o.head_dim, q_dim = n_head * o.head_dim;
      std::vector<float> out(32 * q_dim);
      for (int64_t pos = 0; pos < 400;) {
        const int64_t n = 1 + static_cast<int64_t>(rng() % 31);
        const std::vector<float> k = testing::RandomNormal(rng, n * kv_dim),
                                 v = testing::RandomNormal(rng, n * kv_dim),
                                 q = testing::RandomNormal(rng, n * q_dim);
        for (KvCache* kv : {c->get(), full->get()}) {
          for (int64_t l = 0; l < o.n_layer; ++l) {
            EXPECT_TRUE(kv->Append(l, pos, n, k.data(), v.data()).ok());
            kv->Attend(l, q.data(), n, pos, n_head, 0.125f, out.data());
          }
          kv->Advance(n);
        }
        pos += n;
      }
      std::vector<float> k1(o.head_dim), v1(o.head_dim), k2(o.head_dim), v2(o.head_dim);
      std::vector<uint8_t> q4(
          kcpu::RowBytes(kcpu::GetTypeTraits(kcpu::GgmlType::kQ4_1), o.head_dim));
      // Re-quantises a full-precision row as mikv's demotion does (bits=4: Q4_1).
      auto demoted = [&](std::vector<float>& x) {
        kcpu::QuantizeRow(kcpu::GgmlType::kQ4_1, x.data(), q4.data(), o.head_dim);
        kcpu::DequantizeRow(kcpu::GgmlType::kQ4_1, q4.data(), x.data(), o.head_dim);
      };
      int64_t n_low = 0;
      for (int64_t l = 0; l < o.n_layer; ++l) {
        for (int64_t h = 0; h < o.n_head_kv; ++h) {
          const std::vector<int64_t> kept = (*c)->KeptPositions(l, h);
          const std::vector<int64_t> low = (*c)->LowPositions(l, h);
          // Compression follows each chunk (at most 31 tokens), so at most that many over.
          const int64_t limit = (*c)->high_budget() + (*c)->low_budget();
          ASSERT_LE(static_cast<int64_t>(kept.size()), std::max((*c)->LayerBudget(l), limit) + 31);
          for (size_t i = 0; i < kept.size(); ++i) {
            (*c)->ReadEntry(l, h, static_cast<int64_t>(i), k1.data(), v1.data());
            (*full)->ReadEntry(l, h, kept[i], k2.data(), v2.data());
            if (std::find(low.begin(), low.end(), kept[i]) != low.end()) {
              demoted(k2);
              demoted(v2);
              ++n_low;
            }
            if (type == kKvQ4Kivi) {
              // Keys N(0, 1): a group's step is about 6 / 15; a key of another position
              // would differ by far more somewhere in its 64 values.
              for (int64_t d = 0; d < o.head_dim; ++d) {
                ASSERT_NEAR(k1[d], k2[d], 1.0f) << "key of position " << kept[i] << " layer " << l
                                                << " head " << h << " value " << d;
              }
            } else {
              ASSERT_EQ(0, std::memcmp(k1.data(), k2.data(), k1.size() * sizeof(float)))
                  << "key of position " << kept[i] << " layer " << l << " head " << h;
            }
            ASSERT_EQ(0, std::memcmp(v1.data(), v2.data(), v1.size() * sizeof(float)))
                << "value of position " << kept[i] << " layer " << l << " head " << h;
          }
        }
      }
      if (mikv) {
        EXPECT_GT(n_low, 0) << "no entry was demoted: the low store went untested";
      }
    }
  }
}

// A compressing cache in steady decode holds a bounded number of pages and takes no new
// ones: what an eviction empties, the next append takes back.
TEST(KvCachePagesTest, SteadyDecodeHoldsBoundedPagesAndTakesNoNewOnes) {
  for (const kcpu::GgmlType type : {kcpu::GgmlType::kF16, kKvQ4Kivi}) {
    SCOPED_TRACE(KvTypeName(type));
    auto c = KvCache::Create(Shape(type, "streaming:budget=100"));
    ASSERT_TRUE(c.ok()) << c.status();
    const KvCache::Options& o = (*c)->options();
    std::mt19937_64 rng(5);
    const int64_t n_head = 4, kv_dim = o.n_head_kv * o.head_dim, q_dim = n_head * o.head_dim;
    const std::vector<float> k = testing::RandomNormal(rng, 64 * kv_dim),
                             v = testing::RandomNormal(rng, 64 * kv_dim),
                             q = testing::RandomNormal(rng, 64 * q_dim);
    std::vector<float> out(64 * q_dim);
    int64_t pos = 0;
    auto step = [&](int64_t n) {
      for (int64_t l = 0; l < o.n_layer; ++l) {
        EXPECT_TRUE((*c)->Append(l, pos, n, k.data(), v.data()).ok());
        (*c)->Attend(l, q.data(), n, pos, n_head, 0.125f, out.data());
      }
      (*c)->Advance(n);
      pos += n;
    };
    step(64);
    step(64);  // past the budget: compressed to 100 per head
    for (int i = 0; i < 40; ++i) step(1);
    const int64_t settled = (*c)->allocated_bytes();
    for (int i = 0; i < 300; ++i) {
      step(1);
      ASSERT_EQ((*c)->allocated_bytes(), settled) << "decode step " << i;
    }
    // 101 rows at most between an append and its compression: 4 pages of 32 per head,
    // plus q4kivi's groups (one page each) and residual keys.
    const int64_t heads = o.n_layer * o.n_head_kv;
    const int64_t row_page = 32 * 2 * 128;  // f16 rows of 64 values, key and value planes
    if (type == kcpu::GgmlType::kF16) {
      EXPECT_EQ(settled, heads * 4 * row_page);
    } else {
      EXPECT_LE(settled, heads * (4 * 32 * 40 + 5 * (32 * 32 + 4 * 64) + 2 * 32 * 128));
    }
    EXPECT_GE(settled, (*c)->bytes());
    // Truncation empties pages into the pool; growing back one token at a time takes
    // them again and no more.
    (*c)->Truncate(20);
    pos = 20;
    for (int i = 0; i < 200; ++i) step(1);
    EXPECT_EQ((*c)->allocated_bytes(), settled);
  }
}

}  // namespace
}  // namespace moex

namespace moex {
namespace {

// A cache whose pages run out (its byte limit) says so, naming the layer, the head and
// the limit, keeps what it had, and Truncate takes back a half-stored step.
TEST(KvCachePagesTest, RunningOutOfPagesIsAnErrorAndTruncateRestores) {
  KvCache::Options o = Shape(kcpu::GgmlType::kF16, "full");
  o.max_bytes = 8 * 32 * 2 * 128 + 1000;  // two f16 pages per head (4 heads), and change
  auto c = KvCache::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  std::mt19937_64 rng(8);
  const int64_t kv_dim = o.n_head_kv * o.head_dim;
  const std::vector<float> k = testing::RandomNormal(rng, 64 * kv_dim),
                           v = testing::RandomNormal(rng, 64 * kv_dim);
  // Steps of 24: the third (positions 48..71) fills layer 0 head 0's second page at 63 and
  // fails at 64, its first 16 positions stored.
  for (int64_t pos = 0; pos < 48; pos += 24) {
    for (int64_t l = 0; l < o.n_layer; ++l) {
      ASSERT_TRUE((*c)->Append(l, pos, 24, k.data(), v.data()).ok());
    }
    (*c)->Advance(24);
  }
  const absl::Status st = (*c)->Append(0, 48, 24, k.data(), v.data());
  ASSERT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_NE(st.message().find("layer 0 KV head 0"), std::string::npos) << st;
  EXPECT_NE(st.message().find("limit 66536"), std::string::npos) << st;
  EXPECT_LE((*c)->allocated_bytes(), o.max_bytes);
  ASSERT_EQ((*c)->size(), 48);
  ASSERT_EQ((*c)->KeptPositions(0, 0).size(), 64u);  // the half-stored step
  (*c)->Truncate(48);
  for (int64_t l = 0; l < o.n_layer; ++l) {
    for (int64_t h = 0; h < o.n_head_kv; ++h) {
      const std::vector<int64_t> kept = (*c)->KeptPositions(l, h);
      ASSERT_EQ(kept.size(), 48u) << "layer " << l << " head " << h;
      EXPECT_EQ(kept.back(), 47);
    }
  }
  // Giving positions back frees pages for the next step.
  (*c)->Truncate(24);
  EXPECT_TRUE((*c)->Append(0, 24, 24, k.data(), v.data()).ok());
}

// q4kivi stores a position's value row and its key in a second store: when the key finds
// no page, the value row taken for it is given back and nothing is stored.
TEST(KvCachePagesTest, Q4KiviGivesBackTheValueRowWhenItsKeyFindsNoPage) {
  KvCache::Options o = Shape(kKvQ4Kivi, "full");
  o.max_bytes = 32 * 40 + 100;  // one page of q4 value rows (64 values: 40 bytes), no keys
  auto c = KvCache::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  std::mt19937_64 rng(4);
  const int64_t kv_dim = o.n_head_kv * o.head_dim;
  const std::vector<float> k = testing::RandomNormal(rng, kv_dim),
                           v = testing::RandomNormal(rng, kv_dim);
  const absl::Status st = (*c)->Append(0, 0, 1, k.data(), v.data());
  ASSERT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_TRUE((*c)->KeptPositions(0, 0).empty());
  EXPECT_EQ((*c)->bytes(), 0);
  EXPECT_EQ((*c)->allocated_bytes(), 32 * 40);  // the value page, back in its pool
}

// mikv demotes into a pool of its own; when no page can be had for a demoted row, the
// entry is dropped instead and the cache stays within its budget; pages another store
// emptied are freed for it when it needs them.
TEST(KvCachePagesTest, MikvDropsWhatItCannotDemote) {
  KvCache::Options o = Shape(kcpu::GgmlType::kF16, "mikv:budget=64,hi=0.5,bits=4");
  o.n_layer = 1;
  o.n_head_kv = 1;
  o.max_bytes = 3 * 32 * 2 * 128;  // three pages of f16 rows, none left for q4 rows
  auto c = KvCache::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  std::mt19937_64 rng(2);
  const int64_t n_head = 2, kv_dim = o.head_dim, q_dim = n_head * o.head_dim;
  const std::vector<float> k = testing::RandomNormal(rng, 80 * kv_dim),
                           v = testing::RandomNormal(rng, 80 * kv_dim),
                           q = testing::RandomNormal(rng, 80 * q_dim);
  std::vector<float> out(80 * q_dim);
  ASSERT_TRUE((*c)->Append(0, 0, 80, k.data(), v.data()).ok());
  (*c)->Attend(0, q.data(), 80, 0, n_head, 0.125f, out.data());
  (*c)->Advance(80);
  EXPECT_TRUE((*c)->LowPositions(0, 0).empty());
  EXPECT_EQ(static_cast<int64_t>((*c)->KeptPositions(0, 0).size()), (*c)->high_budget());
  for (float x : out) ASSERT_TRUE(std::isfinite(x));
  // The eviction emptied row pages into their pool: the next demotion frees one of them
  // (its bytes back under the limit) and gets its low page.
  ASSERT_TRUE((*c)->Append(0, 80, 8, k.data(), v.data()).ok());
  (*c)->Attend(0, q.data(), 8, 80, n_head, 0.125f, out.data());
  (*c)->Advance(8);
  EXPECT_FALSE((*c)->LowPositions(0, 0).empty());
  EXPECT_LE((*c)->allocated_bytes(), o.max_bytes);
}

}  // namespace
}  // namespace moex
