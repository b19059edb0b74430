// SCH's lazily sorted priority stack (ljcleo/moe-lrc, calc_fsf) with AVX-512: each access is
// one branch-free pass over the positions above the accessed expert, 8 at a time. Compiled
// with its own -mavx512* flags; called only after cpu_features has checked the CPU.
//
// Why a pass over positions gives the reference's numbers. The reference keeps the list as
// a chain of runs, each with a head flag, and its updates keep the heads exactly at the
// ascents of the keys (a head iff its predecessor's key is smaller) -- except the accessed
// expert x, made a head for the length of its access. So the runs follow from the keys and
// need no storage. Its fix-up above x takes the tail of the first run, skips every later run
// whose tail is larger (a run descends, so all of it is larger), puts the carried tail into
// the first run with a smaller tail at its sorted place, and goes on from that run with its
// tail; when no later tail is smaller, the carried one goes to the end of the last run above
// x. The runs whose tails move are therefore the prefix minima ("records") of the sequence of
// tails, and with cur(j) = the smallest tail before position j (tails of the runs above x;
// the element just above x ends the last of them):
//   - j keeps its element iff key[j] > cur(j) (it lies between a record's tail and the place
//     where that tail lands);
//   - the first j after such a stretch receives cur(j), the carried tail;
//   - every other j receives the element that was at j - 1, since x leaves its place for the
//     top and everything above it moves down one.
// The test (trace_sch_test.cc) checks this against the linked-list transcription of the
// reference and a second array coding on thousands of random traces, every m and C.
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>

#include "runtime/trace/lrc_internal.h"

namespace moex::lrc {
namespace {

// Keys in list order, 8 to a 64-byte block, each carrying its expert's id in its low bits
// (the rest of a key decides every comparison: keys are distinct without the id), and each
// expert's position (-1: not listed).
class KeyBlocks {
 public:
  KeyBlocks(int E, int id_bits)
      : id_mask_((uint64_t{1} << id_bits) - 1),
        blocks_(E / 8 + 2),
        keys_(new (std::align_val_t{64}) uint64_t[8 * blocks_]),
        pos_(E, -1) {
    // Past the end: expert E (not a real one). Never compared (every lane past the listed
    // experts is masked off), but a defined value.
    std::fill(keys_.get(), keys_.get() + 8 * blocks_, static_cast<uint64_t>(E));
  }

  int Pos(int x) const { return pos_[x]; }
  uint64_t Key(int p) const { return keys_[p]; }

  // The blocks as one pass sees them: plain pointers held in registers. (Through the
  // members, every store -- which may alias anything -- would make the compiler reload the
  // pointers, adding a load to each block's dependency chain.)
  class Pass {
   public:
    explicit Pass(KeyBlocks& kb)
        : keys_(kb.keys_.get()), pos_(kb.pos_.data()), ids_(_mm512_set1_epi64(kb.id_mask_)) {}
    __m512i Load(int b) const { return _mm512_load_si512(keys_ + 8 * b); }
    // Stores block b and records where the experts of lanes `moved` now are.
    void Store(int b, __m512i v, __mmask8 moved) const {
      _mm512_store_si512(keys_ + 8 * b, v);
      const __m256i where =
          _mm256_add_epi32(_mm256_set1_epi32(8 * b), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      _mm512_mask_i64scatter_epi32(pos_, moved, _mm512_and_si512(v, ids_), where, 4);
    }

   private:
    uint64_t* keys_;
    int32_t* pos_;
    __m512i ids_;
  };

  // Adds v (mod 2^64) to the key at position p. A whole-block store: a masked one would keep
  // the next load of this block from being forwarded the stored data.
  void AddAt(int p, uint64_t v) {
    uint64_t* blk = keys_.get() + (p & ~7);
    const __m512i add = _mm512_maskz_set1_epi64(1u << (p & 7), v);
    _mm512_store_si512(blk, _mm512_add_epi64(_mm512_load_si512(blk), add));
  }

 private:
  struct AlignedDelete {
    void operator()(uint64_t* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };

  uint64_t id_mask_;
  int blocks_;
  std::unique_ptr<uint64_t[], AlignedDelete> keys_;
  std::vector<int32_t> pos_;
};

// Lane masks of block b for a pass down to position P: lanes above P, lanes above P - 1,
// the lane of P - 1, and lanes past P. From a table, in mask registers: the masks sit on
// every access's dependency chain, and a round trip through general registers costs more
// than the arithmetic.
struct Lanes {
  __mmask8 above, above_last, last, past;
  Lanes(int P, int b) {
    static constexpr uint8_t kAbove[10] = {0, 1, 3, 7, 15, 31, 63, 127, 255, 255};
    static constexpr uint8_t kAboveLast[10] = {0, 0, 1, 3, 7, 15, 31, 63, 127, 255};
    static constexpr uint8_t kLast[10] = {0, 1, 2, 4, 8, 16, 32, 64, 128, 0};
    static constexpr uint8_t kPast[10] = {0xFE, 0xFC, 0xF8, 0xF0, 0xE0, 0xC0, 0x80, 0, 0, 0};
    const int left = std::min(P - 8 * b, 9);  // P's lane, 9: past this block
    above = kAbove[left];
    above_last = kAboveLast[left];
    last = kLast[left];
    past = kPast[left];
  }
};

// Prefix minima across blocks: after Next(t), Before() gives for each lane of t the
// smallest of the lanes before it, this block's and every earlier block's.
class PrefixMin {
 public:
  void Next(__m512i t) {
    const __m512i none = _mm512_set1_epi64(-1);
    t = _mm512_min_epu64(t, _mm512_alignr_epi64(t, none, 7));
    t = _mm512_min_epu64(t, _mm512_alignr_epi64(t, none, 6));
    t = _mm512_min_epu64(t, _mm512_alignr_epi64(t, none, 4));
    t = _mm512_min_epu64(t, before_);
    excl_ = _mm512_alignr_epi64(t, before_, 7);
    before_ = _mm512_permutexvar_epi64(_mm512_set1_epi64(7), t);
  }
  __m512i Before() const { return excl_; }

 private:
  __m512i before_ = _mm512_set1_epi64(-1);  // the smallest of all earlier blocks, every lane
  __m512i excl_;
};

// ---- SCH -------------------------------------------------------------------------------

// The lazy stack: keys (uses in the look-ahead window) << count_shift | stamp << id_bits | id.
class LazyStack {
 public:
  LazyStack(int E, int m, int id_bits)
      : keys_(E, id_bits),
        id_bits_(id_bits),
        count_unit_(uint64_t{1} << (64 - std::bit_width(static_cast<unsigned>(m)))),
        unlisted_(E, 0) {}

  int Pos(int x) const { return keys_.Pos(x); }

  void AddFuture(int x) {
    const int p = keys_.Pos(x);
    if (p < 0) {
      unlisted_[x] += count_unit_;
    } else {
      keys_.AddAt(p, count_unit_);
    }
  }

  void Access(int x) {
    const int p = keys_.Pos(x);
    const int P = p < 0 ? n_ : p;  // positions [0, P) are above x
    const uint64_t old = p < 0 ? unlisted_[x] : keys_.Key(p);
    // The access leaves the look-ahead window (one use fewer) and is the newest.
    const uint64_t count_mask = ~(count_unit_ - 1);
    const uint64_t xkey = ((old & count_mask) - count_unit_) | ++stamp_ << id_bits_ | x;
    const __m512i none = _mm512_set1_epi64(-1);
    __m512i prev = _mm512_set1_epi64(static_cast<int64_t>(xkey));  // what position -1 held
    PrefixMin tail_min;                                            // over the tails
    __mmask8 stay_prev = 0;  // whether the position before this block keeps its element
    const KeyBlocks::Pass pass(keys_);
    for (int b = 0; 8 * b <= P; ++b) {
      const Lanes l(P, b);
      const __m512i kv = pass.Load(b);
      const __m512i next = _mm512_alignr_epi64(pass.Load(b + 1), kv, 1);
      const __mmask8 tails =
          _kor_mask8(_mm512_mask_cmplt_epu64_mask(l.above_last, kv, next), l.last);
      tail_min.Next(_mm512_mask_mov_epi64(none, tails, kv));
      const __m512i cur = tail_min.Before();  // the smallest tail before each lane
      const __mmask8 stay = _mm512_mask_cmpgt_epu64_mask(l.above, kv, cur);
      const __mmask8 keep = _kor_mask8(stay, l.past);
      const __mmask8 lands = _kandn_mask8(keep, _kor_mask8(_kshiftli_mask8(stay, 1), stay_prev));
      stay_prev = _kshiftri_mask8(stay, 7);
      __m512i res = _mm512_alignr_epi64(kv, prev, 7);
      res = _mm512_mask_mov_epi64(res, keep, kv);
      res = _mm512_mask_mov_epi64(res, lands, cur);
      pass.Store(b, res, _knot_mask8(keep));
      prev = kv;
    }
    if (p < 0) ++n_;
  }

 private:
  KeyBlocks keys_;
  int id_bits_;
  uint64_t count_unit_;
  std::vector<uint64_t> unlisted_;  // window uses of experts not yet listed, in count units
  int n_ = 0;                       // experts listed
  uint64_t stamp_ = 0;
};

}  // namespace

bool AddSchRanksAvx512(const uint16_t* ids, int64_t T, int k, int E, int m, uint64_t* stat) {
  // A use count never exceeds m; the stamps count accesses. Ids take values 0 .. E.
  const int id_bits = std::bit_width(static_cast<unsigned>(E));
  const int stamp_bits = 64 - id_bits - std::bit_width(static_cast<unsigned>(m));
  if (m < 1 || stamp_bits < 1 || (stamp_bits < 62 && T * k >= (int64_t{1} << stamp_bits))) {
    return false;
  }
  LazyStack st(E, m, id_bits);
  for (int64_t t = 0; t < std::min<int64_t>(m, T); ++t) {
    for (int j = 0; j < k; ++j) st.AddFuture(ids[t * k + j]);
  }
  int distinct = 0;
  for (int64_t t = 0; t < T; ++t) {
    const uint16_t* tok = ids + t * k;
    for (int j = 0; j < k; ++j) {  // ranks before this token's update
      const int r = st.Pos(tok[j]);
      ++stat[r >= 0 ? r : distinct++];
    }
    for (int j = 0; j < k; ++j) st.Access(tok[j]);
    if (t + m < T) {
      for (int j = 0; j < k; ++j) st.AddFuture(ids[(t + m) * k + j]);
    }
  }
  return true;
}

}  // namespace moex::lrc
