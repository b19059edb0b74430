// SCH (AddSchRanks) on random traces: against a second, independent coding of the paper's
// lazy priority stack, and against the properties every SCH curve must have.
//
// Why not a brute-force cache: the paper's stack (ljcleo/moe-lrc, calc_fsf) is re-sorted lazily,
// one tail per run per access, so it is neither the ideal cache that knows the next m tokens nor
// any demand cache with a fixed eviction rule; there is no simpler definition whose hit rates it
// equals. Not even a bracket holds: ALGORITHMS.md §4 says its numbers lie between a demand cache
// with that eviction rule and a full re-sort at every token, but on 3,000 small random traces with
// sticky routing (E 3-14, k 1-3, m 1-12) the lazy stack's hits fell outside [demand cache, full
// re-sort] at 14 % of the (trace, C) points, and were above the full re-sort at 9 % (demand cache:
// evict the resident, other than this token's experts, with the fewest uses in tokens t..t+m-1,
// then the least recent; first accesses hit while a slot is free). So there is no brute force to
// compare with. What pins it down is the reference test (trace_reference_test.cc: numbers computed
// with the paper's code). Here, a second implementation of the same update rules with another data
// structure (arrays in list order, ranks by position, run heads as a bitset, instead of linked
// lists and a walk) must agree exactly on every rank histogram: a slip in either coding of the
// rules (a wrong neighbour, a head flag left behind, an off-by-one in the bidirectional search)
// shows up as a difference. This array coding was written as a candidate speed-up; it is not faster
// (the fix-up's data-dependent branches dominate either way), so it lives here as the oracle. The
// AVX-512 pass (lrc_avx512.cc) is a third coding, of a derived formulation (runs from the keys,
// moves as prefix minima of the run tails), checked against both on the same traces.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels_cpu/cpu_features.h"
#include "moex/trace.h"
#include "runtime/trace/lrc_internal.h"

namespace moex {
namespace {

// The lazy stack as arrays indexed by position: expert ids, keys (uses in the look-ahead
// window << 32 | stamp of the last access) and run-head flags, plus each expert's position.
// The head list of the linked coding is a sublist in list order, so a flag per position
// represents it; a rank is the position.
class ArrayLazyStack {
 public:
  explicit ArrayLazyStack(int E)
      : ord_(E), key_(E), heads_((E + 2 + 63) / 64, 0), pos_(E, -1), unlisted_key_(E, 0) {
    heads_[0] = 3;  // the sentinels before position 0 and after position n - 1 (n = 0)
  }
  ArrayLazyStack(const ArrayLazyStack&) = delete;
  ArrayLazyStack& operator=(const ArrayLazyStack&) = delete;

  // Position (= rank) of x, -1 when not listed.
  int Pos(int x) const { return pos_[x]; }

  void AddFuture(int x) {
    if (pos_[x] >= 0) {
      key_[pos_[x]] += kCount;
    } else {
      unlisted_key_[x] += kCount;
    }
  }

  // AfterFutureGrew of the production stack (a no-op for an expert not listed).
  void AfterFutureGrew(int x) {
    const int i = pos_[x];
    if (i < 0) return;
    if (i > 0 && !H(i) && key_[i - 1] < key_[i]) SetHead(i);
    if (i + 1 < n_ && H(i + 1) && key_[i] > key_[i + 1]) ClearHead(i + 1);
  }

  // Access of the production stack.
  void Access(int x, uint64_t stamp) {
    const int i = pos_[x];
    uint64_t key;
    if (i < 0) {
      FixUpRunsBefore(n_);
      key = unlisted_key_[x];
      ++n_;
      ShiftFromTop(n_ - 1);  // the sentinel n moves down with the rest
      SetHead(n_);
    } else {
      SetHead(i);  // x starts a run (the head list is in list order: a flag suffices)
      FixUpRunsBefore(i);
      key = key_[i];
      // Detach x: its neighbours' runs merge, or the one below x gets its own head.
      const bool descends = i > 0 && i + 1 < n_ && key_[i - 1] > key_[i + 1];
      if (H(i + 1)) {
        if (descends) ClearHead(i + 1);
      } else if (!descends) {
        SetHead(i + 1);
      }
      ShiftFromTop(i);
    }
    ord_[0] = static_cast<uint16_t>(x);
    pos_[x] = 0;
    SetHead(0);
    // The access leaves the look-ahead window (it was counted in it).
    key_[0] = ((key & kCountMask) - kCount) | stamp;
    if (n_ > 1 && key_[0] > key_[1]) ClearHead(1);
  }

 private:
  static constexpr uint64_t kCount = uint64_t{1} << 32;
  static constexpr uint64_t kCountMask = ~(kCount - 1);

  // The run-head flags are a bitset: bit i + 1 for position i (-1 .. n), so that the
  // nearest head either way is one masked word and a bit scan.
  bool H(int i) const { return (heads_[(i + 1) >> 6] >> ((i + 1) & 63)) & 1; }
  void SetHead(int i) { heads_[(i + 1) >> 6] |= uint64_t{1} << ((i + 1) & 63); }
  void ClearHead(int i) { heads_[(i + 1) >> 6] &= ~(uint64_t{1} << ((i + 1) & 63)); }
  int NextHead(int i) const {  // the sentinel n stops the scan
    int w = (i + 2) >> 6;
    uint64_t x = heads_[w] & (~uint64_t{0} << ((i + 2) & 63));
    while (x == 0) x = heads_[++w];
    return w * 64 + std::countr_zero(x) - 1;
  }
  int PrevHead(int i) const {  // the sentinel -1 stops the scan
    int w = i >> 6;
    uint64_t x = heads_[w] & (~uint64_t{0} >> (63 - (i & 63)));
    while (x == 0) x = heads_[--w];
    return w * 64 + 63 - std::countl_zero(x) - 1;
  }
  // Bits [a, b] of word w, as a mask (0 when they do not meet).
  static uint64_t WordMask(int w, int a, int b) {
    const int lo = std::max(a - w * 64, 0), hi = std::min(b - w * 64, 63);
    if (lo > hi) return 0;
    return (~uint64_t{0} >> (63 - hi)) & (~uint64_t{0} << lo);
  }
  // Bits lo .. hi - 1 take the values of bits lo + 1 .. hi.
  void ShiftBitsDown(int lo, int hi) {
    for (int w = lo >> 6; w <= (hi - 1) >> 6; ++w) {
      const uint64_t next = w + 1 < static_cast<int>(heads_.size()) ? heads_[w + 1] : 0;
      const uint64_t shifted = (heads_[w] >> 1) | (next << 63);
      const uint64_t mask = WordMask(w, lo, hi - 1);
      heads_[w] = (heads_[w] & ~mask) | (shifted & mask);
    }
  }
  // Bits lo + 1 .. hi take the values of bits lo .. hi - 1.
  void ShiftBitsUp(int lo, int hi) {
    for (int w = hi >> 6; w >= (lo + 1) >> 6; --w) {
      const uint64_t prev = w > 0 ? heads_[w - 1] : 0;
      const uint64_t shifted = (heads_[w] << 1) | (prev >> 63);
      const uint64_t mask = WordMask(w, lo + 1, hi);
      heads_[w] = (heads_[w] & ~mask) | (shifted & mask);
    }
  }

  // Moves the element at position i to position j > i; (i, j] move up one place. i must
  // not be a head.
  void MoveDown(int i, int j) {
    const uint16_t e = ord_[i];
    const uint64_t k = key_[i];
    for (int q = i; q < j; ++q) {
      ord_[q] = ord_[q + 1];
      key_[q] = key_[q + 1];
      pos_[ord_[q]] = q;
    }
    ShiftBitsDown(i + 1, j + 1);
    ClearHead(j);
    ord_[j] = e;
    key_[j] = k;
    pos_[e] = j;
  }
  // Moves positions 0 .. i - 1 down one place (flags too), freeing position 0.
  void ShiftFromTop(int i) {
    std::memmove(&ord_[1], &ord_[0], i * sizeof(ord_[0]));
    std::memmove(&key_[1], &key_[0], i * sizeof(key_[0]));
    ShiftBitsUp(1, i + 1);
    for (int q = 1; q <= i; ++q) pos_[ord_[q]] = q;
  }

  // FixUpRunsBefore of the production stack, with `stop` at position sp (n_: the sentinel).
  // Every move lies above sp, so sp stays valid.
  void FixUpRunsBefore(int sp) {
    int p = NextHead(-1);
    while (p != n_ && p != sp) {
      const int hn = NextHead(p);
      if (hn == n_ || hn == sp) break;
      const int c = hn - 1;  // tail of run p
      const uint64_t kc = key_[c];
      int r = hn;
      for (;;) {
        const int rn = NextHead(r);
        if (rn == n_ || rn == sp || key_[rn - 1] <= kc) break;
        r = rn;
      }
      // d: as the reference finds it, from both ends of run r in step.
      int d1 = r, d2 = NextHead(r);
      while (!H(d1 + 1) && key_[d1 + 1] > kc && !H(d2 - 1) && key_[d2 - 1] < kc) {
        ++d1;
        --d2;
      }
      const int d = (!H(d1 + 1) && key_[d1 + 1] > kc) ? d2 - 1 : d1;
      ClearHead(c);        // c leaves its run (it was a head only as a run of its own)
      int next_p = r - 1;  // r moves up one place when c moves below it
      if (c > 0 && key_[c - 1] > key_[hn]) {  // hn's run now continues c's predecessor's
        ClearHead(hn);
        if (r == hn) next_p = PrevHead(hn);
      }
      MoveDown(c, d);
      p = next_p;
    }
  }

  int n_ = 0;
  std::vector<uint16_t> ord_;
  std::vector<uint64_t> key_;    // by position
  std::vector<uint64_t> heads_;  // bit position + 1
  std::vector<int> pos_;         // by expert
  std::vector<uint64_t> unlisted_key_;
};

// Rank histogram of the array coding (same contract as lrc::AddSchRanks).
void ArraySchRanks(const uint16_t* ids, int64_t T, int k, int E, int m, uint64_t* stat) {
  ArrayLazyStack st(E);
  for (int64_t t = 0; t < std::min<int64_t>(m, T); ++t) {
    for (int j = 0; j < k; ++j) st.AddFuture(ids[t * k + j]);
  }
  int distinct = 0;
  uint64_t stamp = 0;
  for (int64_t t = 0; t < T; ++t) {
    const uint16_t* tok = ids + t * k;
    for (int j = 0; j < k; ++j) {  // ranks before this token's update
      const int r = st.Pos(tok[j]);
      ++stat[r >= 0 ? r : distinct++];
    }
    for (int j = 0; j < k; ++j) st.Access(tok[j], ++stamp);
    if (t + m < T) {
      for (int j = 0; j < k; ++j) {
        const int x = ids[(t + m) * k + j];
        st.AddFuture(x);
        st.AfterFutureGrew(x);
      }
    }
  }
}

// Top-k sets with locality: a token keeps each of the previous token's experts with
// probability `stick`, and draws the rest from a skewed popularity (so keys tie, runs
// form and break, and the fix-up has work to do).
std::vector<uint16_t> RandomRouting(std::mt19937& rng, int T, int k, int E, double stick) {
  std::vector<uint16_t> ids;
  std::vector<int> prev;
  std::uniform_real_distribution<double> u(0, 1);
  for (int t = 0; t < T; ++t) {
    std::vector<int> tok;
    for (int e : prev) {
      if (static_cast<int>(tok.size()) < k && u(rng) < stick) tok.push_back(e);
    }
    while (static_cast<int>(tok.size()) < k) {
      const int e = std::min(E - 1, static_cast<int>(E * u(rng) * u(rng)));  // skewed
      if (std::find(tok.begin(), tok.end(), e) == tok.end()) tok.push_back(e);
    }
    std::shuffle(tok.begin(), tok.end(), rng);
    for (int e : tok) ids.push_back(e);
    prev = tok;
  }
  return ids;
}

TEST(TraceSchTest, RandomTracesMatchArrayCodingAndProperties) {
  const bool avx512 = kcpu::CpuSupports(kcpu::IsaLevel::kAvx512);
  if (!avx512) std::printf("no AVX-512 here: only the portable coding is checked\n");
  std::mt19937 rng(2505160);
  for (int iter = 0; iter < 3000; ++iter) {
    // Mostly small shapes (many distinct situations), some with E > 64 (several bitset
    // words) and longer traces.
    const bool big = iter % 10 == 0;
    const int E = big ? 60 + rng() % 140 : 2 + rng() % 20;
    const int k = 1 + rng() % std::min(E, big ? 8 : 4);
    const int T = 1 + rng() % (big ? 400 : 60);
    const double stick = (rng() % 4) / 4.0;
    const std::vector<uint16_t> ids = RandomRouting(rng, T, k, E, stick);
    for (int m : {1, 2, 3, 4, 7, 16, 64, 256}) {
      std::vector<uint64_t> got(E, 0), want(E, 0);
      lrc::AddSchRanksLinked(ids.data(), T, k, E, m, got.data());
      ArraySchRanks(ids.data(), T, k, E, m, want.data());
      // Equal histograms: equal hits for every C.
      ASSERT_EQ(got, want) << "iter " << iter << " E " << E << " k " << k << " T " << T << " m "
                           << m;
      if (avx512) {
        std::vector<uint64_t> fast(E, 0);
        ASSERT_TRUE(lrc::AddSchRanksAvx512(ids.data(), T, k, E, m, fast.data()));
        ASSERT_EQ(fast, want) << "AVX-512, iter " << iter << " E " << E << " k " << k << " T " << T
                              << " m " << m;
      }
      // Properties: every access lands at some rank, so SCH(C = E) = 1 (a first access
      // counts at the number of distinct experts seen so far: a free slot); hits grow with
      // C by construction. The first accesses of the distinct experts land at ranks 0, 1,
      // 2, ... in turn, and no rank reaches the number of distinct experts.
      uint64_t total = 0;
      for (uint64_t s : got) total += s;
      EXPECT_EQ(total, static_cast<uint64_t>(T) * k);
      std::vector<bool> seen(E, false);
      int distinct = 0;
      for (uint16_t e : ids) {
        distinct += !seen[e];
        seen[e] = true;
      }
      for (int r = 0; r < distinct; ++r) EXPECT_GE(got[r], 1u) << "rank " << r;
      for (int r = distinct; r < E; ++r) EXPECT_EQ(got[r], 0u) << "rank " << r;
    }
  }
}

// The AVX-512 pass packs (window uses, stamp, id) into 64 bits; where T * k stamps do not fit
// beside a large m and E it declines, and AddSchRanks gives the portable coding's answer.
TEST(TraceSchTest, Avx512DeclinesKeysThatDoNotFitAndDispatchStillAnswers) {
  if (!kcpu::CpuSupports(kcpu::IsaLevel::kAvx512)) GTEST_SKIP() << "no AVX-512 here";
  std::mt19937 rng(11);
  // E = 40000: 16 id bits; m = 2^30: 31 count bits; 17 bits of stamps: 131072 accesses.
  const int E = 40000, k = 8, m = 1 << 30;
  for (int T : {1000, 16384, 16385}) {
    std::vector<uint16_t> ids = RandomRouting(rng, T, k, 64, 0.5);
    for (uint16_t& e : ids) e = static_cast<uint16_t>(e * 600);  // spread over the 40000
    std::vector<uint64_t> fast(E, 0), linked(E, 0), dispatched(E, 0);
    const bool fits = T * k < (1 << 17);
    EXPECT_EQ(lrc::AddSchRanksAvx512(ids.data(), T, k, E, m, fast.data()), fits) << T;
    lrc::AddSchRanksLinked(ids.data(), T, k, E, m, linked.data());
    lrc::AddSchRanks(ids.data(), T, k, E, m, dispatched.data());
    EXPECT_EQ(dispatched, linked) << T;
    if (fits) {
      EXPECT_EQ(fast, linked) << T;
    } else {
      EXPECT_EQ(fast, std::vector<uint64_t>(E, 0)) << "declined, but added counts";
    }
  }
}

// The smallest shapes: one expert (every access at rank 0), and E = k (every token uses all
// experts), through both codings.
TEST(TraceSchTest, SmallestShapesBothCodings) {
  for (auto [E, k] : {std::pair{1, 1}, std::pair{3, 3}, std::pair{8, 8}}) {
    const int T = 20;
    std::vector<uint16_t> ids;
    for (int t = 0; t < T; ++t) {
      for (int j = 0; j < k; ++j) ids.push_back((t + j) % E);
    }
    for (int m : {1, 4, 64}) {
      std::vector<uint64_t> linked(E, 0);
      lrc::AddSchRanksLinked(ids.data(), T, k, E, m, linked.data());
      uint64_t within_k = 0;
      for (int r = 0; r < k; ++r) within_k += linked[r];
      EXPECT_EQ(within_k, static_cast<uint64_t>(T) * k) << "E " << E << " m " << m;
      if (kcpu::CpuSupports(kcpu::IsaLevel::kAvx512)) {
        std::vector<uint64_t> fast(E, 0);
        ASSERT_TRUE(lrc::AddSchRanksAvx512(ids.data(), T, k, E, m, fast.data()));
        EXPECT_EQ(fast, linked) << "E " << E << " m " << m;
      }
    }
  }
}

// A trace in which every token repeats the previous one: after the first token every
// access finds its expert among the top k (the k experts were all just moved to the top),
// whatever m; SCH(C = k) = 1 for every m.
TEST(TraceSchTest, RepeatedTokenHitsAtK) {
  for (int m : {1, 4, 16, 64}) {
    const int T = 50, k = 4, E = 32;
    std::vector<uint16_t> ids;
    for (int t = 0; t < T; ++t) {
      for (int j = 0; j < k; ++j) ids.push_back(3 * j + 1);
    }
    std::vector<uint64_t> stat(E, 0);
    lrc::AddSchRanks(ids.data(), T, k, E, m, stat.data());
    uint64_t within_k = 0;
    for (int r = 0; r < k; ++r) within_k += stat[r];
    EXPECT_EQ(within_k, static_cast<uint64_t>(T) * k) << "m " << m;
  }
}

// AnalyzeTrace adds counts from tasks over sequences and layers in whatever order they
// finish: one thread and several must give identical reports (bootstrap included).
TEST(TraceSchTest, AnalyzeIsIndependentOfThreads) {
  std::mt19937 rng(7);
  Trace t;
  const int E = 24, k = 3, L = 3;
  t.header = {"x", E, k, L, true, false};
  t.seq_start = {0};
  for (int s = 0; s < 9; ++s) {
    const int T = 5 + rng() % 80;
    t.seq_names.push_back(std::to_string(s));
    t.seq_start.push_back(t.seq_start.back() + T);
    std::vector<std::vector<uint16_t>> per_layer;
    for (int l = 0; l < L; ++l) per_layer.push_back(RandomRouting(rng, T, k, E, 0.5));
    for (int i = 0; i < T; ++i) {
      for (int l = 0; l < L; ++l) {
        for (int j = 0; j < k; ++j) {
          t.experts.push_back(per_layer[l][i * k + j]);
          t.weights.push_back((rng() % 1000) / 1000.0f);
        }
      }
    }
  }
  LrcOptions opt;
  opt.segment_lengths = {2, 8};
  opt.bootstrap = 50;
  opt.threads = 1;
  absl::StatusOr<LrcReport> one = AnalyzeTrace(t, opt);
  opt.threads = 4;
  absl::StatusOr<LrcReport> four = AnalyzeTrace(t, opt);
  ASSERT_TRUE(one.ok() && four.ok());
  auto same = [](const LrcFigures& a, const LrcFigures& b) {
    auto eq = [](const Estimate& x, const Estimate& y) {
      return (x.value == y.value || (x.value != x.value && y.value != y.value)) && x.lo == y.lo &&
             x.hi == y.hi;
    };
    for (size_t i = 0; i < a.srp.size(); ++i) EXPECT_TRUE(eq(a.srp[i], b.srp[i]));
    for (size_t i = 0; i < a.sch.size(); ++i) {
      for (size_t c = 0; c < a.sch[i].size(); ++c) EXPECT_TRUE(eq(a.sch[i][c], b.sch[i][c]));
    }
    for (size_t p = 0; p < a.policies.size(); ++p) {
      for (size_t c = 0; c < a.policies[p].size(); ++c) {
        EXPECT_TRUE(eq(a.policies[p][c], b.policies[p][c]));
      }
    }
    EXPECT_EQ(a.load, b.load);
  };
  same(one->model, four->model);
  for (int l = 0; l < L; ++l) same(one->layers[l], four->layers[l]);
}

}  // namespace
}  // namespace moex
