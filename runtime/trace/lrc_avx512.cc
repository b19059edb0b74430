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

// The lazy stack: keys in list order, 8 to a 64-byte block, each (uses in the look-ahead
// window) << count_shift | stamp << id_bits | id. The stamps are distinct, so the id bits
// never decide a comparison; they carry each key's expert through the shuffles, and the pass
// records from them where each expert now is.
class LazyStack {
 public:
  LazyStack(int E, int m, int id_bits)
      : id_bits_(id_bits),
        count_unit_(uint64_t{1} << (64 - std::bit_width(static_cast<unsigned>(m)))),
        blocks_(E / 8 + 2),
        keys_(new (std::align_val_t{64}) uint64_t[8 * blocks_]),
        pos_(E, -1),
        unlisted_(E, 0) {
    // Past the end: expert E (not a real one). Never compared (every lane past the listed
    // experts is masked off), but a defined value.
    std::fill(keys_.get(), keys_.get() + 8 * blocks_, static_cast<uint64_t>(E));
  }

  int Pos(int x) const { return pos_[x]; }

  void AddFuture(int x) {
    const int p = pos_[x];
    if (p < 0) {
      unlisted_[x] += count_unit_;
      return;
    }
    // A whole-block add: a masked store would keep the next load of this block from being
    // forwarded the stored data.
    uint64_t* blk = keys_.get() + (p & ~7);
    const __m512i one = _mm512_maskz_set1_epi64(1u << (p & 7), count_unit_);
    _mm512_store_si512(blk, _mm512_add_epi64(_mm512_load_si512(blk), one));
  }

  void Access(int x) {
    const int p = pos_[x];
    const int P = p < 0 ? n_ : p;  // positions [0, P) are above x
    const uint64_t old = p < 0 ? unlisted_[x] : keys_[p];
    // The access leaves the look-ahead window (one use fewer) and is the newest.
    const uint64_t count_mask = ~(count_unit_ - 1);
    const uint64_t xkey = ((old & count_mask) - count_unit_) | ++stamp_ << id_bits_ | x;
    // Plain pointers held in registers: through the members, every store (which may alias
    // anything) would make the compiler reload them, a load on each block's chain.
    uint64_t* const keys = keys_.get();
    int32_t* const pos = pos_.data();
    const __m512i ids = _mm512_set1_epi64(static_cast<int64_t>((uint64_t{1} << id_bits_) - 1));
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m512i none = _mm512_set1_epi64(-1);
    __m512i prev = _mm512_set1_epi64(static_cast<int64_t>(xkey));  // what position -1 held
    PrefixMin tail_min;                                            // over the tails
    __mmask8 stay_prev = 0;  // whether the position before this block keeps its element
    for (int b = 0; 8 * b <= P; ++b) {
      const Lanes l(P, b);
      const __m512i kv = _mm512_load_si512(keys + 8 * b);
      const __m512i next = _mm512_alignr_epi64(_mm512_load_si512(keys + 8 * b + 8), kv, 1);
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
      _mm512_store_si512(keys + 8 * b, res);
      // Where the experts that moved now are.
      _mm512_mask_i64scatter_epi32(pos, _knot_mask8(keep), _mm512_and_si512(res, ids),
                                   _mm256_add_epi32(_mm256_set1_epi32(8 * b), lanes), 4);
      prev = kv;
    }
    if (p < 0) ++n_;
  }

 private:
  struct AlignedDelete {
    void operator()(uint64_t* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };

  int id_bits_;
  uint64_t count_unit_;
  int blocks_;
  std::unique_ptr<uint64_t[], AlignedDelete> keys_;
  std::vector<int32_t> pos_;        // each expert's position, -1: not listed
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
