// AVX-512 + VNNI vec_dots and activation quantisers (compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni -mavx2 -mfma -mf16c; called only when CpuSupports(kAvx512)).
//
// Design: products are vpmaddubsw (u8 weight codes x s8 activation codes -> int16 pairs,
// no saturation for codes below 64) then vpdpwssd against the sub-block scale (VNNI:
// int16 pairs times int16 scale accumulated into int32 in one instruction), or vpdpbusd
// for the 8-bit formats. Q6_K works on 64 codes per zmm: the low nibbles of 64 ql bytes
// are 64 consecutive values, with one scale per 128-bit lane. Q4_K/Q5_K and the 32-value
// classic blocks use ymm with the AVX-512VL/VNNI encodings: a classic block is one ymm,
// and for Q4_K the zmm layout needs cross-lane shuffles that cost more than they save on
// Zen 4 (measured; see DotQ45_K). Minima and offsets go through the Q8_K bsums (see
// vec_dot_avx2.cc, the same algebra).
//
// Activation quantisers: Q8_K and Q8_0 produce the same bytes as quantize.cc's
// QuantizeRow (same float operations; vcvtps2dq rounds half to even like lrint, and
// Q8_0's half-away-from-zero is rebuilt from a truncation).
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "kernels_cpu/vec_dot_internal.h"

namespace moex::kcpu::vd {
namespace {

float H(uint16_t h) { return _cvtsh_ss(h); }

__m256i Load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
__m512i Load512(const void* p) { return _mm512_loadu_si512(p); }

float Hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Classic formats: one FMA per 32-value block, so a single accumulator's FMA latency
// (4 cycles) would cap a core at 32 values per 4 cycles; four chains lift that limit.
// d_w * d_x broadcast: both fp16 scales converted by one vcvtph2ps.
__m256 ScaleProduct(uint16_t dw, uint16_t dx) {
  const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(dw | (uint32_t{dx} << 16))));
  return _mm256_broadcastss_ps(_mm_mul_ss(f, _mm_movehdup_ps(f)));
}

template <typename Block, typename BlockFn>
float ClassicDot(const Block* bw, const BlockQ8_0* bx, int64_t nb, BlockFn block) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 4 <= nb; i += 4) {
    for (int u = 0; u < 4; ++u) {
      const __m256i p = block(bw[i + u], bx[i + u]);
      acc[u] =
          _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), ScaleProduct(bw[i + u].d, bx[i + u].d), acc[u]);
    }
  }
  for (; i < nb; ++i) {
    const __m256i p = block(bw[i], bx[i]);
    acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), ScaleProduct(bw[i].d, bx[i].d), acc[0]);
  }
  return Hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

// ---- Q8_0: eight blocks to a register -------------------------------------------------
//
// Both Q8_0 kernels (one token, and DotQ8_0Prepared) reduce each 32-value block's products to
// one exact integer T_b, eight consecutive blocks to the eight lanes of a register, and
// then make one conversion and one FMA for the eight: acc += float(T) * (d_w * d_x), lane b
// for block 8g + b (lanes past the row's last block hold 0 * 0). A per-block FMA, as the
// other classic formats do (ClassicDot), costs four of the six vector operations per block
// and token in a batched kernel; this way the batched kernel spends a vpdpbusd per 32
// products and token and little else (docs/PERFORMANCE.md). The one-token kernel gets the
// same integers another way (a dot per block and a horizontal reduction), and both do the
// same float operations, so prefill still equals decode bit for bit.

// Lane b of the result: the exact sum of the 8 lanes of p[b].
__m256i SumLanes8(const __m256i p[8]) {
  const __m256i a0 = _mm256_hadd_epi32(p[0], p[1]), a1 = _mm256_hadd_epi32(p[2], p[3]);
  const __m256i a2 = _mm256_hadd_epi32(p[4], p[5]), a3 = _mm256_hadd_epi32(p[6], p[7]);
  const __m256i b0 = _mm256_hadd_epi32(a0, a1), b1 = _mm256_hadd_epi32(a2, a3);
  return _mm256_add_epi32(_mm256_permute2x128_si256(b0, b1, 0x20),
                          _mm256_permute2x128_si256(b0, b1, 0x31));
}

// The f16 scales of blocks b[0..m-1] (m <= 8) as 8 floats, 0 beyond m.
__m256 Scales8(const BlockQ8_0* b, int m) {
  if (m == 8) {
    return _mm256_cvtph_ps(_mm_setr_epi16(
        static_cast<int16_t>(b[0].d), static_cast<int16_t>(b[1].d), static_cast<int16_t>(b[2].d),
        static_cast<int16_t>(b[3].d), static_cast<int16_t>(b[4].d), static_cast<int16_t>(b[5].d),
        static_cast<int16_t>(b[6].d), static_cast<int16_t>(b[7].d)));
  }
  alignas(16) uint16_t t[8] = {};
  for (int i = 0; i < m; ++i) t[i] = b[i].d;
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
}

// Exact int8 x int8 products, 4 to a lane, for any codes (-128 included, which the sign
// trick, |w| times x with w's sign, cannot negate): (w + 128) as unsigned bytes times x, less 128 *
// x.
__m256i DotS8Exact(__m256i w, __m256i x) {
  const __m256i k128 = _mm256_set1_epi8(static_cast<char>(0x80));
  return _mm256_sub_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_xor_si256(w, k128), x),
                          _mm256_dpbusd_epi32(_mm256_setzero_si256(), k128, x));
}

float DotQ8_0(const void* w, const void* x, int64_t n) {
  const auto* bw = static_cast<const BlockQ8_0*>(w);
  const auto* bx = static_cast<const BlockQ8_0*>(x);
  const int64_t nb = n / kQK;
  __m256 acc = _mm256_setzero_ps();
  for (int64_t g = 0; g < nb; g += 8) {
    const int m = static_cast<int>(std::min<int64_t>(8, nb - g));
    __m256i p[8];
    for (int b = 0; b < 8; ++b) {
      p[b] =
          b < m ? DotS8Exact(Load256(bw[g + b].qs), Load256(bx[g + b].qs)) : _mm256_setzero_si256();
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(SumLanes8(p)),
                          _mm256_mul_ps(Scales8(bw + g, m), Scales8(bx + g, m)), acc);
  }
  return Hsum256(acc);
}

// Q4_0: the nibbles stay unsigned for vpdpbusd and the -8 offset is taken off as
// 8 * sum(x) (a second vpdpbusd), one instruction fewer than the sign trick; the 16 qs
// bytes are broadcast to both lanes by the load itself and one variable shift brings the
// high nibbles (values 16..31) down in the upper lane.
float DotQ4_0(const void* w, const void* x, int64_t n) {
  return ClassicDot(
      static_cast<const BlockQ4_0*>(w), static_cast<const BlockQ8_0*>(x), n / kQK,
      [](const BlockQ4_0& bw, const BlockQ8_0& bx) {
        const __m256i q =
            _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bw.qs)));
        const __m256i v = _mm256_and_si256(_mm256_srlv_epi64(q, _mm256_set_epi64x(4, 4, 0, 0)),
                                           _mm256_set1_epi8(0x0F));
        const __m256i y = Load256(bx.qs);
        const __m256i zero = _mm256_setzero_si256();
        return _mm256_sub_epi32(_mm256_dpbusd_epi32(zero, v, y),
                                _mm256_dpbusd_epi32(zero, _mm256_set1_epi8(8), y));
      });
}

// The mins term of Q4_K/Q5_K, lane l for sub-block l: dmin * m_l times d_x * (the sum of
// x over the sub-block). Both factors are formed apart, the activation's once per token
// (the batched kernel prepares it once for all the rows it runs), and one FMA per block
// adds their product: accm_l += (dmin * m_l) * (d_x * S_l).
struct alignas(32) Floats8 {
  float v[8];
};
__m256 MinsFactor(const BlockQ8_K& bx) {
  const __m256i s = _mm256_madd_epi16(Load256(bx.bsums), _mm256_set1_epi16(1));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(bx.d));
}

// One Q4_K/Q5_K super-block as both the one-token and the batched kernel read it: its two
// f16 factors, its eight 6-bit scales as int16 in both 128-bit lanes (scb), its eight mins
// as floats (mf), and its codes a quarter at a time.
template <bool kFive>
struct Q45Block {
  uint16_t d16, dmin16;
  __m256i scb;
  __m256i hb;  // Q5_K: the fifth bits still to hand out (two per quarter)
  const uint8_t* qs;
  __m256 mf;  // the eight mins as floats

  explicit Q45Block(const uint8_t* blk) : qs(blk + (kFive ? 48 : 16)) {
    std::memcpy(&d16, blk, 2);
    std::memcpy(&dmin16, blk + 2, 2);
    uint64_t sc8, m8;
    UnpackScalesK4(blk + 4, &sc8, &m8);
    mf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(m8))));
    scb = _mm256_broadcastsi128_si256(
        _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(sc8))));
    hb = kFive ? Load256(blk + 16) : _mm256_setzero_si256();
  }
  // Quarter p (called for p = 0, 1, 2, 3 in order): the 32 codes of sub-block 2p (lo) and
  // of 2p+1 (hi), as bytes.
  void Codes(int p, __m256i* lo, __m256i* hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i q = Load256(qs + 32 * p);
    *lo = _mm256_and_si256(q, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    if constexpr (kFive) {
      const __m256i b16 = _mm256_set1_epi8(0x10);
      *lo = _mm256_or_si256(*lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), b16));
      *hi = _mm256_or_si256(*hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), b16));
      hb = _mm256_srli_epi16(hb, 2);
    }
  }
};

// The int16 scales a Q45Quarter multiplies by: s[2p] for elements 0..3 of each 128-bit
// lane (the low sub-block's sums), s[2p+1] for elements 4..7 (the high one's).
__m256i PairScales(__m256i scb, int p) {
  // Bytes 4p, 4p+1 (element 2p) four times; then bytes 4p+2, 4p+3 (element 2p+1).
  const int64_t lo = (4 * p) * 0x0001000100010001ll + (4 * p + 1) * 0x0100010001000100ll;
  const int64_t hi = lo + 2 * 0x0101010101010101ll;
  return _mm256_shuffle_epi8(scb, _mm256_set_epi64x(hi, lo, hi, lo));
}

// isum plus, per int32 lane, the scaled sums of a quarter of a Q4_K/Q5_K super-block for
// one token: lo and hi's codes (sub-blocks 2p and 2p+1) times the token's 64 codes at xq
// in two vpdpbusd (4 products to a lane, |sum| <= 4 * 31 * 128 < 2^15), packed side by
// side to int16 (lo's lanes in elements 0..3 of each 128-bit lane, hi's in 4..7: vpackssdw
// never saturates here) and multiplied by their scales (PairScales) in one vpdpwssd. Both
// Q4_K/Q5_K kernels run exactly this per token and quarter, so each lane of the batched
// kernel's sums holds the one-token kernel's integer.
__m256i Q45Quarter(__m256i isum, __m256i lo, __m256i hi, const int8_t* xq, __m256i scales) {
  const __m256i a = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, Load256(xq));
  const __m256i b = _mm256_dpbusd_epi32(_mm256_setzero_si256(), hi, Load256(xq + 32));
  return _mm256_dpwssd_epi32(isum, _mm256_packs_epi32(a, b), scales);
}

// Q4_K/Q5_K: qs byte 32p + l holds sub-blocks 2p (low nibble) and 2p+1 (high nibble) at
// value l; Q5_K's fifth bit of sub-block s is bit s of qh[l]. 32 codes per ymm, a quarter
// of the block (sub-blocks 2p and 2p+1) per Q45Quarter, in two chains; the mins' term goes
// into the same accumulator (the batched kernel then needs one accumulator per token, not
// two: it runs out of registers otherwise). A zmm version (two sub-blocks per register, put side by
// side with one vshufi64x2) measured 10-20 % slower on the project's Zen 4, whose zmm instructions
// are split into two ymm halves anyway; Intel cores with two 512-bit ports may prefer it.
template <bool kFive>
float DotQ45_K(const void* w, const void* x, int64_t n) {
  const auto* w8 = static_cast<const uint8_t*>(w);
  const auto* bx = static_cast<const BlockQ8_K*>(x);
  const int64_t bytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQKK; ++i) {
    Q45Block<kFive> b(w8 + i * bytes);
    __m256i isum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int p = 0; p < 4; ++p) {
      __m256i lo, hi;
      b.Codes(p, &lo, &hi);
      isum[p % 2] = Q45Quarter(isum[p % 2], lo, hi, bx[i].qs + 64 * p, PairScales(b.scb, p));
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(isum[0], isum[1])),
                          _mm256_set1_ps(bx[i].d * H(b.d16)), acc);
    acc =
        _mm256_fnmadd_ps(_mm256_mul_ps(b.mf, _mm256_set1_ps(H(b.dmin16))), MinsFactor(bx[i]), acc);
  }
  return Hsum256(acc);
}

// vpshufb control for Q6Part's scales: in 128-bit lane c, int16 element c four times (the
// sub-block of the values 16c..16c+15 of the first 64), then element 4 + c four times (of
// the values 64 + 16c.. of the second).
__m512i Q6ScaleSelect() {
  __m128i lanes[4];
  for (int c = 0; c < 4; ++c) {
    const int64_t lo = (2 * c) * 0x0001000100010001ll + (2 * c + 1) * 0x0100010001000100ll;
    lanes[c] = _mm_set_epi64x(lo + 8 * 0x0101010101010101ll, lo);
  }
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(lanes[1], lanes[0])),
                            _mm256_set_m128i(lanes[3], lanes[2]), 1);
}

// isum plus half of a Q6_K block's scaled products for one token: its codes q0 (values
// 0..63 of the half) and q1 (64..127) times the token's 128 codes at xq, four products to a
// lane in two vpdpbusd (|sum| <= 4 * 63 * 128 < 2^15), packed side by side to int16 (never
// saturating) and multiplied by their sub-blocks' scales (`scales`: Q6ScaleSelect applied
// to the half's scales) in one vpdpwssd. Both Q6_K kernels run exactly this per token and
// half, so each lane of the batched kernel's sums holds the one-token kernel's integer.
__m512i Q6Part(__m512i isum, __m512i q0, __m512i q1, const int8_t* xq, __m512i scales) {
  const __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q0, Load512(xq));
  const __m512i b = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q1, Load512(xq + 64));
  return _mm512_dpwssd_epi32(isum, _mm512_packs_epi32(a, b), scales);
}

// Half h of a Q6_K block as both Q6_K kernels read it: the 6-bit codes of values
// 0..63 (q0) and 64..127 (q1) of the half, and its eight scales as int16 in every
// 128-bit lane (scb), from the block's scales widened to int16 (sc16).
inline void Q6Half(const BlockQ6_K& b, int h, __m256i sc16, __m512i* q0, __m512i* q1,
                   __m512i* scb) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  // Left shifts that bring bit pair 0 (low half) / 1 (high half) to bits 4..5, and right
  // shifts for pairs 2 / 3.
  const __m512i shl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
  const __m512i shr = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
  const __m512i ql = Load512(b.ql + 64 * h);
  const __m512i qh = _mm512_broadcast_i64x4(Load256(b.qh + 32 * h));
  *q0 =
      _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30));
  *q1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                        _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30));
  *scb = _mm512_broadcast_i32x4(h == 0 ? _mm256_castsi256_si128(sc16)
                                       : _mm256_extracti128_si256(sc16, 1));
}

// -32 x the sixteen int16 scales of a Q6_K block.
__m256i NegScales32(__m256i sc16) {
  return _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));
}

// Q6_K, per half of 128 values: the low nibbles of ql[64h..64h+63] are values 0..63 and
// the high nibbles 64..127 (in order), with qh[32h + l]'s bit pairs 0/1 (values 0..63,
// low/high 256 bits) and 2/3 (values 64..127) on top.
float DotQ6_K(const void* w, const void* x, int64_t n) {
  const auto* bw = static_cast<const BlockQ6_K*>(w);
  const auto* bx = static_cast<const BlockQ8_K*>(x);
  const __m512i select = Q6ScaleSelect();
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const __m256i sc16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bw[i].scales)));
    // The codes' +32 offset: -32 * sum(scale * bsum), with the -32 folded into the int16
    // scales (|32 * scale| <= 4096) so that one vpmaddwd gives the start value.
    __m512i isum =
        _mm512_zextsi256_si512(_mm256_madd_epi16(Load256(bx[i].bsums), NegScales32(sc16)));
    for (int h = 0; h < 2; ++h) {
      __m512i q0, q1, scb;
      Q6Half(bw[i], h, sc16, &q0, &q1, &scb);
      isum = Q6Part(isum, q0, q1, bx[i].qs + 128 * h, _mm512_shuffle_epi8(scb, select));
    }
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(bx[i].d * H(bw[i].d)), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// ---- batched kernels: one weight row, several tokens (prefill) ---------------------------
//
// Each decodes a weight block once (codes unpacked to bytes, sub-block scales splatted)
// and runs the integer products of every token on the decoded registers. Bit-identity
// with the one-token kernels above: each token's per-lane int32 sums hold the same exact
// integers (the same lanes receive the same products; integer addition is exact, so one
// accumulator per token instead of two changes nothing), and the float side repeats the
// one-token kernel's operations per token in the same order: the same cvt, the same
// scalar d_x * d_w product, the same fma into a per-token accumulator, the same final
// reduction.

// DotQ45_K<kFive>, NT tokens (Q4_K and Q5_K share the d, dmin, scales and qs layout;
// Q5_K's qh sits between scales and qs): per quarter the codes and their scales are
// unpacked once, and each token runs Q45Quarter on them (two vpdpbusd, a vpackssdw and a
// vpdpwssd per 64 codes), as the one-token kernel does. The float side repeats
// DotQ45_K's operations per token: the same cvt, d_x * d_w product and FMA, then the
// mins' FNMA into the same accumulator. The factors d_x * d_w are broadcast-loads times a
// splatted d_w (the same rounded product as a scalar multiply, without the register
// broadcast). Measured on Zen 4: see docs/PERFORMANCE.md. A zmm Q4_K (two sub-blocks per
// register) was 12 % slower: Zen 4 splits zmm work into ymm halves; 12 tokens to a group
// instead of 8 was 10 % slower (registers).
template <bool kFive, int NT>
void DotQ45_KBatch(const void* w, const void* const* x, const Floats8* const* mins, int64_t n,
                   float* out) {
  const auto* w8 = static_cast<const uint8_t*>(w);
  const int64_t bytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  const BlockQ8_K* bx[NT];
  for (int j = 0; j < NT; ++j) bx[j] = static_cast<const BlockQ8_K*>(x[j]);
  __m256 acc[NT];
  for (int j = 0; j < NT; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQKK; ++i) {
    Q45Block<kFive> b(w8 + i * bytes);
    const __m256 dw = _mm256_set1_ps(H(b.d16));
    const __m256 mw = _mm256_mul_ps(b.mf, _mm256_set1_ps(H(b.dmin16)));
    __m256i isum[NT];
    for (int j = 0; j < NT; ++j) isum[j] = _mm256_setzero_si256();
    for (int p = 0; p < 4; ++p) {
      __m256i lo, hi;
      b.Codes(p, &lo, &hi);
      const __m256i scales = PairScales(b.scb, p);
      for (int j = 0; j < NT; ++j)
        isum[j] = Q45Quarter(isum[j], lo, hi, bx[j][i].qs + 64 * p, scales);
    }
    for (int j = 0; j < NT; ++j) {
      const __m256 dx = _mm256_broadcast_ss(&bx[j][i].d);
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), _mm256_mul_ps(dx, dw), acc[j]);
      acc[j] = _mm256_fnmadd_ps(mw, _mm256_load_ps(mins[j][i].v), acc[j]);
    }
  }
  for (int j = 0; j < NT; ++j) out[j] = Hsum256(acc[j]);
}

// DotQ6_K, NT tokens.
template <int NT>
void DotQ6_KBatch(const void* w, const void* const* x, int64_t n, float* out) {
  const auto* bw = static_cast<const BlockQ6_K*>(w);
  const BlockQ8_K* bx[NT];
  for (int j = 0; j < NT; ++j) bx[j] = static_cast<const BlockQ8_K*>(x[j]);
  const __m512i select = Q6ScaleSelect();
  __m512 acc[NT];
  for (int j = 0; j < NT; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const BlockQ6_K& b = bw[i];
    const float dw = H(b.d);
    const __m256i sc16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales)));
    const __m256i nsc = NegScales32(sc16);  // as in DotQ6_K
    __m512i isum[NT];
    for (int j = 0; j < NT; ++j) {
      isum[j] = _mm512_zextsi256_si512(_mm256_madd_epi16(Load256(bx[j][i].bsums), nsc));
    }
    for (int h = 0; h < 2; ++h) {
      __m512i q0, q1, scb;
      Q6Half(b, h, sc16, &q0, &q1, &scb);
      const __m512i scales = _mm512_shuffle_epi8(scb, select);
      for (int j = 0; j < NT; ++j) isum[j] = Q6Part(isum[j], q0, q1, bx[j][i].qs + 128 * h, scales);
    }
    for (int j = 0; j < NT; ++j) {
      acc[j] =
          _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[j]), _mm512_set1_ps(bx[j][i].d * dw), acc[j]);
    }
  }
  for (int j = 0; j < NT; ++j) out[j] = _mm512_reduce_add_ps(acc[j]);
}

// 8 x 8 int32 transpose: lane b of r[k] becomes lane k of r[b].
void Transpose8(__m256i r[8]) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
    u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
    u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2x128_si256(u[i], u[4 + i], 0x20);
    r[4 + i] = _mm256_permute2x128_si256(u[i], u[4 + i], 0x31);
  }
}

// One token's Q8_0 activation row, eight blocks at a time, as DotQ8_0Prepared reads it: the
// codes transposed (lane b of q[k] holds bytes 4k..4k+3 of block b, so one vpdpbusd per k
// adds 4 products into every block's own lane), -128 x each block's code sum (the
// correction for the weights' +128), and the scales.
struct Q8Prepared {
  __m256i q[8];
  __m256i corr;
  __m256 d;
};

void PrepareQ8_0(const BlockQ8_0* bx, int64_t nb, Q8Prepared* out) {
  const __m256i k128 = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int64_t g = 0; g < nb; g += 8) {
    const int m = static_cast<int>(std::min<int64_t>(8, nb - g));
    Q8Prepared& o = out[g / 8];
    for (int b = 0; b < 8; ++b) o.q[b] = b < m ? Load256(bx[g + b].qs) : _mm256_setzero_si256();
    Transpose8(o.q);
    __m256i sum = _mm256_setzero_si256();
    for (int k = 0; k < 8; ++k) sum = _mm256_dpbusd_epi32(sum, k128, o.q[k]);
    o.corr = _mm256_sub_epi32(_mm256_setzero_si256(), sum);
    o.d = Scales8(bx + g, m);
  }
}

// DotQ8_0 for NT prepared tokens: per eight blocks, the weights are transposed once and
// offset to unsigned (w + 128), then each token takes eight vpdpbusd (two chains) starting
// from its correction, one conversion and one FMA. T_b is DotQ8_0's exact integer, and the
// float operations are DotQ8_0's.
template <int NT>
void DotQ8_0Prepared(const BlockQ8_0* bw, const Q8Prepared* const* px, int64_t nb, float* out) {
  __m256 acc[NT];
  for (int j = 0; j < NT; ++j) acc[j] = _mm256_setzero_ps();
  const __m256i k128 = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int64_t g = 0; g < nb; g += 8) {
    const int m = static_cast<int>(std::min<int64_t>(8, nb - g));
    __m256i wt[8];
    for (int b = 0; b < 8; ++b) wt[b] = b < m ? Load256(bw[g + b].qs) : _mm256_setzero_si256();
    Transpose8(wt);
    for (int k = 0; k < 8; ++k) wt[k] = _mm256_xor_si256(wt[k], k128);
    const __m256 dw = Scales8(bw + g, m);
    for (int j = 0; j < NT; ++j) {
      const Q8Prepared& p = px[j][g / 8];
      __m256i a0 = p.corr, a1 = _mm256_setzero_si256();
      for (int k = 0; k < 8; k += 2) {
        a0 = _mm256_dpbusd_epi32(a0, wt[k], p.q[k]);
        a1 = _mm256_dpbusd_epi32(a1, wt[k + 1], p.q[k + 1]);
      }
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a0, a1)), _mm256_mul_ps(dw, p.d),
                               acc[j]);
    }
  }
  for (int j = 0; j < NT; ++j) out[j] = Hsum256(acc[j]);
}

// ---- the VecDotBatchFn entries -------------------------------------------------------
//
// Each runs the call's tokens in groups of kVecDotBatch, the last group through a narrower
// instantiation (every instantiation gives each token the same bits), each group over all
// the rows; the Q8_0 and Q4_K/Q5_K entries first prepare the group's tokens in `scratch`.

// f(std::integral_constant<int, NT>{}) for the NT (1..kVecDotBatch) that equals nt.
template <int NT = kVecDotBatch, typename F>
void WithTokens(int nt, const F& f) {
  if constexpr (NT > 0) {
    if (nt == NT) return f(std::integral_constant<int, NT>{});
    WithTokens<NT - 1>(nt, f);
  }
}

// dot(row, o) (o: NT results) for each of `rows` weight rows; result j of row r goes to
// out[j * stride + r].
template <int NT, typename Dot>
void EachRow(const void* w, int64_t row_bytes, int64_t rows, float* out, int64_t stride,
             const Dot& dot) {
  const auto* w8 = static_cast<const uint8_t*>(w);
  for (int64_t r = 0; r < rows; ++r) {
    float o[NT];
    dot(w8 + r * row_bytes, o);
    for (int j = 0; j < NT; ++j) out[j * stride + r] = o[j];
  }
}

// Q8_0: the tokens are prepared (PrepareQ8_0) once for all the rows of the call.
void Q8_0BatchEntry(const void* w, int64_t row_bytes, int64_t rows, const void* const* x, int n_x,
                    int64_t n, float* out, int64_t stride, void* scratch) {
  const int64_t nb = n / kQK, ng = (nb + 7) / 8;
  auto* prep = static_cast<Q8Prepared*>(scratch);  // kVecDotBatch tokens' worth
  for (int j0 = 0; j0 < n_x; j0 += kVecDotBatch) {
    const int nt = std::min(kVecDotBatch, n_x - j0);
    const Q8Prepared* px[kVecDotBatch];
    for (int j = 0; j < nt; ++j) {
      PrepareQ8_0(static_cast<const BlockQ8_0*>(x[j0 + j]), nb, prep + j * ng);
      px[j] = prep + j * ng;
    }
    WithTokens(nt, [&](auto k) {
      EachRow<k()>(w, row_bytes, rows, out + j0 * stride, stride, [&](const uint8_t* wr, float* o) {
        DotQ8_0Prepared<k()>(reinterpret_cast<const BlockQ8_0*>(wr), px, nb, o);
      });
    });
  }
}

// Q4_K and Q5_K: each token's mins factors (MinsFactor) once for all the rows of the call.
template <bool kFive>
void Q45BatchEntry(const void* w, int64_t row_bytes, int64_t rows, const void* const* x, int n_x,
                   int64_t n, float* out, int64_t stride, void* scratch) {
  const int64_t nb = n / kQKK;
  auto* prep = static_cast<Floats8*>(scratch);  // kVecDotBatch tokens' worth
  for (int j0 = 0; j0 < n_x; j0 += kVecDotBatch) {
    const int nt = std::min(kVecDotBatch, n_x - j0);
    const Floats8* mins[kVecDotBatch];
    for (int j = 0; j < nt; ++j) {
      const auto* bx = static_cast<const BlockQ8_K*>(x[j0 + j]);
      for (int64_t i = 0; i < nb; ++i) _mm256_store_ps(prep[j * nb + i].v, MinsFactor(bx[i]));
      mins[j] = prep + j * nb;
    }
    WithTokens(nt, [&](auto k) {
      EachRow<k()>(w, row_bytes, rows, out + j0 * stride, stride, [&](const uint8_t* wr, float* o) {
        DotQ45_KBatch<kFive, k()>(wr, x + j0, mins, n, o);
      });
    });
  }
}

// Q6_K reads the activation rows as they are.
void Q6_KBatchEntry(const void* w, int64_t row_bytes, int64_t rows, const void* const* x, int n_x,
                    int64_t n, float* out, int64_t stride, void* /*scratch*/) {
  for (int j0 = 0; j0 < n_x; j0 += kVecDotBatch) {
    const int nt = std::min(kVecDotBatch, n_x - j0);
    WithTokens(nt, [&](auto k) {
      EachRow<k()>(w, row_bytes, rows, out + j0 * stride, stride,
                   [&](const uint8_t* wr, float* o) { DotQ6_KBatch<k()>(wr, x + j0, n, o); });
    });
  }
}

// ---- activation quantisers ------------------------------------------------------------

// A function, not a namespace-scope constant: a global initialiser here would run AVX-512
// code at program start, on any CPU.
// |v| and copysign(1, v) in AVX-512F integer operations: the float forms of and/or
// (_mm512_and_ps, ...) are AVX-512DQ, which the level does not require (cpu_features.cc).
__m512 Abs(__m512 v) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF)));
}
__m512 SignedOne(__m512 v) {
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_or_si512(sign, _mm512_castps_si512(_mm512_set1_ps(1.0f))));
}

void QuantQ8_K(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += kQKK, dst += sizeof(BlockQ8_K)) {
    auto* out = reinterpret_cast<BlockQ8_K*>(dst);
    __m512 amax = _mm512_setzero_ps();
    for (int j = 0; j < kQKK; j += 16) {
      // max(|x|, amax) keeps amax when |x| is NaN, as the scalar `fabs(x) > amax` does.
      amax = _mm512_max_ps(Abs(_mm512_loadu_ps(x + j)), amax);
    }
    const float a = _mm512_reduce_max_ps(amax);
    if (a == 0.0f) {
      std::memset(out, 0, sizeof(BlockQ8_K));
      continue;
    }
    // The first value of largest magnitude, with its sign.
    float max = 0.0f;
    for (int j = 0; j < kQKK; j += 16) {
      const __mmask16 m =
          _mm512_cmp_ps_mask(Abs(_mm512_loadu_ps(x + j)), _mm512_set1_ps(a), _CMP_EQ_OQ);
      if (m != 0) {
        max = x[j + __builtin_ctz(m)];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const __m512 vs = _mm512_set1_ps(iscale);
    for (int j = 0; j < kQKK; j += 16) {
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(vs, _mm512_loadu_ps(x + j)));
      q = _mm512_min_epi32(q, _mm512_set1_epi32(127));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out->qs + j), _mm512_cvtepi32_epi8(q));
      out->bsums[j / 16] = static_cast<int16_t>(_mm512_reduce_add_epi32(q));
    }
    out->d = 1.0f / iscale;
  }
}

// round() (half away from zero) of 16 floats, as int32.
__m512i RoundAway(__m512 v) {
  const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m512 frac = Abs(_mm512_sub_ps(v, t));  // exact
  const __mmask16 up = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
  const __m512 one = SignedOne(v);
  return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, one));
}

void QuantQ8_0(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += kQK, dst += sizeof(BlockQ8_0)) {
    auto* out = reinterpret_cast<BlockQ8_0*>(dst);
    const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(Abs(v0), Abs(v1)));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m512 vid = _mm512_set1_ps(id);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out->qs),
                     _mm512_cvtepi32_epi8(RoundAway(_mm512_mul_ps(v0, vid))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out->qs + 16),
                     _mm512_cvtepi32_epi8(RoundAway(_mm512_mul_ps(v1, vid))));
    const uint16_t dh = FloatToHalf(d);
    std::memcpy(&out->d, &dh, 2);
  }
}

// F16/BF16 weights times F32 x, 16 per zmm (vcvtph2ps, or a 16-bit shift for bfloat16:
// both exact), four accumulators against the FMA latency; the tail is masked.
template <bool kBf16>
__m512 Widen16(const uint16_t* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  if constexpr (kBf16) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_cvtph_ps(h);
  }
}

template <bool kBf16>
float DotHalfF32(const void* w, const float* x, int64_t n) {
  const auto* h = static_cast<const uint16_t*>(w);
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    for (int u = 0; u < 4; ++u) {
      acc[u] = _mm512_fmadd_ps(Widen16<kBf16>(h + i + 16 * u, 0xFFFF),
                               _mm512_loadu_ps(x + i + 16 * u), acc[u]);
    }
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    acc[0] = _mm512_fmadd_ps(Widen16<kBf16>(h + i, m), _mm512_maskz_loadu_ps(m, x + i), acc[0]);
  }
  return _mm512_reduce_add_ps(
      _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

}  // namespace

FloatDotFn Avx512FloatDot(GgmlType weight) {
  if (weight == GgmlType::kF16) return DotHalfF32<false>;
  if (weight == GgmlType::kBF16) return DotHalfF32<true>;
  return nullptr;
}

VecDotFn Avx512VecDot(GgmlType weight) {
  switch (weight) {
    case GgmlType::kQ4_0:
      return DotQ4_0;
    case GgmlType::kQ8_0:
      return DotQ8_0;
    case GgmlType::kQ4_K:
      return DotQ45_K<false>;
    case GgmlType::kQ5_K:
      return DotQ45_K<true>;
    case GgmlType::kQ6_K:
      return DotQ6_K;
    default:
      return nullptr;
  }
}

VecDotBatchFn Avx512VecDotBatch(GgmlType weight) {
  switch (weight) {
    case GgmlType::kQ4_K:
      return Q45BatchEntry<false>;
    case GgmlType::kQ5_K:
      return Q45BatchEntry<true>;
    case GgmlType::kQ8_0:
      return Q8_0BatchEntry;
    case GgmlType::kQ6_K:
      return Q6_KBatchEntry;
    default:
      return nullptr;
  }
}

int64_t Avx512VecDotBatchScratch(GgmlType weight, int64_t n) {
  switch (weight) {
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
      return kVecDotBatch * (n / kQKK) * static_cast<int64_t>(sizeof(Floats8));
    case GgmlType::kQ8_0:
      return kVecDotBatch * ((n / kQK + 7) / 8) * static_cast<int64_t>(sizeof(Q8Prepared));
    default:
      return 0;
  }
}

bool Avx512QuantizeActivation(GgmlType act, const float* x, void* dst, int64_t n) {
  auto* d = static_cast<uint8_t*>(dst);
  if (act == GgmlType::kQ8_K) {
    QuantQ8_K(x, d, n / kQKK);
    return true;
  }
  if (act == GgmlType::kQ8_0) {
    QuantQ8_0(x, d, n / kQK);
    return true;
  }
  return false;
}

}  // namespace moex::kcpu::vd
