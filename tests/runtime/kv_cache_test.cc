#include "cache/kv_cache.h"

#include "gtest/gtest.h"

namespace moex {
namespace {

TEST(KvCacheTest, ReserveRefusesToOverflowAndNamesTheLimit) {
  auto c = KvCache::Create(2, 8, 16);
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

TEST(KvCacheTest, LayersAndKeysValuesDoNotOverlap) {
  auto c = KvCache::Create(3, 4, 5);
  ASSERT_TRUE(c.ok());
  KvCache& kv = **c;
  EXPECT_EQ(kv.bytes(), 2 * 3 * 4 * 5 * 4);
  for (int l = 0; l < 3; ++l) {
    EXPECT_EQ(kv.V(l) - kv.K(l), 4 * 5);
    if (l > 0) {
      EXPECT_EQ(kv.K(l) - kv.V(l - 1), 4 * 5);
    }
  }
}

TEST(KvCacheTest, AbsurdSizeIsResourceExhaustedNotACrash) {
  auto c = KvCache::Create(1 << 20, 1 << 20, 1 << 12);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace moex
