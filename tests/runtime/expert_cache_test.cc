// The GPU expert cache (cache/expert_cache.h): each policy on hand-made access sequences
// (the expected hits and evictions worked out by hand in the comments), pins, fixed
// contents, validation, slot splitting, and a replay of routing traces whose hit rates
// must equal those of the trace analysis (moex::AnalyzeTrace) for lru, lfu, score and
// belady at every cache size.
#include "cache/expert_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "moex/trace.h"
#include "tests/test_util.h"

namespace moex {
namespace {

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

ExpertCacheOptions OneLayer(ExpertCachePolicy policy, int32_t experts, int32_t slots) {
  ExpertCacheOptions o;
  o.policy = policy;
  o.num_layers = 1;
  o.num_experts = experts;
  o.slots = {slots};
  return o;
}

// One step per entry of `steps` on layer 0: each expert accessed in order, a miss
// inserted at once. Returns the evicted experts in order (a fill of a free slot adds
// nothing).
std::vector<int32_t> Steps(ExpertCache& cache, const std::vector<std::vector<int32_t>>& steps,
                           int64_t first_step = 0) {
  std::vector<int32_t> evicted;
  for (size_t s = 0; s < steps.size(); ++s) {
    cache.SetStep(first_step + static_cast<int64_t>(s));
    for (int32_t e : steps[s]) {
      if (cache.Access(0, e)) continue;
      absl::StatusOr<int32_t> v = cache.Insert(0, e);
      EXPECT_TRUE(v.ok()) << v.status();
      if (v.ok() && *v >= 0) evicted.push_back(*v);
    }
  }
  return evicted;
}

// ---- names and validation ---------------------------------------------------------------

TEST(ExpertCacheTest, PolicyNamesRoundTrip) {
  for (ExpertCachePolicy p :
       {ExpertCachePolicy::kScore, ExpertCachePolicy::kLru, ExpertCachePolicy::kLfu,
        ExpertCachePolicy::kStatic, ExpertCachePolicy::kLayers, ExpertCachePolicy::kBelady}) {
    absl::StatusOr<ExpertCachePolicy> back = ParseExpertCachePolicy(ExpertCachePolicyName(p));
    ASSERT_TRUE(back.ok()) << ExpertCachePolicyName(p);
    EXPECT_EQ(*back, p);
  }
  EXPECT_STREQ(ExpertCachePolicyName(ExpertCachePolicy::kScore), "score");
  absl::StatusOr<ExpertCachePolicy> bad = ParseExpertCachePolicy("fifo");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("belady"), std::string::npos) << bad.status();
}

TEST(ExpertCacheTest, RejectsInconsistentOptions) {
  auto code = [](const ExpertCacheOptions& o) { return ExpertCache::Create(o).status().code(); };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  ExpertCacheOptions o = OneLayer(ExpertCachePolicy::kLru, 4, 2);
  EXPECT_EQ(code(o), absl::StatusCode::kOk);
  o.num_layers = 2;  // one slot count for two layers
  EXPECT_EQ(code(o), kInvalid);
  o = OneLayer(ExpertCachePolicy::kLru, 4, 5);  // more slots than experts
  EXPECT_EQ(code(o), kInvalid);
  o = OneLayer(ExpertCachePolicy::kLru, 4, -1);
  EXPECT_EQ(code(o), kInvalid);
  o = OneLayer(ExpertCachePolicy::kLru, 0, 0);
  EXPECT_EQ(code(o), kInvalid);
  o = OneLayer(ExpertCachePolicy::kScore, 4, 2);
  o.score_alpha = 0;
  EXPECT_EQ(code(o), kInvalid);
  o.score_alpha = 1;
  EXPECT_EQ(code(o), kInvalid);
  o = OneLayer(ExpertCachePolicy::kStatic, 4, 2);
  EXPECT_EQ(code(o), kInvalid);  // no frequency table
  o.frequency = {1, 2, 3};
  EXPECT_EQ(code(o), kInvalid);
  o.frequency = {1, 2, 3, 4};
  EXPECT_EQ(code(o), absl::StatusCode::kOk);
  o = OneLayer(ExpertCachePolicy::kBelady, 4, 2);
  EXPECT_EQ(code(o), kInvalid);  // no oracle
  o = OneLayer(ExpertCachePolicy::kLayers, 4, 2);
  EXPECT_EQ(code(o), kInvalid);  // a partial layer
}

TEST(ExpertCacheTest, ChooseVictimErrors) {
  ExpertCacheOptions o = OneLayer(ExpertCachePolicy::kLru, 4, 1);
  o.num_layers = 2;
  o.slots = {1, 0};
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ChooseVictim(2, 0).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(c->ChooseVictim(0, 4).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(c->Insert(-1, 0).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(c->ChooseVictim(1, 0).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(c->Insert(1, 0).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_EQ(*c->ChooseVictim(0, 3), -1);
  ASSERT_EQ(*c->Insert(0, 3), -1);
  EXPECT_EQ(c->ChooseVictim(0, 3).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c->Insert(0, 3).status().code(), absl::StatusCode::kFailedPrecondition);
  // A failed insertion changes nothing.
  EXPECT_EQ(c->size(0), 1);
  EXPECT_EQ(c->size(1), 0);
  EXPECT_EQ(c->stats().insertions, 1);
}

// ---- the demand policies ----------------------------------------------------------------

TEST(ExpertCacheTest, LruEvictsLeastRecentlyUsed) {
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(OneLayer(ExpertCachePolicy::kLru, 5, 2));
  ASSERT_TRUE(c.ok()) << c.status();
  // step 0: 0 miss, free slot 0           {0}
  // step 1: 1 miss, free slot 1           {0, 1}
  // step 2: 0 hit                          last use: 0@2, 1@1
  // step 3: 2 miss, evict 1 (used at 1)   {0, 2}   2 takes slot 1
  // step 4: 1 miss, evict 0 (used at 2)   {1, 2}   1 takes slot 0
  // step 5: 3 miss, evict 2 (used at 3)   {1, 3}
  // step 6: 0 miss, evict 1 (used at 4)   {0, 3}
  EXPECT_EQ(Steps(*c, {{0}, {1}, {0}, {2}, {1}, {3}, {0}}), (std::vector<int32_t>{1, 0, 2, 1}));
  const ExpertCache::Stats s = c->stats();
  EXPECT_EQ(s.hits, 1);
  EXPECT_EQ(s.misses, 6);
  EXPECT_EQ(s.insertions, 6);
  EXPECT_EQ(s.evictions, 4);
  EXPECT_EQ(c->ResidentExperts(0), (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(c->Slot(0, 0), 0);
  EXPECT_EQ(c->Slot(0, 3), 1);
  EXPECT_EQ(c->Slot(0, 1), -1);
  EXPECT_EQ(c->KeepValue(0, 0), 6);
  EXPECT_EQ(c->KeepValue(0, 3), 5);
}

TEST(ExpertCacheTest, LruOrdersAccessesWithinAStep) {
  // Every access at one step: the order of the accesses decides. Slots 3; step 0 uses
  // 2, 0, 1 in that order, step 1 loads 3: 2 is the least recent.
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(OneLayer(ExpertCachePolicy::kLru, 4, 3));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Steps(*c, {{2, 0, 1}, {3}}), (std::vector<int32_t>{2}));
}

TEST(ExpertCacheTest, LfuEvictsLeastFrequentlyUsedTiesToLeastRecent) {
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(OneLayer(ExpertCachePolicy::kLfu, 5, 2));
  ASSERT_TRUE(c.ok());
  // Uses count hits and misses alike.
  // step 0: 0 miss                 uses 0:1            {0}
  // step 1: 0 hit                  uses 0:2
  // step 2: 1 miss, free           uses 1:1            {0, 1}
  // step 3: 2 miss, uses 2:1; 0 has 2, 1 has 1: evict 1           {0, 2}
  // step 4: 1 miss, uses 1:2; 0 has 2, 2 has 1: evict 2           {0, 1}
  //         (LRU would evict 0, last used at step 1)
  // step 5: 2 miss, uses 2:2; 0 and 1 both 2: the less recent, 0   {2, 1}
  // step 6: 3 miss, uses 3:1; 1 (2, at 4) and 2 (2, at 5): evict 1 {2, 3}
  EXPECT_EQ(Steps(*c, {{0}, {0}, {1}, {2}, {1}, {2}, {3}}), (std::vector<int32_t>{1, 2, 0, 1}));
  EXPECT_EQ(c->stats().hits, 1);
  EXPECT_EQ(c->ResidentExperts(0), (std::vector<int32_t>{2, 3}));
  // KeepValue: the count, plus a recency fraction below 1.
  EXPECT_GE(c->KeepValue(0, 1), 2.0);  // two misses counted
  EXPECT_LT(c->KeepValue(0, 1), 3.0);
  EXPECT_GT(c->KeepValue(0, 2), c->KeepValue(0, 1));  // same count, more recent
  EXPECT_LT(c->KeepValue(0, 4), 1.0);                 // never used
}

TEST(ExpertCacheTest, ExpertsOfTheCurrentStepAreKept) {
  // LFU, 2 slots: expert 0 is used three times, then a step routes to 1 and 2. Loading 2
  // would evict 1 by count (1 use against 3), but 1 is needed at this very step: 0 goes.
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(OneLayer(ExpertCachePolicy::kLfu, 4, 2));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Steps(*c, {{0}, {0}, {0}, {1, 2}}), (std::vector<int32_t>{0}));
  // The next step 1 and 2 are no longer current: count decides again (1:1, 2:1, 3:1
  // after the miss; a tie, so the less recent 1 goes).
  EXPECT_EQ(Steps(*c, {{3}}, 4), (std::vector<int32_t>{1}));
}

TEST(ExpertCacheTest, ScoreEvictsLowestDecayedScore) {
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(OneLayer(ExpertCachePolicy::kScore, 4, 2));
  ASSERT_TRUE(c.ok());
  // alpha = 0.5: S <- 0.5 s + 0.5 S for the routed, 0.5 S for the rest; each step's
  // routing is observed after its accesses (the analysis's order).
  //   step 0: route 0 (s 1.0): 0 miss, free.          S = {0.5, 0, 0, 0}
  //   step 1: route 1 (s 0.2): 1 miss, free.          S = {0.25, 0.1, 0, 0}
  //   step 2: route 2 (s 0.6): 2 miss; S0 0.25 > S1 0.1: evict 1 (LRU would evict 0).
  //                                                   S = {0.125, 0.05, 0.3, 0}
  //   step 3: route 1 (s 0.9): 1 miss; S0 0.125 < S2 0.3: evict 0.
  //                                                   S = {0.0625, 0.475, 0.15, 0}
  //   step 4: route 0 (s 0.5): 0 miss; S2 0.15 < S1 0.475: evict 2.
  //                                                   S = {0.28125, 0.2375, 0.075, 0}
  const std::vector<std::pair<int32_t, float>> route = {
      {0, 1.0f}, {1, 0.2f}, {2, 0.6f}, {1, 0.9f}, {0, 0.5f}};
  std::vector<int32_t> evicted;
  for (size_t s = 0; s < route.size(); ++s) {
    c->SetStep(static_cast<int64_t>(s));
    const auto [e, score] = route[s];
    ASSERT_FALSE(c->Access(0, e));
    absl::StatusOr<int32_t> v = c->Insert(0, e);
    ASSERT_TRUE(v.ok()) << v.status();
    if (*v >= 0) evicted.push_back(*v);
    c->ObserveRouting(0, &e, &score, 1);
  }
  EXPECT_EQ(evicted, (std::vector<int32_t>{1, 0, 2}));
  // Scores are floats: 0.2f, 0.6f, 0.9f are not exact, so compare to within float error.
  EXPECT_NEAR(c->KeepValue(0, 0), 0.28125, 1e-7);
  EXPECT_NEAR(c->KeepValue(0, 1), 0.2375, 1e-7);
  EXPECT_NEAR(c->KeepValue(0, 2), 0.075, 1e-7);
  EXPECT_EQ(c->KeepValue(0, 3), 0.0);
  // Slots: 0 and 1 filled 0 and 1; 2 took 1's slot 1, 1 took 0's slot 0, 0 took 2's.
  EXPECT_EQ(c->ResidentExperts(0), (std::vector<int32_t>{1, 0}));
}

TEST(ExpertCacheTest, ScoreTopPRaisesExpertsNotUsed) {
  // The top-2k routing lists experts beyond the top-k: they gain score without a use.
  // 2 slots, k = 1, p = 2: step 0 uses 0, step 1 uses 1.
  //   step 0 lists {0: 0.8, 2: 0.2}  -> S0 0.4, S2 0.1
  //   step 1 lists {1: 0.6, 0: 0.4}  -> S0 0.2 + 0.2 = 0.4, S1 0.3, S2 0.05
  // Step 2 loads 3: residents 0 (S 0.4, used at 0) and 1 (S 0.3, used at 1): evict 1,
  // although 1 is the more recent: 0's listing at step 1, without a use, raised it.
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(OneLayer(ExpertCachePolicy::kScore, 4, 2));
  ASSERT_TRUE(c.ok());
  const int32_t ids0[] = {0, 2}, ids1[] = {1, 0};
  const float s0[] = {0.8f, 0.2f}, s1[] = {0.6f, 0.4f};
  EXPECT_EQ(Steps(*c, {{0}}), std::vector<int32_t>{});
  c->ObserveRouting(0, ids0, s0, 2);
  EXPECT_EQ(Steps(*c, {{1}}, 1), std::vector<int32_t>{});
  c->ObserveRouting(0, ids1, s1, 2);
  EXPECT_NEAR(c->KeepValue(0, 0), 0.4, 1e-7);
  EXPECT_NEAR(c->KeepValue(0, 1), 0.3, 1e-7);
  EXPECT_NEAR(c->KeepValue(0, 2), 0.05, 1e-7);
  EXPECT_EQ(Steps(*c, {{3}}, 2), (std::vector<int32_t>{1}));
}

TEST(ExpertCacheTest, ScoreSurvivesLongDecay) {
  // Thousands of routings: the scaled representation renormalises instead of overflowing,
  // and the order stays right.
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(OneLayer(ExpertCachePolicy::kScore, 3, 2));
  ASSERT_TRUE(c.ok());
  const int32_t a = 0, b = 1;
  const float one = 1.0f;
  for (int i = 0; i < 5000; ++i) c->ObserveRouting(0, i % 3 == 0 ? &a : &b, &one, 1);
  // The last routing (i = 4999, 4999 % 3 = 1) listed b: S_b = 0.5 + ..., S_a decayed.
  const double sa = c->KeepValue(0, 0), sb = c->KeepValue(0, 1);
  EXPECT_GT(sb, sa);
  EXPECT_GT(sa, 0.05);
  EXPECT_LT(sb, 1.0);
  EXPECT_EQ(c->KeepValue(0, 2), 0.0);
}

TEST(ExpertCacheTest, BeladyEvictsFarthestNextUse) {
  // Steps 0..6 use 0, 1, 2, 0, 1, 3, 1; the oracle reads them.
  const std::vector<int32_t> seq = {0, 1, 2, 0, 1, 3, 1};
  ExpertCacheOptions o = OneLayer(ExpertCachePolicy::kBelady, 4, 2);
  o.next_use = [seq](int32_t, int32_t expert, int64_t now) {
    for (int64_t t = now + 1; t < static_cast<int64_t>(seq.size()); ++t) {
      if (seq[t] == expert) return t;
    }
    return kNever;
  };
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(o);
  ASSERT_TRUE(c.ok());
  // step 0, 1: fill {0, 1}
  // step 2: 2 miss; next uses 0@3, 1@4: evict 1          {0, 2}
  // step 3: 0 hit
  // step 4: 1 miss; 0 and 2 never again: the less recent, 2 (used at 2)   {0, 1}
  // step 5: 3 miss; 0 never, 1@6: evict 0                 {3, 1}
  // step 6: 1 hit
  std::vector<std::vector<int32_t>> steps;
  for (int32_t e : seq) steps.push_back({e});
  EXPECT_EQ(Steps(*c, steps), (std::vector<int32_t>{1, 2, 0}));
  EXPECT_EQ(c->stats().hits, 2);
  EXPECT_EQ(c->KeepValue(0, 1), -static_cast<double>(kNever));
}

TEST(ExpertCacheTest, InsertionWithoutUseCountsAsRecentNotAsUse) {
  // LRU, 2 slots. Steps 0 and 1 use 0 and 1; step 2 prefetches 2 then 3 without using
  // them. 2 evicts 0 (least recent); 3 must not evict 2, inserted at this step: 1 goes.
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(OneLayer(ExpertCachePolicy::kLru, 4, 2));
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(Steps(*c, {{0}, {1}}).empty());
  c->SetStep(2);
  EXPECT_EQ(*c->Insert(0, 2), 0);
  EXPECT_EQ(*c->Insert(0, 3), 1);
  const ExpertCache::Stats s = c->stats();
  EXPECT_EQ(s.hits + s.misses, 2);
  EXPECT_EQ(s.insertions, 4);
  EXPECT_EQ(s.evictions, 2);
  EXPECT_TRUE(c->Access(0, 2));  // the prefetch served a later use
}

// ---- pins, slots, fixed contents --------------------------------------------------------

TEST(ExpertCacheTest, PinnedExpertsAreNeverEvicted) {
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(OneLayer(ExpertCachePolicy::kLru, 6, 3));
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(Steps(*c, {{0}, {1}, {2}}).empty());
  c->Pin(0, 0);
  c->Pin(0, 0);  // two pins
  c->SetStep(3);
  // LRU order 0, 1, 2: 0 is pinned, so 1 goes.
  EXPECT_EQ(*c->ChooseVictim(0, 3), 1);
  EXPECT_EQ(*c->Insert(0, 3), 1);
  c->Unpin(0, 0);
  EXPECT_TRUE(c->Pinned(0, 0));  // one pin left
  c->Pin(0, 2);
  c->Pin(0, 3);
  EXPECT_EQ(c->ChooseVictim(0, 4).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(c->Insert(0, 4).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(c->ResidentExperts(0), (std::vector<int32_t>{0, 3, 2}));
  c->Unpin(0, 0);
  EXPECT_FALSE(c->Pinned(0, 0));
  c->Unpin(0, 0);  // without a pin: ignored
  EXPECT_FALSE(c->Pinned(0, 0));
  EXPECT_EQ(*c->Insert(0, 4), 0);  // the only one unpinned
  // A pin on an absent expert protects it once inserted.
  c->Pin(0, 5);
  c->Unpin(0, 2);
  c->Unpin(0, 3);
  c->SetStep(4);
  // Recency: 2 used at step 2; 3 and 4 inserted at step 3, never used.
  EXPECT_EQ(*c->Insert(0, 5), 2);
  c->SetStep(5);
  // 5 (inserted at 4) is pinned; 3 and 4 tie on recency: the lower id goes.
  EXPECT_EQ(*c->Insert(0, 1), 3);
  EXPECT_EQ(*c->Insert(0, 0), 4);  // 1 was inserted at this step
  EXPECT_EQ(c->ResidentExperts(0), (std::vector<int32_t>{0, 1, 5}));
}

TEST(ExpertCacheTest, SlotsAreStableWhileResident) {
  // LRU, 4 slots, 10 experts: a long random run, checking after every insertion that
  // each expert that stayed kept its slot, the new one took the victim's, and slots and
  // ResidentExperts agree.
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(OneLayer(ExpertCachePolicy::kLru, 10, 4));
  ASSERT_TRUE(c.ok());
  std::mt19937 rng(7);
  std::vector<int32_t> slot_before(10);
  for (int step = 0; step < 2000; ++step) {
    c->SetStep(step);
    const int32_t e = static_cast<int32_t>(rng() % 10);
    for (int32_t x = 0; x < 10; ++x) slot_before[x] = c->Slot(0, x);
    if (c->Access(0, e)) continue;
    absl::StatusOr<int32_t> v = c->Insert(0, e);
    ASSERT_TRUE(v.ok());
    for (int32_t x = 0; x < 10; ++x) {
      if (x == e) {
        ASSERT_EQ(c->Slot(0, x), *v >= 0 ? slot_before[*v] : c->size(0) - 1) << step;
      } else if (x == *v) {
        ASSERT_EQ(c->Slot(0, x), -1);
      } else {
        ASSERT_EQ(c->Slot(0, x), slot_before[x]);
      }
    }
    const std::vector<int32_t> res = c->ResidentExperts(0);
    for (size_t s = 0; s < res.size(); ++s) ASSERT_EQ(c->Slot(0, res[s]), static_cast<int>(s));
  }
  EXPECT_EQ(c->size(0), 4);
}

TEST(ExpertCacheTest, StaticHoldsTheMostFrequentExperts) {
  ExpertCacheOptions o;
  o.policy = ExpertCachePolicy::kStatic;
  o.num_layers = 2;
  o.num_experts = 4;
  o.slots = {2, 1};
  // Layer 0: 1 and 2 (0.5 each); layer 1: a tie of 0 and 2 at 3, the lower id wins.
  o.frequency = {0.1, 0.5, 0.5, 0.2, 3, 1, 3, 0};
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ResidentExperts(0), (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(c->ResidentExperts(1), (std::vector<int32_t>{0}));
  EXPECT_EQ(c->Slot(0, 2), 1);
  EXPECT_FALSE(c->Access(0, 3));
  EXPECT_TRUE(c->Access(0, 1));
  EXPECT_FALSE(c->Access(1, 2));
  EXPECT_EQ(c->ChooseVictim(0, 3).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c->Insert(1, 2).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c->ResidentExperts(1), (std::vector<int32_t>{0}));
  EXPECT_EQ(c->layer_stats(0).hits, 1);
  EXPECT_EQ(c->layer_stats(0).misses, 1);
  EXPECT_EQ(c->layer_stats(1).misses, 1);
  EXPECT_EQ(c->stats().insertions, 0);
  EXPECT_EQ(c->KeepValue(1, 2), 3.0);
}

TEST(ExpertCacheTest, LayersHoldsWholeLayers) {
  ExpertCacheOptions o;
  o.policy = ExpertCachePolicy::kLayers;
  o.num_layers = 3;
  o.num_experts = 4;
  o.slots = SplitSlotsWholeLayers(9, 3, 4);  // the two deepest layers; 1 slot unused
  ASSERT_EQ(o.slots, (std::vector<int32_t>{0, 4, 4}));
  absl::StatusOr<ExpertCache> c = ExpertCache::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->size(0), 0);
  EXPECT_EQ(c->ResidentExperts(2), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_FALSE(c->Access(0, 1));
  EXPECT_TRUE(c->Access(1, 3));
  EXPECT_EQ(c->Insert(0, 1).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c->KeepValue(0, 1), 0.0);
  EXPECT_EQ(c->KeepValue(2, 1), 1.0);
}

// ---- slot splitting ---------------------------------------------------------------------

TEST(ExpertCacheTest, SplitSlotsEvenly) {
  EXPECT_EQ(SplitSlotsEvenly(10, 3, 8), (std::vector<int32_t>{4, 3, 3}));
  EXPECT_EQ(SplitSlotsEvenly(24, 3, 8), (std::vector<int32_t>{8, 8, 8}));
  EXPECT_EQ(SplitSlotsEvenly(1000, 3, 8), (std::vector<int32_t>{8, 8, 8}));  // capped
  EXPECT_EQ(SplitSlotsEvenly(23, 3, 8), (std::vector<int32_t>{8, 8, 7}));
  EXPECT_EQ(SplitSlotsEvenly(0, 3, 8), (std::vector<int32_t>{0, 0, 0}));
  EXPECT_EQ(SplitSlotsEvenly(-4, 2, 8), (std::vector<int32_t>{0, 0}));
  EXPECT_EQ(SplitSlotsEvenly(5, 2, 0), (std::vector<int32_t>{0, 0}));
  EXPECT_TRUE(SplitSlotsEvenly(5, 0, 8).empty());
}

TEST(ExpertCacheTest, SplitSlotsByWeight) {
  // Quotas 2.5, 2.5, 5: floors 2, 2, 5 and the last unit to the first of the tied .5s.
  EXPECT_EQ(SplitSlotsByWeight(10, 8, {1, 1, 2}), (std::vector<int32_t>{3, 2, 5}));
  // Quotas 1.6, 3.2, 5.2 (total 10): floors 1, 3, 5; fractions .6 .2 .2: layer 0.
  EXPECT_EQ(SplitSlotsByWeight(10, 8, {1, 2, 3.25}), (std::vector<int32_t>{2, 3, 5}));
  // Layer 2 would take 15 of 20: capped at 8, the other 12 shared: 6 and 6.
  EXPECT_EQ(SplitSlotsByWeight(20, 8, {1, 1, 6}), (std::vector<int32_t>{6, 6, 8}));
  // Cascading caps: 8 first, then the rest reaches the cap too.
  EXPECT_EQ(SplitSlotsByWeight(21, 8, {1, 4, 16}), (std::vector<int32_t>{5, 8, 8}));
  // The weighted layers full: the overflow goes to the zero-weight one.
  EXPECT_EQ(SplitSlotsByWeight(20, 8, {1, 0, 1}), (std::vector<int32_t>{8, 4, 8}));
  EXPECT_EQ(SplitSlotsByWeight(30, 8, {1, 0, 1}), (std::vector<int32_t>{8, 8, 8}));
  // No positive weight: evenly. NaN and negatives count as 0.
  EXPECT_EQ(SplitSlotsByWeight(5, 8, {0, 0}), (std::vector<int32_t>{3, 2}));
  EXPECT_EQ(SplitSlotsByWeight(5, 8, {std::nan(""), -1, 2}), (std::vector<int32_t>{0, 0, 5}));
  EXPECT_EQ(SplitSlotsByWeight(0, 8, {1, 2}), (std::vector<int32_t>{0, 0}));
  EXPECT_TRUE(SplitSlotsByWeight(5, 8, {}).empty());
  // Properties on random weights: the sum is min(total, L * E), every share <= E, and a
  // layer with a larger weight never gets fewer slots than one with a smaller weight
  // (up to the one unit of rounding).
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> w(0.01, 10);
  for (int trial = 0; trial < 500; ++trial) {
    const int32_t layers = 1 + static_cast<int32_t>(rng() % 40);
    const int32_t experts = 1 + static_cast<int32_t>(rng() % 64);
    const int64_t total = rng() % (int64_t{layers} * experts + 50);
    std::vector<double> weight(layers);
    for (double& x : weight) x = w(rng);
    const std::vector<int32_t> s = SplitSlotsByWeight(total, experts, weight);
    ASSERT_EQ(s.size(), static_cast<size_t>(layers));
    ASSERT_EQ(std::accumulate(s.begin(), s.end(), int64_t{0}),
              std::min<int64_t>(total, int64_t{layers} * experts))
        << trial;
    for (int32_t l = 0; l < layers; ++l) {
      ASSERT_GE(s[l], 0);
      ASSERT_LE(s[l], experts);
      for (int32_t m = 0; m < layers; ++m) {
        if (weight[l] > weight[m]) {
          ASSERT_GE(s[l] + 1, s[m]) << trial;
        }
      }
    }
  }
}

TEST(ExpertCacheTest, SplitSlotsWholeLayers) {
  EXPECT_EQ(SplitSlotsWholeLayers(20, 4, 8), (std::vector<int32_t>{0, 0, 8, 8}));
  EXPECT_EQ(SplitSlotsWholeLayers(32, 4, 8), (std::vector<int32_t>{8, 8, 8, 8}));
  EXPECT_EQ(SplitSlotsWholeLayers(1000, 4, 8), (std::vector<int32_t>{8, 8, 8, 8}));
  EXPECT_EQ(SplitSlotsWholeLayers(7, 4, 8), (std::vector<int32_t>{0, 0, 0, 0}));
  EXPECT_EQ(SplitSlotsWholeLayers(0, 2, 8), (std::vector<int32_t>{0, 0}));
  EXPECT_TRUE(SplitSlotsWholeLayers(8, 0, 8).empty());
}

// ---- the cross-check against the trace analysis ----------------------------------------

ExpertCachePolicy CachePolicyOf(Policy p) {
  switch (p) {
    case Policy::kLru:
      return ExpertCachePolicy::kLru;
    case Policy::kLfu:
      return ExpertCachePolicy::kLfu;
    case Policy::kScore:
      return ExpertCachePolicy::kScore;
    case Policy::kBelady:
      return ExpertCachePolicy::kBelady;
  }
  return ExpertCachePolicy::kLru;
}

// Replays `tr` through an ExpertCache of `C` slots per layer, one fresh cache per
// sequence (the analysis starts each sequence empty), one step per token; returns the hits
// per layer as the analysis counts them (a fill of a free slot is a hit there).
std::vector<int64_t> ReplayHits(const Trace& tr, ExpertCachePolicy policy, int32_t C) {
  const int32_t L = tr.header.num_layers, E = tr.header.num_experts, k = tr.header.top_k;
  const bool probs = tr.header.has_probs && !tr.probs.empty();
  const bool weights = tr.header.has_weights && !tr.weights.empty();
  std::vector<int64_t> hits(L, 0);
  std::vector<int32_t> ids(std::max(k, 2 * k));
  std::vector<float> scores(ids.size());
  std::vector<std::pair<float, int32_t>> top(E);
  for (int64_t s = 0; s < tr.sequences(); ++s) {
    const int64_t t0 = tr.seq_start[s], T = tr.seq_start[s + 1] - t0;
    // Belady's oracle: each (layer, expert)'s uses as t * k + j, the analysis's clock, and
    // per layer the index of the first use not yet made.
    std::vector<std::vector<int64_t>> uses(static_cast<size_t>(L) * E);
    std::vector<int64_t> made(L, 0);
    for (int64_t t = 0; t < T; ++t) {
      for (int32_t l = 0; l < L; ++l) {
        for (int32_t j = 0; j < k; ++j) {
          uses[l * E + tr.experts[((t0 + t) * L + l) * k + j]].push_back(t * k + j);
        }
      }
    }
    ExpertCacheOptions o;
    o.policy = policy;
    o.num_layers = L;
    o.num_experts = E;
    o.slots.assign(L, C);
    o.next_use = [&uses, &made, E](int32_t layer, int32_t expert, int64_t) {
      const std::vector<int64_t>& u = uses[layer * E + expert];
      auto it = std::lower_bound(u.begin(), u.end(), made[layer]);
      return it == u.end() ? kNever : *it;
    };
    absl::StatusOr<ExpertCache> cache = ExpertCache::Create(o);
    EXPECT_TRUE(cache.ok()) << cache.status();
    if (!cache.ok()) return {};
    for (int64_t t = 0; t < T; ++t) {
      cache->SetStep(t);
      for (int32_t l = 0; l < L; ++l) {
        const size_t cell = static_cast<size_t>(t0 + t) * L + l;
        for (int32_t j = 0; j < k; ++j) {
          const int32_t e = tr.experts[cell * k + j];
          made[l] = t * k + j + 1;
          if (cache->Access(l, e)) continue;
          absl::StatusOr<int32_t> v = cache->Insert(l, e);
          EXPECT_TRUE(v.ok()) << v.status();
        }
        // The routing after the accesses, as the analysis: the top-2k probabilities when
        // the trace has them, else the top-k weights.
        int32_t n = 0;
        if (probs) {
          for (int32_t e = 0; e < E; ++e) top[e] = {tr.probs[cell * E + e], e};
          n = std::min(2 * k, E);
          std::partial_sort(top.begin(), top.begin() + n, top.end(),
                            [](const auto& a, const auto& b) { return a.first > b.first; });
          for (int32_t i = 0; i < n; ++i) {
            scores[i] = top[i].first;
            ids[i] = top[i].second;
          }
        } else {
          n = k;
          for (int32_t j = 0; j < k; ++j) {
            ids[j] = tr.experts[cell * k + j];
            scores[j] = weights ? tr.weights[cell * k + j] : 1.0f / k;
          }
        }
        cache->ObserveRouting(l, ids.data(), scores.data(), n);
      }
    }
    for (int32_t l = 0; l < L; ++l) {
      const ExpertCache::Stats st = cache->layer_stats(l);
      EXPECT_EQ(st.hits + st.misses, T * k);
      hits[l] += st.hits + st.insertions - st.evictions;
    }
  }
  return hits;
}

// Every policy the analysis replays, every C: per-layer and model hit rates equal.
void CrossCheck(const Trace& tr, const std::string& label) {
  LrcOptions opt;
  opt.segment_lengths = {};
  opt.threads = 1;
  absl::StatusOr<LrcReport> rep = AnalyzeTrace(tr, opt);
  ASSERT_TRUE(rep.ok()) << rep.status();
  const int32_t L = tr.header.num_layers, E = tr.header.num_experts, k = tr.header.top_k;
  const double layer_acc = static_cast<double>(tr.tokens()) * k;
  for (int p = 0; p < kNumPolicies; ++p) {
    std::string line = label + " " + kPolicyNames[p] + ":";
    for (int32_t C = 1; C <= E; ++C) {
      const std::vector<int64_t> hits = ReplayHits(tr, CachePolicyOf(static_cast<Policy>(p)), C);
      ASSERT_EQ(hits.size(), static_cast<size_t>(L));
      int64_t total = 0;
      for (int32_t l = 0; l < L; ++l) {
        total += hits[l];
        EXPECT_DOUBLE_EQ(hits[l] / layer_acc, rep->layers[l].policies[p][C - 1].value)
            << label << " " << kPolicyNames[p] << " C=" << C << " layer " << l;
      }
      const double ours = total / (layer_acc * L);
      const double theirs = rep->model.policies[p][C - 1].value;
      EXPECT_DOUBLE_EQ(ours, theirs) << label << " " << kPolicyNames[p] << " C=" << C;
      char buf[64];
      std::snprintf(buf, sizeof buf, " C%d %.4f/%.4f", C, ours, theirs);
      line += buf;
    }
    std::printf("%s\n", line.c_str());
  }
}

TEST(ExpertCacheTest, ReplayMatchesAnalysisOnMixtralTrace) {
  const std::string dir = testing::TestDataDir();
  const std::string path = dir + "/traces/mixtral-8x7b-instruct-fp8/gsm8k_2_routing.jsonl";
  if (dir.empty()) GTEST_SKIP() << "no ../shared/testdata";
  absl::StatusOr<Trace> tr = ImportMixtralJsonl(path, 8);
  if (!tr.ok() && tr.status().code() == absl::StatusCode::kNotFound) {
    GTEST_SKIP() << path << " absent";
  }
  ASSERT_TRUE(tr.ok()) << tr.status();
  ASSERT_TRUE(tr->header.has_weights);
  CrossCheck(*tr, "mixtral-gsm8k");
}

// A synthetic trace with full router probabilities (the score policy then uses the top-2k
// of them, experts beyond the top-k included), several sequences, skewed expert choice.
TEST(ExpertCacheTest, ReplayMatchesAnalysisOnSyntheticTraceWithProbs) {
  constexpr int32_t L = 3, E = 12, k = 3;
  Trace tr;
  tr.header.model = "synthetic";
  tr.header.num_layers = L;
  tr.header.num_experts = E;
  tr.header.top_k = k;
  tr.header.has_weights = true;
  tr.header.has_probs = true;
  std::mt19937 rng(11);
  std::exponential_distribution<float> logit(1.0f);
  tr.seq_start = {0};
  for (int s = 0; s < 4; ++s) {
    const int64_t T = 60 + 37 * s;
    tr.seq_names.push_back("s" + std::to_string(s));
    tr.seq_start.push_back(tr.seq_start.back() + T);
    for (int64_t t = 0; t < T; ++t) {
      for (int32_t l = 0; l < L; ++l) {
        std::vector<float> p(E);
        float sum = 0;
        // Skewed: low ids are favoured, so caches have something to learn.
        for (int32_t e = 0; e < E; ++e) sum += p[e] = std::exp(logit(rng) * 2 - 0.3f * e);
        for (float& x : p) x /= sum;
        std::vector<int32_t> order(E);
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
        for (int32_t j = 0; j < k; ++j) {
          tr.experts.push_back(static_cast<uint16_t>(order[j]));
          tr.weights.push_back(p[order[j]]);
        }
        tr.probs.insert(tr.probs.end(), p.begin(), p.end());
      }
    }
  }
  CrossCheck(tr, "synthetic");
}

}  // namespace
}  // namespace moex
