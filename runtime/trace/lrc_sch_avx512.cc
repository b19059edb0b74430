// SCH's lazily sorted priority stack (ljcleo/moe-lrc, calc_fsf) with AVX-512: each access
// is one branch-free pass over the positions above the accessed expert, 8 at a time.
// Compiled with its own -mavx512* flags; called only after cpu_features has checked the CPU.
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

// The list as keys in list order, 8 to a block: (uses in the look-ahead window) << count_shift
// | stamp << id_bits | id. The stamps are distinct, so the id bits never decide a comparison;
// they carry each key's expert through the shuffles. pos_ maps an expert to its position.
class BlockStack {
 public:
  BlockStack(int E, int m, int id_bits)
      : id_bits_(id_bits),
        id_mask_((uint64_t{1} << id_bits) - 1),
        count_unit_(uint64_t{1} << (64 - std::bit_width(static_cast<unsigned>(m)))),
        blocks_(E / 8 + 2),
        keys_(new (std::align_val_t{64}) uint64_t[8 * blocks_]),
        pos_(E, -1),
        unlisted_(E, 0) {
    // Past the end: expert E (not a real one), never compared (every lane past the listed
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
    // A whole-block add: a masked store would keep the next load of this block from
    // being forwarded the stored data.
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
    const __m512i none = _mm512_set1_epi64(-1), lane7 = _mm512_set1_epi64(7);
    const __m512i ids = _mm512_set1_epi64(static_cast<int64_t>(id_mask_));
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m512i prev = _mm512_set1_epi64(static_cast<int64_t>(xkey));  // what position -1 held
    __m512i carry = none;    // the smallest tail before this block (all lanes)
    uint32_t stay_prev = 0;  // whether the position before this block keeps its element
    for (int b = 0; 8 * b <= P; ++b) {
      uint64_t* blk = keys_.get() + 8 * b;
      const int left = P - 8 * b;  // lanes below `left` are above x; lane `left` is x's place
      const uint32_t above = left >= 8 ? 0xFF : (1u << left) - 1;
      const uint32_t touched = left >= 8 ? 0xFF : (2u << left) - 1;
      const uint32_t last = left >= 1 && left <= 8 ? 1u << (left - 1) : 0;  // P - 1
      const __m512i kv = _mm512_load_si512(blk);
      const __m512i next = _mm512_alignr_epi64(_mm512_load_si512(blk + 8), kv, 1);
      const uint32_t tails = (_mm512_cmplt_epu64_mask(kv, next) & above & ~last) | last;
      // Smallest tail up to each lane (in-block prefix minimum, then the carry), and before
      // each lane.
      __m512i t = _mm512_mask_mov_epi64(none, tails, kv);
      t = _mm512_min_epu64(t, _mm512_alignr_epi64(t, none, 7));
      t = _mm512_min_epu64(t, _mm512_alignr_epi64(t, none, 6));
      t = _mm512_min_epu64(t, _mm512_alignr_epi64(t, none, 4));
      t = _mm512_min_epu64(t, carry);
      const __m512i cur = _mm512_alignr_epi64(t, carry, 7);
      carry = _mm512_permutexvar_epi64(lane7, t);
      const uint32_t stay = _mm512_cmpgt_epu64_mask(kv, cur) & above;
      const uint32_t lands = ~stay & ((stay << 1) | stay_prev) & touched;
      stay_prev = stay >> 7;
      __m512i res = _mm512_alignr_epi64(kv, prev, 7);
      res = _mm512_mask_mov_epi64(res, stay | (~touched & 0xFF), kv);
      res = _mm512_mask_mov_epi64(res, lands, cur);
      _mm512_store_si512(blk, res);
      const __m256i where = _mm256_add_epi32(_mm256_set1_epi32(8 * b), lanes);
      _mm512_mask_i64scatter_epi32(pos_.data(), touched & ~stay, _mm512_and_si512(res, ids), where,
                                   4);
      prev = kv;
    }
    if (p < 0) ++n_;
  }

 private:
  struct AlignedDelete {
    void operator()(uint64_t* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };

  int id_bits_;
  uint64_t id_mask_, count_unit_;
  int blocks_;
  std::unique_ptr<uint64_t[], AlignedDelete> keys_;
  std::vector<int32_t> pos_;
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
  BlockStack st(E, m, id_bits);
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
