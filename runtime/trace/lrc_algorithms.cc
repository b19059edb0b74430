// SRP, SCH and cache-policy replay on one layer of one sequence (lrc_internal.h).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "kernels_cpu/cpu_features.h"
#include "runtime/trace/lrc_internal.h"

namespace moex::lrc {

// ---- SRP --------------------------------------------------------------------------------

void AddSrpHistogram(const uint16_t* ids, int64_t T, int k, int E, int m, uint64_t* hist) {
  if (T < m || m < 1) return;
  // Slide the window one token at a time. cur[c] = experts with count c in the current
  // window; each cur[c] is added to hist[c] once per segment, lazily: only when it changes
  // (weighted by the segments it stayed the same), so a step costs O(k), not O(m).
  std::vector<int32_t> count(E, 0);
  std::vector<int64_t> cur(m + 1, 0), since(m + 1, 0);
  for (int64_t t = 0; t < m; ++t) {
    for (int j = 0; j < k; ++j) ++count[ids[t * k + j]];
  }
  for (int e = 0; e < E; ++e) ++cur[count[e]];
  auto move = [&](int from, int to, int64_t seg) {
    hist[from] += cur[from] * (seg - since[from]);
    since[from] = seg;
    --cur[from];
    hist[to] += cur[to] * (seg - since[to]);
    since[to] = seg;
    ++cur[to];
  };
  const int64_t segments = T - m + 1;
  for (int64_t s = 1; s < segments; ++s) {  // segment s = tokens s .. s+m-1
    for (int j = 0; j < k; ++j) {
      const int e = ids[(s - 1) * k + j];
      move(count[e], count[e] - 1, s);
      --count[e];
    }
    for (int j = 0; j < k; ++j) {
      const int e = ids[(s + m - 1) * k + j];
      move(count[e], count[e] + 1, s);
      ++count[e];
    }
  }
  for (int c = 0; c <= m; ++c) hist[c] += cur[c] * (segments - since[c]);
}

SrpResult SrpFromHistogram(const uint64_t* hist, int m, int E) {
  // M(tau) = sum_{c>=tau} c h[c]; P(tau) = m sum_{c>=tau} h[c]; A = M(0) (ALGORITHMS.md §4).
  SrpResult r;
  r.srp = std::numeric_limits<double>::quiet_NaN();
  double segments = 0;
  for (int c = 0; c <= m; ++c) segments += static_cast<double>(hist[c]);
  double total_matches = 0;
  for (int c = 1; c <= m; ++c) total_matches += static_cast<double>(c) * hist[c];
  if (total_matches == 0) return r;
  double matches = 0, sets = 0;
  double best = -1;
  for (int tau = m; tau >= 1; --tau) {
    matches += static_cast<double>(tau) * hist[tau];
    sets += static_cast<double>(hist[tau]);
    const double v = 2 * matches / (m * sets + total_matches);
    if (v >= best) {  // >=: on a tie the smaller tau (the paper's argmax over tau)
      best = v;
      r.threshold = tau;
      r.set_size = sets;
    }
  }
  r.srp = best;
  // hist counts (segment, expert) pairs, count 0 included: E per segment.
  r.set_size = segments > 0 ? r.set_size * E / segments : 0;
  return r;
}

// ---- SCH: the paper's lazily sorted priority stack --------------------------------------

namespace {

// The experts in priority order (higher first), as a doubly linked list with sentinel E.
// An expert's key is (uses in the look-ahead window << 32) | time of its last access. The
// list is kept as a chain of descending runs whose heads form a second linked list; the
// list is not fully re-sorted at each token: the exact (lazy) update rules below are those
// of the reference implementation, so that our hit rates equal its numbers to the last
// digit. Experts not yet seen are not in the list and link to themselves in both lists.
class LazyPriorityStack {
 public:
  explicit LazyPriorityStack(int E)
      : E_(E), key_(E + 1, 0), next_(E + 1), prev_(E + 1), hnext_(E + 1), hprev_(E + 1) {
    for (int i = 0; i <= E; ++i) next_[i] = prev_[i] = hnext_[i] = hprev_[i] = i;
  }

  bool InList(int x) const { return next_[x] != x; }
  int First() const { return next_[E_]; }
  int Next(int x) const { return next_[x]; }
  void AddFuture(int x) { key_[x] += kCount; }

  // Token access of x: re-sorts the runs above x, then moves x to the top.
  void Access(int x, uint64_t stamp) {
    int stop;  // the run at which the fix-up of the runs above x ends
    if (!InList(x)) {
      stop = E_;
    } else {
      if (!IsHead(x)) HeadInsertAfter(RunHeadOf(x), x);
      stop = x;
    }
    FixUpRunsBefore(stop);
    if (InList(x)) Detach(x);
    PushFront(x, stamp);
  }

  // After a token enters the look-ahead window: x's key grew, so it may now start a run,
  // or join the run of its predecessor... only these two local repairs are made.
  void AfterFutureGrew(int x) {
    if (prev_[x] != E_ && hnext_[x] == kNone && key_[prev_[x]] < key_[x]) {
      HeadInsertAfter(RunHeadOf(x), x);
    }
    const int n = next_[x];
    if (n != E_ && hnext_[n] != kNone && key_[x] > key_[n]) HeadRemove(n);
  }

 private:
  static constexpr int kNone = -1;
  static constexpr uint64_t kCount = uint64_t{1} << 32;
  static constexpr uint64_t kCountMask = ~(kCount - 1);

  bool IsHead(int x) const { return hnext_[x] != kNone; }

  // The head of the run holding x (x in the list, not a head): walk both ways in step
  // until one side meets a head.
  int RunHeadOf(int x) const {
    int up = x, down = next_[x];
    while (hnext_[up] == kNone && hnext_[down] == kNone) {
      up = prev_[up];
      down = next_[down];
    }
    return hnext_[up] == kNone ? hprev_[down] : up;
  }
  void HeadInsertAfter(int p, int x) {
    const int q = hnext_[p];
    hnext_[p] = x;
    hprev_[x] = p;
    hnext_[x] = q;
    hprev_[q] = x;
  }
  void HeadRemove(int x) {
    const int s = hprev_[x], t = hnext_[x];
    hnext_[s] = t;
    hprev_[t] = s;
    hprev_[x] = hnext_[x] = kNone;
  }
  void Unlink(int c) {
    const int a = prev_[c], b = next_[c];
    next_[a] = b;
    prev_[b] = a;
  }
  void LinkAfter(int d, int c) {
    const int a = next_[d];
    next_[d] = c;
    prev_[c] = d;
    next_[c] = a;
    prev_[a] = c;
  }
  bool Descends(int a, int b) const { return a != E_ && b != E_ && key_[a] > key_[b]; }

  // Moves the tail of each run before `stop` into the first later run where it belongs.
  void FixUpRunsBefore(int stop) {
    int p = hnext_[E_];
    while (p != E_ && p != stop && hnext_[p] != E_ && hnext_[p] != stop) {
      const int c = prev_[hnext_[p]];  // tail of run p
      int r = hnext_[p];
      while (hnext_[r] != E_ && hnext_[r] != stop && key_[prev_[hnext_[r]]] > key_[c]) {
        r = hnext_[r];
      }
      // d: the last member of run r with a key above c's (search from both ends).
      int d1 = r, d2 = hnext_[r];
      while (hnext_[next_[d1]] == kNone && key_[next_[d1]] > key_[c] &&
             hnext_[prev_[d2]] == kNone && key_[prev_[d2]] < key_[c]) {
        d1 = next_[d1];
        d2 = prev_[d2];
      }
      const int d = (hnext_[next_[d1]] == kNone && key_[next_[d1]] > key_[c]) ? prev_[d2] : d1;
      const int a = prev_[c], b = next_[c];
      Unlink(c);
      if (IsHead(c)) HeadRemove(c);
      if (Descends(a, b)) {  // b's run now continues a's
        const int s = hprev_[b];
        HeadRemove(b);
        if (r == b) r = s;
      }
      LinkAfter(d, c);
      p = r;
    }
  }

  // Takes x (a head) out of the list, merging or re-heading its neighbours' runs.
  void Detach(int x) {
    const int a = prev_[x], b = next_[x];
    Unlink(x);
    const int c = hprev_[x], d = hnext_[x];
    if (d == b) {  // x was a run of its own
      if (Descends(a, b)) {
        const int after = hnext_[d];
        hnext_[c] = after;
        hprev_[after] = c;
        hprev_[d] = hnext_[d] = kNone;
      } else {
        hnext_[c] = d;
        hprev_[d] = c;
      }
    } else if (Descends(a, b)) {
      hnext_[c] = d;
      hprev_[d] = c;
    } else {
      hnext_[c] = b;
      hprev_[b] = c;
      hnext_[b] = d;
      hprev_[d] = b;
    }
    hprev_[x] = hnext_[x] = kNone;
  }

  void PushFront(int x, uint64_t stamp) {
    const int q = next_[E_];
    LinkAfter(E_, x);
    hnext_[E_] = x;
    hprev_[x] = E_;
    // The access leaves the look-ahead window (it was counted in it).
    key_[x] = ((key_[x] & kCountMask) - kCount) | stamp;
    if (q != E_ && key_[x] > key_[q]) {
      const int c = hnext_[q];
      hnext_[x] = c;
      hprev_[c] = x;
      hprev_[q] = hnext_[q] = kNone;
    } else {
      hnext_[x] = q;
      hprev_[q] = x;
    }
  }

  int E_;
  std::vector<uint64_t> key_;
  std::vector<int> next_, prev_, hnext_, hprev_;
};

}  // namespace

void AddSchRanks(const uint16_t* ids, int64_t T, int k, int E, int m, uint64_t* stat) {
#if MOEX_LRC_AVX512
  if (kcpu::BestIsaLevel() >= kcpu::IsaLevel::kAvx512 && AddSchRanksAvx512(ids, T, k, E, m, stat)) {
    return;
  }
#endif
  AddSchRanksLinked(ids, T, k, E, m, stat);
}

void AddSchRanksLinked(const uint16_t* ids, int64_t T, int k, int E, int m, uint64_t* stat) {
  LazyPriorityStack st(E);
  for (int64_t t = 0; t < std::min<int64_t>(m, T); ++t) {
    for (int j = 0; j < k; ++j) st.AddFuture(ids[t * k + j]);
  }
  std::vector<int> rank(E, -1);
  std::vector<uint8_t> want(E, 0);  // experts of this token already in the stack
  uint64_t stamp = 0;
  int distinct = 0;
  for (int64_t t = 0; t < T; ++t) {
    const uint16_t* tok = ids + t * k;
    // Ranks before this token's update; the walk stops once every listed expert is found.
    int wanted = 0;
    for (int j = 0; j < k; ++j) {
      const bool listed = st.InList(tok[j]);
      wanted += listed;
      want[tok[j]] = listed;
    }
    for (int p = st.First(), r = 0; wanted > 0; p = st.Next(p), ++r) {
      rank[p] = r;
      wanted -= want[p];
    }
    for (int j = 0; j < k; ++j) want[tok[j]] = 0;
    for (int j = 0; j < k; ++j) {
      if (st.InList(tok[j])) {
        ++stat[rank[tok[j]]];
      } else {
        ++stat[distinct++];
      }
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

// ---- cache policies ---------------------------------------------------------------------

namespace {

// Belady's next use: for each access i of ids[0 .. n), the index of the next access of the
// same expert (n when none).
std::vector<int64_t> NextUses(const uint16_t* ids, int64_t n, int E) {
  std::vector<int64_t> next(n, n), seen(E, n);
  for (int64_t i = n - 1; i >= 0; --i) {
    next[i] = seen[ids[i]];
    seen[ids[i]] = i;
  }
  return next;
}

// The score cache's scores (ALGORITHMS.md §2c), for both paths of its replay (packed keys,
// and the three-field comparator): after each token, S[e] <- a s[e] + (1 - a) S[e] for the
// token's top experts (the top-2k probabilities when present, else the top-k weights, else
// 1/k each) and (1 - a) S[e] for the rest. Kept as S / (1 - a)^t, so a token costs O(k),
// not O(E), and only the relative order of the values is meaningful.
class ScoreTable {
 public:
  static constexpr double kAlpha = 0.5;
  explicit ScoreTable(int E) : E_(E), score_(E, 0.0) {}
  double operator[](int e) const { return score_[e]; }
  const std::vector<std::pair<float, int>>& top() const { return top_; }

  // Applies token t. True when every value changed (a renormalisation), else only those of
  // top().
  bool Update(const uint16_t* ids, const float* weights, const float* probs, int64_t t, int k) {
    bool all = false;
    scale_ /= (1 - kAlpha);
    if (scale_ > 1e200) {  // renormalised before it overflows
      for (double& v : score_) v /= scale_;
      scale_ = 1.0;
      all = true;
    }
    top_.clear();
    if (probs) {
      for (int e = 0; e < E_; ++e) top_.emplace_back(probs[t * E_ + e], e);
      const int p = std::min(2 * k, E_);
      std::partial_sort(top_.begin(), top_.begin() + p, top_.end(),
                        [](const auto& a, const auto& b) { return a.first > b.first; });
      top_.resize(p);
    } else {
      for (int j = 0; j < k; ++j) {
        top_.emplace_back(weights ? weights[t * k + j] : 1.0f / k, ids[t * k + j]);
      }
    }
    for (const auto& [s, e] : top_) score_[e] += kAlpha * s * scale_;
    return all;
  }

 private:
  int E_;
  std::vector<double> score_;
  double scale_ = 1.0;  // (1 - a)^-t since the last renormalisation
  std::vector<std::pair<float, int>> top_;
};

// Eviction priority: higher stays. Experts of the token being served come first, so a
// cache of at least k never evicts one expert of a token to load another.
struct Priority {
  int64_t current_token = -1;
  double value = 0;
  uint64_t stamp = 0;
};
bool Below(const Priority& a, const Priority& b, int64_t token) {
  const bool ac = a.current_token == token, bc = b.current_token == token;
  if (ac != bc) return bc;
  if (a.value != b.value) return a.value < b.value;
  return a.stamp < b.stamp;
}

}  // namespace

namespace {

// A Mattson stack of packed priorities (keys in stack order, higher stays). Mattson's
// update moves x to the top and, level by level down to x's old place d, keeps the higher of
// the carried expert and the resident one, carrying the lower on. The carried key is the
// minimum of the levels passed, so only the "records" move -- the levels whose key is below
// every key above them: each record's expert drops to the next record's level, the last
// one to d. Finding them is a read-only pass (a compare and a select per level); the moves
// touch a few levels, not all d (1.4x the branch-free level-by-level update on 128 experts).
template <typename Key>
class PackedStack {
 public:
  explicit PackedStack(int E) : depth_(E, -1), records_(E + 1) {
    stack_.reserve(E);
    key_.reserve(E);
  }
  int Depth(int x) const { return depth_[x]; }
  int size() const { return static_cast<int>(stack_.size()); }
  int At(int q) const { return stack_[q]; }
  Key& KeyAt(int q) { return key_[q]; }

  // Returns x's depth before the access (a first access: the experts listed so far, as a
  // cache with a free slot holds it).
  int Access(int x, Key xkey) {
    int d = depth_[x];
    if (d < 0) {
      d = size();
      stack_.push_back(x);
      key_.push_back(0);
    }
    if (d > 0 && sizeof(Key) > 8) {
      // The score policy's 128-bit keys: level by level (its compare and select are longer
      // than the records' bookkeeping saves: 10 % slower that way).
      Key ck = key_[0];
      int cid = stack_[0];
      for (int i = 1; i < d; ++i) {
        const Key ki = key_[i];
        const int id = stack_[i];
        const bool below = ki < ck;
        const Key up = below ? ck : ki;
        const int up_id = below ? cid : id;
        ck = below ? ki : ck;
        cid = below ? id : cid;
        key_[i] = up;
        stack_[i] = up_id;
        depth_[up_id] = i;
      }
      key_[d] = ck;
      stack_[d] = cid;
      depth_[cid] = d;
    } else if (d > 0) {
      int* rec = records_.data();
      int n = 1;
      rec[0] = 0;
      Key low = key_[0];
      for (int i = 1; i < d; ++i) {
        const Key ki = key_[i];
        const bool record = ki < low;
        low = record ? ki : low;
        rec[n] = i;
        n += record;
      }
      for (int to = d, r = n - 1; r >= 0; to = rec[r--]) {  // last first: read before write
        const int from = rec[r];
        stack_[to] = stack_[from];
        key_[to] = key_[from];
        depth_[stack_[to]] = to;
      }
    }
    stack_[0] = x;
    depth_[x] = 0;
    key_[0] = xkey;
    return d;
  }

 private:
  std::vector<int> stack_, depth_, records_;
  std::vector<Key> key_;
};

// The score policy packed the same way, in 128 bits: current << 127 | the value's bits
// << 64 (a non-negative double orders as its bits) | stamp. 1.3x the three-field loop.
// Declines (false) when a weight or probability is negative, NaN or infinite.
bool PackedScoreDepths(const uint16_t* ids, const float* weights, const float* probs, int64_t T,
                       int k, int E, uint64_t* stat) {
  auto usable = [](const float* v, int64_t count) {
    for (int64_t i = 0; i < count; ++i) {
      if (!(v[i] >= 0) || std::isinf(v[i])) return false;
    }
    return true;
  };
  if ((probs && !usable(probs, T * E)) || (!probs && weights && !usable(weights, T * k))) {
    return false;
  }
  using Key = unsigned __int128;
  constexpr uint64_t kCurrent = uint64_t{1} << 63;
  auto hi = [](Key key) { return static_cast<uint64_t>(key >> 64); };
  auto make = [](uint64_t h, Key lo_of) { return (Key{h} << 64) | static_cast<uint64_t>(lo_of); };
  PackedStack<Key> st(E);
  ScoreTable scores(E);
  uint64_t stamp = 0;
  auto revalue = [&](int q) {
    Key& kq = st.KeyAt(q);
    kq = make((hi(kq) & kCurrent) | std::bit_cast<uint64_t>(scores[st.At(q)]), kq);
  };
  for (int64_t t = 0; t < T; ++t) {
    if (t > 0) {  // the previous token's experts are no longer current
      for (int j = 0; j < k; ++j) {
        Key& kk = st.KeyAt(st.Depth(ids[(t - 1) * k + j]));
        kk = make(hi(kk) & ~kCurrent, kk);
      }
    }
    for (int j = 0; j < k; ++j) {
      const int x = ids[t * k + j];
      ++stat[st.Access(x, make(kCurrent | std::bit_cast<uint64_t>(scores[x]), ++stamp))];
    }
    if (scores.Update(ids, weights, probs, t, k)) {
      for (int q = 0; q < st.size(); ++q) revalue(q);
    }
    for (const auto& [s, e] : scores.top()) {
      if (st.Depth(e) >= 0) revalue(st.Depth(e));
    }
  }
  return true;
}

// LFU and Belady, whose priorities are integers (a use count; minus the next use's
// index): the priority (current token first, then the value, then the stamp) packs into
// one uint64, so Mattson's level is one integer compare and two selects (1.5x and 1.3x the
// three-field comparator). Needs T * k < 2^31 (31 bits each for the value and the stamp,
// one for "current").
bool PackedDepths(Policy policy, const uint16_t* ids, int64_t T, int k, int E, uint64_t* stat) {
  const int64_t n = T * k;
  if (n >= (int64_t{1} << 31)) return false;
  constexpr uint64_t kCurrent = uint64_t{1} << 63;
  constexpr int kValueShift = 31;
  const std::vector<int64_t> next_use =
      policy == Policy::kBelady ? NextUses(ids, n, E) : std::vector<int64_t>();
  std::vector<uint64_t> uses(E, 0);
  PackedStack<uint64_t> st(E);
  uint64_t stamp = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (t > 0) {  // the previous token's experts are no longer current
      for (int j = 0; j < k; ++j) st.KeyAt(st.Depth(ids[(t - 1) * k + j])) &= ~kCurrent;
    }
    for (int j = 0; j < k; ++j) {
      const int x = ids[t * k + j];
      // Value as a non-negative integer increasing with the priority.
      const uint64_t value =
          policy == Policy::kLfu ? ++uses[x] : static_cast<uint64_t>(n - next_use[t * k + j]);
      ++stat[st.Access(x, kCurrent | value << kValueShift | ++stamp)];
    }
  }
  return true;
}

}  // namespace

// LRU: its stack is in recency order, so an expert's depth is the number of experts used
// since its last use, i.e. with a later stamp (a first use: the experts seen so far, all
// later than its 0). Counted over all E stamps, which the compiler turns into vector
// compares; a token's k counts use the stamps from before the token, plus the token's
// earlier experts that were not already later (so no count waits on the previous one's
// store). No data moves, no branch depends on the trace: 3.5x the shift of the stack it
// replaces, on 128 experts.
void LruDepths(const uint16_t* ids, int64_t T, int k, int E, uint64_t* stat) {
  std::vector<uint32_t> last(E, 0), s(k);
  uint32_t stamp = 0;
  for (int64_t t = 0; t < T; ++t) {
    const uint16_t* tok = ids + t * k;
    for (int j = 0; j < k; ++j) s[j] = last[tok[j]];
    for (int j = 0; j < k; ++j) {
      int d = 0;
      for (int e = 0; e < E; ++e) d += last[e] > s[j];
      for (int i = 0; i < j; ++i) d += s[i] <= s[j];
      ++stat[d];
    }
    for (int j = 0; j < k; ++j) last[tok[j]] = ++stamp;
  }
}

void AddPolicyDepths(Policy policy, const uint16_t* ids, const float* weights, const float* probs,
                     int64_t T, int k, int E, uint64_t* stat) {
  if (policy == Policy::kLru && T * k < (int64_t{1} << 32)) {
    LruDepths(ids, T, k, E, stat);
    return;
  }
  if ((policy == Policy::kLfu || policy == Policy::kBelady) &&
      PackedDepths(policy, ids, T, k, E, stat)) {
    return;
  }
  if (policy == Policy::kScore && PackedScoreDepths(ids, weights, probs, T, k, E, stat)) return;
  std::vector<Priority> pri(E);
  std::vector<int> stack;
  std::vector<int> depth(E, -1);
  stack.reserve(E);
  const std::vector<int64_t> next_use =
      policy == Policy::kBelady ? NextUses(ids, T * k, E) : std::vector<int64_t>();
  ScoreTable scores(E);
  uint64_t stamp = 0;
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      const int x = ids[t * k + j];
      int d = depth[x];
      if (d < 0) {  // first access: a cache with a free slot holds it
        d = stack.size();
        stack.push_back(x);
      }
      ++stat[d];
      if (policy == Policy::kLru) {
        // LRU's stack is in recency order, so Mattson's update below always swaps: x's
        // move to the top is a shift.
        for (int i = d; i > 0; --i) {
          stack[i] = stack[i - 1];
          depth[stack[i]] = i;
        }
      } else {
        // Mattson's update: x to the top; at each level down to x's old place the lower of
        // the carried expert and the resident one moves down. (A branch-free version with
        // the carried priority in registers was slower: the branch predicts well, the
        // selects made one long dependency chain.)
        int carry = stack[0];
        for (int i = 1; i <= d; ++i) {
          if (i == d) {
            stack[i] = carry;
            depth[carry] = i;
            break;
          }
          if (Below(pri[stack[i]], pri[carry], t)) {
            std::swap(stack[i], carry);
            depth[stack[i]] = i;
          }
        }
      }
      stack[0] = x;
      depth[x] = 0;
      Priority& p = pri[x];
      p.current_token = t;
      p.stamp = ++stamp;
      switch (policy) {
        case Policy::kLru:
          break;
        case Policy::kLfu:
          p.value += 1;
          break;
        case Policy::kBelady:
          p.value = -static_cast<double>(next_use[t * k + j]);
          break;
        case Policy::kScore:
          p.value = scores[x];
          break;
      }
    }
    if (policy == Policy::kScore) {
      // Priorities of every expert change with the scores; only the relative order
      // matters, so the stored (scaled) scores serve as they are.
      if (scores.Update(ids, weights, probs, t, k)) {
        for (int e = 0; e < E; ++e) pri[e].value = scores[e];
      }
      for (const auto& [s, e] : scores.top()) pri[e].value = scores[e];
    }
  }
}

}  // namespace moex::lrc
