// Token grouping for prefill (predictor/token_grouping.h): a permutation of the tokens,
// the known best grouping on constructed chunks, never worse than the tokens' own order.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "moex/trace.h"
#include "predictor/token_grouping.h"

namespace moex {
namespace {

void ExpectPermutation(const std::vector<int32_t>& order, int64_t n) {
  std::vector<int32_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int32_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(sorted, all);  // no token lost, none twice
}

int64_t Distinct(const ChunkRouting& r, const std::vector<int32_t>& order, int32_t batch) {
  absl::StatusOr<int64_t> d = DistinctExperts(r, order, batch);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *d : -1;
}

std::vector<int32_t> Identity(int64_t n) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// Four kinds of token, interleaved (a b c d a b c d ...), each kind with its own two
// experts in each of 3 layers. In micro-batches of 4 the tokens' own order puts one of
// each kind in every micro-batch (8 distinct experts per layer); grouping by kind needs 2.
TEST(TokenGroupingTest, InterleavedKindsAreSeparated) {
  const int32_t L = 3, k = 2, E = 8, T = 16, B = 4;
  std::vector<int32_t> ids;
  for (int t = 0; t < T; ++t) {
    const int kind = t % 4;
    for (int l = 0; l < L; ++l) ids.insert(ids.end(), {2 * kind, 2 * kind + 1});
  }
  const ChunkRouting r{ids, T, L, k, E};
  EXPECT_EQ(Distinct(r, Identity(T), B), (T / B) * L * 8);
  absl::StatusOr<std::vector<int32_t>> order = GroupTokens(r, B);
  ASSERT_TRUE(order.ok()) << order.status();
  ExpectPermutation(*order, T);
  EXPECT_EQ(Distinct(r, *order, B), (T / B) * L * 2);  // the optimum
  // Each micro-batch holds one kind, in the tokens' own order within it.
  for (int mb = 0; mb < T / B; ++mb) {
    for (int i = 1; i < B; ++i) {
      EXPECT_EQ((*order)[mb * B + i] % 4, (*order)[mb * B] % 4);
      EXPECT_GT((*order)[mb * B + i], (*order)[mb * B + i - 1]);
    }
  }
}

// Already grouped, or one micro-batch for everything: nothing to gain, order kept.
TEST(TokenGroupingTest, KeepsTheOrderWhenNothingIsGained) {
  const int32_t L = 2, k = 1, E = 4, T = 8;
  std::vector<int32_t> ids;
  for (int t = 0; t < T; ++t) ids.insert(ids.end(), {t / 4, t / 4 + 2});  // kind = t / 4
  const ChunkRouting r{ids, T, L, k, E};
  for (int32_t B : {4, 8, 100}) {
    absl::StatusOr<std::vector<int32_t>> order = GroupTokens(r, B);
    ASSERT_TRUE(order.ok());
    EXPECT_EQ(*order, Identity(T)) << B;
  }
}

// Random routings: always a permutation, never more distinct experts than the tokens'
// own order, and mostly fewer on a skewed routing.
TEST(TokenGroupingTest, RandomChunksNeverGetWorse) {
  std::mt19937 rng(12345);
  int improved = 0;
  for (int trial = 0; trial < 40; ++trial) {
    const int32_t L = 1 + trial % 4, E = 8 + trial % 9, k = 1 + trial % 3;
    const int64_t T = 1 + (trial * 37) % 150;
    const int32_t B = 1 + trial % 20;
    std::vector<int32_t> ids;
    std::vector<int32_t> experts(E);
    std::iota(experts.begin(), experts.end(), 0);
    for (int64_t t = 0; t < T; ++t) {
      const int kind = static_cast<int>(rng() % 3);  // three clusters of preferences
      for (int l = 0; l < L; ++l) {
        std::shuffle(experts.begin(), experts.end(), rng);
        // Mostly the cluster's experts (kind, kind + 3, ...), sometimes random ones.
        std::vector<int32_t> pick;
        for (int j = 0; static_cast<int>(pick.size()) < k; ++j) {
          const int32_t e = rng() % 4 ? (kind + 3 * j) % E : experts[j % E];
          if (std::find(pick.begin(), pick.end(), e) == pick.end()) pick.push_back(e);
        }
        ids.insert(ids.end(), pick.begin(), pick.end());
      }
    }
    const ChunkRouting r{ids, T, L, k, E};
    absl::StatusOr<std::vector<int32_t>> order = GroupTokens(r, B);
    ASSERT_TRUE(order.ok()) << order.status();
    ExpectPermutation(*order, T);
    const int64_t before = Distinct(r, Identity(T), B), after = Distinct(r, *order, B);
    EXPECT_LE(after, before) << "trial " << trial;
    improved += after < before;
  }
  EXPECT_GT(improved, 20);
}

TEST(TokenGroupingTest, BadInputIsAnError) {
  const std::vector<int32_t> ids = {0, 1, 1, 0};
  EXPECT_FALSE(GroupTokens({ids, 2, 1, 2, 2}, 0).ok());  // micro-batch of 0
  EXPECT_FALSE(GroupTokens({ids, 3, 1, 2, 2}, 2).ok());  // ids for 2 tokens, not 3
  EXPECT_FALSE(GroupTokens({ids, 2, 1, 2, 1}, 2).ok());  // top-2 of 1 expert
  const std::vector<int32_t> big = {0, 5};
  EXPECT_FALSE(GroupTokens({big, 1, 1, 2, 4}, 2).ok());  // id 5 of 4 experts
  EXPECT_FALSE(DistinctExperts({ids, 2, 1, 2, 2}, std::vector<int32_t>{0, 0}, 1).ok());
  EXPECT_FALSE(DistinctExperts({ids, 2, 1, 2, 2}, std::vector<int32_t>{0}, 1).ok());
  absl::StatusOr<std::vector<int32_t>> empty = GroupTokens({{}, 0, 1, 1, 1}, 4);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

// AnalyzeTrace's figures on the interleaved case cut into two sequences.
TEST(TokenGroupingTest, AnalyzeTraceReportsBeforeAndAfter) {
  const int L = 3, k = 2, E = 8, T = 16;
  Trace tr;
  tr.header = {"grouping", E, k, L, false, false};
  tr.seq_names = {"a", "b"};
  tr.seq_start = {0, T, 2 * T};
  for (int t = 0; t < 2 * T; ++t) {
    for (int l = 0; l < L; ++l) {
      tr.experts.push_back(2 * (t % 4));
      tr.experts.push_back(2 * (t % 4) + 1);
    }
  }
  LrcOptions opt;
  opt.segment_lengths = {4};
  opt.policies = false;
  opt.predictors = false;
  opt.group_sizes = {4, 16};
  opt.group_chunk = 8;  // each sequence is two prefill chunks of 8
  opt.threads = 1;
  absl::StatusOr<LrcReport> rep = AnalyzeTrace(tr, opt);
  ASSERT_TRUE(rep.ok()) << rep.status();
  ASSERT_EQ(rep->token_grouping.size(), 2u);
  const TokenGroupingFigures& g4 = rep->token_grouping[0];
  EXPECT_EQ(g4.batch, 4);
  EXPECT_EQ(g4.chunks, 4);
  EXPECT_EQ(g4.tokens, 2 * T);
  EXPECT_EQ(g4.micro_batches, 8);
  EXPECT_DOUBLE_EQ(g4.distinct_before, 8.0);
  EXPECT_DOUBLE_EQ(g4.distinct_after, 4.0);  // a chunk of 8 has 2 of each kind
  const TokenGroupingFigures& g16 = rep->token_grouping[1];
  EXPECT_EQ(g16.micro_batches, 4);  // one (short) micro-batch per chunk
  EXPECT_DOUBLE_EQ(g16.distinct_before, 8.0);
  EXPECT_DOUBLE_EQ(g16.distinct_after, 8.0);
  EXPECT_TRUE(rep->model.predictors.empty());
}

}  // namespace
}  // namespace moex
