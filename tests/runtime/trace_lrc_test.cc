// SRP, SCH and the policy replay on hand-made traces (figures computed by hand) and
// against brute-force definitions on many small random traces.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "moex/trace.h"
#include "runtime/trace/lrc_internal.h"

namespace moex {
namespace {

// ---- brute force ------------------------------------------------------------------------

// SRP by definition: every segment, every threshold.
double BruteSrp(const std::vector<uint16_t>& ids, int T, int k, int E, int m) {
  if (T < m) return std::numeric_limits<double>::quiet_NaN();
  double best = -1;
  for (int tau = 1; tau <= m; ++tau) {
    double M = 0, P = 0, A = 0;
    for (int s = 0; s + m <= T; ++s) {
      std::vector<int> c(E, 0);
      for (int t = s; t < s + m; ++t) {
        for (int j = 0; j < k; ++j) ++c[ids[t * k + j]];
      }
      for (int e = 0; e < E; ++e) {
        if (c[e] >= tau) {
          M += c[e];
          P += m;
        }
      }
      A += k * m;
    }
    best = std::max(best, 2 * M / (P + A));
  }
  return best;
}

// The paper's cache, re-sorted in full at every token: not equal to the lazy stack, but its
// hit rate at C = E is 1, and at C = 1 both see only repeats of the top expert.
// The exact check of the lazy stack is the reference test (trace_reference_test.cc).

// A policy simulated directly for one cache size C: a demand cache that evicts the
// resident expert of lowest priority; a first access to an expert while the cache has a
// free slot counts as a hit (as AddPolicyDepths documents).
double BrutePolicy(Policy p, const std::vector<uint16_t>& ids, const std::vector<float>& w, int T,
                   int k, int E, int C) {
  std::vector<double> value(E, 0), score(E, 0);
  std::vector<int64_t> stamp(E, 0), cur(E, -1);
  std::set<int> cache, seen;
  int64_t clock = 0, hits = 0;
  auto next_use = [&](int64_t i, int e) {
    for (int64_t q = i + 1; q < static_cast<int64_t>(ids.size()); ++q) {
      if (ids[q] == e) return static_cast<double>(q);
    }
    return static_cast<double>(ids.size());
  };
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      const int x = ids[t * k + j];
      const int64_t i = t * k + j;
      if (cache.count(x)) {
        ++hits;
      } else if (!seen.count(x) && static_cast<int>(seen.size()) < C) {
        ++hits;  // a free slot holds the first access
        cache.insert(x);
      } else {
        if (static_cast<int>(cache.size()) >= C) {
          int victim = -1;
          for (int e : cache) {
            auto below = [&](int a, int b) {  // a has lower priority than b
              const bool ac = cur[a] == t, bc = cur[b] == t;
              if (ac != bc) return bc;
              if (value[a] != value[b]) return value[a] < value[b];
              return stamp[a] < stamp[b];
            };
            if (victim < 0 || below(e, victim)) victim = e;
          }
          cache.erase(victim);
        }
        cache.insert(x);
      }
      seen.insert(x);
      cur[x] = t;
      stamp[x] = ++clock;
      if (p == Policy::kLfu) value[x] += 1;
      if (p == Policy::kBelady) value[x] = -next_use(i, x);
      if (p == Policy::kScore) value[x] = score[x];
    }
    if (p == Policy::kScore) {
      for (int e = 0; e < E; ++e) score[e] *= 0.5;
      for (int j = 0; j < k; ++j) score[ids[t * k + j]] += 0.5 * w[t * k + j];
      for (int e = 0; e < E; ++e) value[e] = score[e];
    }
  }
  return static_cast<double>(hits) / (T * k);
}

std::vector<double> Rates(const std::vector<uint64_t>& stat, int64_t accesses) {
  std::vector<double> r;
  uint64_t h = 0;
  for (uint64_t s : stat) r.push_back((h += s) / static_cast<double>(accesses));
  return r;
}

double Srp(const std::vector<uint16_t>& ids, int T, int k, int E, int m) {
  std::vector<uint64_t> hist(m + 1, 0);
  lrc::AddSrpHistogram(ids.data(), T, k, E, m, hist.data());
  return lrc::SrpFromHistogram(hist.data(), m, E).srp;
}

std::vector<double> Sch(const std::vector<uint16_t>& ids, int T, int k, int E, int m) {
  std::vector<uint64_t> stat(E, 0);
  lrc::AddSchRanks(ids.data(), T, k, E, m, stat.data());
  return Rates(stat, int64_t{T} * k);
}

// ---- hand-made traces -------------------------------------------------------------------

TEST(TraceLrcTest, SrpByHand) {
  // k = 1, E = 3, tokens 0 0 1 1, m = 2: segments {0,0} {0,1} {1,1}.
  // tau = 1: sets {0} {0,1} {1}: M = 2+2+2 = 6, P = 2*(1+2+1) = 8, A = 6 -> 12/14.
  // tau = 2: sets {0} {} {1}:   M = 4, P = 4, A = 6 -> 8/10 = 0.8.  SRP = 6/7.
  const std::vector<uint16_t> ids = {0, 0, 1, 1};
  EXPECT_NEAR(Srp(ids, 4, 1, 3, 2), 6.0 / 7.0, 1e-12);
  std::vector<uint64_t> hist(3, 0);
  lrc::AddSrpHistogram(ids.data(), 4, 1, 3, 2, hist.data());
  const lrc::SrpResult r = lrc::SrpFromHistogram(hist.data(), 2, 3);
  EXPECT_EQ(r.threshold, 1);
  EXPECT_NEAR(r.set_size, 4.0 / 3.0, 1e-12);  // sizes 1, 2, 1
  // A constant expert: one set of size 1 predicts everything: SRP = 1.
  EXPECT_NEAR(Srp({2, 2, 2, 2, 2}, 5, 1, 4, 4), 1.0, 1e-12);
  // Shorter than m: no segment.
  EXPECT_TRUE(std::isnan(Srp({0, 1}, 2, 1, 2, 4)));
}

TEST(TraceLrcTest, SchByHand) {
  // k = 1, E = 2, tokens 0 1 0 1, m = 1 (the window holds the token itself only).
  // t0: 0 unseen -> rank 0. t1: 1 unseen -> rank 1. t2: stack [1, 0] (1 most recent; both
  // have no future use beyond themselves) -> 0 at rank 1. t3: 1 at rank 1.
  // hits(C=1) = 1 of 4, hits(C=2) = 4 of 4.
  std::vector<double> r = Sch({0, 1, 0, 1}, 4, 1, 2, 1);
  EXPECT_DOUBLE_EQ(r[0], 0.25);
  EXPECT_DOUBLE_EQ(r[1], 1.0);
  // Same tokens, m = 4: an accessed expert always goes to the top (ranks are read before
  // the token's update), so with two experts the look-ahead changes nothing: 0 1 0 1
  // alternate between ranks 1 and 0 as before.
  r = Sch({0, 1, 0, 1}, 4, 1, 2, 4);
  EXPECT_DOUBLE_EQ(r[0], 0.25);
  EXPECT_DOUBLE_EQ(r[1], 1.0);
  // A repeated token always hits at C = k.
  r = Sch({3, 5, 3, 5, 3, 5}, 3, 2, 8, 16);
  EXPECT_DOUBLE_EQ(r[1], 1.0);
}

TEST(TraceLrcTest, PoliciesByHand) {
  // k = 1, E = 3, tokens 0 1 2 0 1 2, C = 2. LRU: 0, 1 first (free slots: hits), 2 evicts
  // 0, then every access misses: 2/6. Belady: 2 evicts 1 (used after 0), 0 hits, 1 evicts
  // 0 (never used again)... 2 hits: hits 0 1 (free) + 0 + 2 = 4/6.
  const std::vector<uint16_t> ids = {0, 1, 2, 0, 1, 2};
  for (auto [p, want] : {std::pair{Policy::kLru, 2.0 / 6}, std::pair{Policy::kBelady, 4.0 / 6}}) {
    std::vector<uint64_t> stat(3, 0);
    lrc::AddPolicyDepths(p, ids.data(), nullptr, nullptr, 6, 1, 3, stat.data());
    EXPECT_DOUBLE_EQ(Rates(stat, 6)[1], want) << kPolicyNames[static_cast<int>(p)];
    EXPECT_DOUBLE_EQ(Rates(stat, 6)[2], 1.0);
  }
}

// ---- random traces against brute force --------------------------------------------------

std::vector<uint16_t> RandomTrace(std::mt19937& rng, int T, int k, int E) {
  // Sticky routing (experts repeat with some probability), so hits and ties both occur.
  std::vector<uint16_t> ids;
  std::vector<int> prev;
  for (int t = 0; t < T; ++t) {
    std::vector<int> tok;
    while (static_cast<int>(tok.size()) < k) {
      int e;
      if (!prev.empty() && rng() % 2) {
        e = prev[rng() % prev.size()];
      } else {
        e = rng() % E;
      }
      if (std::find(tok.begin(), tok.end(), e) == tok.end()) tok.push_back(e);
    }
    for (int e : tok) ids.push_back(e);
    prev = tok;
  }
  return ids;
}

// Every policy's hit rate at every C, replayed at once, against the direct simulation.
void ExpectPoliciesMatchBruteForce(const std::vector<uint16_t>& ids, const std::vector<float>& w,
                                   int T, int k, int E, int iter) {
  for (int p = 0; p < kNumPolicies; ++p) {
    std::vector<uint64_t> stat(E, 0);
    lrc::AddPolicyDepths(static_cast<Policy>(p), ids.data(), w.data(), nullptr, T, k, E,
                         stat.data());
    const std::vector<double> r = Rates(stat, int64_t{T} * k);
    for (int C = 1; C <= E; ++C) {
      EXPECT_NEAR(r[C - 1], BrutePolicy(static_cast<Policy>(p), ids, w, T, k, E, C), 1e-12)
          << kPolicyNames[p] << " C=" << C << " iter " << iter << " T " << T << " k " << k << " E "
          << E;
    }
  }
}

TEST(TraceLrcTest, RandomTracesMatchBruteForce) {
  std::mt19937 rng(20250516);
  for (int iter = 0; iter < 300; ++iter) {
    const int E = 2 + rng() % 7;
    const int k = 1 + rng() % std::min(E, 3);
    const int T = 1 + rng() % 40;
    const std::vector<uint16_t> ids = RandomTrace(rng, T, k, E);
    std::vector<float> w(ids.size());
    for (float& x : w) x = (rng() % 1000) / 1000.0f;
    for (int m : {1, 2, 3, 4, 7, 16}) {
      const double a = Srp(ids, T, k, E, m), b = BruteSrp(ids, T, k, E, m);
      if (std::isnan(b)) {
        EXPECT_TRUE(std::isnan(a));
      } else {
        EXPECT_NEAR(a, b, 1e-12) << "iter " << iter << " m " << m;
      }
      // SCH: a hit rate that grows with C to 1 at C = E; a first access of each distinct
      // expert is a hit at C = E; never above the all-distinct bound.
      const std::vector<double> s = Sch(ids, T, k, E, m);
      for (int c = 1; c < E; ++c) EXPECT_LE(s[c - 1], s[c] + 1e-15);
      EXPECT_DOUBLE_EQ(s[E - 1], 1.0);
    }
    ExpectPoliciesMatchBruteForce(ids, w, T, k, E, iter);
  }
}

// Every policy against brute force on shapes wider than the test above (deep stacks with
// many records; LRU's count over many stamps; the score policy's packed keys).
TEST(TraceLrcTest, WideShapesMatchBruteForce) {
  std::mt19937 rng(2024);
  for (int iter = 0; iter < 10; ++iter) {
    const int E = 17 + rng() % 60;
    const int k = 1 + rng() % 6;
    const int T = 20 + rng() % 60;
    const std::vector<uint16_t> ids = RandomTrace(rng, T, k, E);
    std::vector<float> w(ids.size());
    for (float& x : w) x = (rng() % 1000) / 1000.0f;
    ExpectPoliciesMatchBruteForce(ids, w, T, k, E, iter);
  }
}

// Weights the packed score keys cannot order (negative, NaN, infinite): the three-field
// comparator runs instead. With a negative weight the priorities still have an order, and
// the replay must equal brute force; with NaN or infinity, every access still lands.
TEST(TraceLrcTest, ScoreWithUnorderedWeightsStillReplays) {
  const std::vector<uint16_t> ids = {0, 1, 2, 0, 3, 1, 2, 2, 0, 3};
  for (float bad :
       {-0.5f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    const std::vector<float> w = {0.5f, bad, 0.25f, 1.0f, 0.75f, 0.1f, 0.3f, 0.9f, 0.2f, 0.6f};
    std::vector<uint64_t> stat(4, 0);
    lrc::AddPolicyDepths(Policy::kScore, ids.data(), w.data(), nullptr, 10, 1, 4, stat.data());
    EXPECT_EQ(stat[0] + stat[1] + stat[2] + stat[3], 10u);
    if (bad < 0) {
      const std::vector<double> r = Rates(stat, 10);
      for (int C = 1; C <= 4; ++C) {
        EXPECT_NEAR(r[C - 1], BrutePolicy(Policy::kScore, ids, w, 10, 1, 4, C), 1e-12) << C;
      }
    }
  }
}

TEST(TraceLrcTest, AnalyzePoolsLayersAndSequences) {
  // Two sequences, two layers: the model SRP pools the counts (not a mean of ratios).
  Trace t;
  t.header = {"x", 4, 1, 2, false, false};
  t.seq_names = {"a", "b"};
  t.seq_start = {0, 4, 8};
  // token-major: (t, layer)
  const std::vector<uint16_t> l0 = {0, 0, 1, 1, 2, 2, 2, 2}, l1 = {3, 2, 1, 0, 0, 1, 0, 1};
  for (int i = 0; i < 8; ++i) {
    t.experts.push_back(l0[i]);
    t.experts.push_back(l1[i]);
  }
  LrcOptions opt;
  opt.segment_lengths = {2};
  absl::StatusOr<LrcReport> r = AnalyzeTrace(t, opt);
  ASSERT_TRUE(r.ok()) << r.status();
  // Layer 0, tau 1: seq a 6/7 pieces (M 6, P 8, A 6), seq b (M 6, P 6, A 6).
  // Pooled: tau 1: M 12, P 14, A 12 -> 24/26; tau 2: M 4+6=10, P 4+6=10, A 12 -> 20/22.
  EXPECT_NEAR(r->layers[0].srp[0].value, 24.0 / 26.0, 1e-12);
  // Layer 1: seq a all distinct: tau 1 M 6 P 12 A 6 -> 12/18; seq b alternating likewise.
  EXPECT_NEAR(r->layers[1].srp[0].value, 24.0 / 36.0, 1e-12);
  // Model: tau 1: M 24, P 14 + 24, A 24 -> 48/62; tau 2: M 10, P 10, A 24 -> 20/34.
  EXPECT_NEAR(r->model.srp[0].value, 48.0 / 62.0, 1e-12);
  EXPECT_NEAR(r->layers[0].load_max_over_mean, 4 * 4.0 / 8, 1e-12);

  // Bootstrap intervals contain the value.
  opt.bootstrap = 200;
  r = AnalyzeTrace(t, opt);
  ASSERT_TRUE(r.ok());
  EXPECT_LE(r->model.srp[0].lo, r->model.srp[0].value + 1e-12);
  EXPECT_GE(r->model.srp[0].hi, r->model.srp[0].value - 1e-12);
}

}  // namespace
}  // namespace moex
