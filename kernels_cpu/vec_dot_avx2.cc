// AVX2 vec_dots (compiled with -mavx2 -mfma -mf16c; called only when CpuSupports(kAvx2)).
//
// Design: 32 weight codes at a time in a ymm, unsigned (nibbles, Q6_K's 6-bit codes) so
// that _mm256_maddubs_epi16 multiplies them by the signed activation codes directly into
// int16 pairs (no saturation: at most 63 * 127 * 2 < 32767), and _mm256_madd_epi16 by
// the sub-block scale (int16, broadcast with a byte shuffle of the unpacked scales) sums
// them into int32 lanes. One float multiply-add per block: the block's integer sum times
// the product of the scales. Signed codes (Q8_0, Q4_0 - 8) use the sign trick
// (|w| * sign(x, w)), the idiom of ggml's x86 kernels. The k-quant minima (Q4_K/Q5_K) and
// Q6_K's -32 offset go through the activation's bsums (16-value sums) with one madd.
#include <immintrin.h>

#include "kernels_cpu/vec_dot_internal.h"

namespace moex::kcpu::vd {
namespace {

float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float H(uint16_t h) { return _cvtsh_ss(h); }

__m256i Load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Sum of products of signed int8 codes into 8 int32 lanes.
__m256i DotS8(__m256i w, __m256i x) {
  const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

// The 32 nibbles of a classic block's 16 bytes in value order: low nibbles are values
// 0..15, high nibbles 16..31.
__m256i Nibbles32(const uint8_t* qs) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
}

// Byte j of the result is 0x10 when bit j of the 32-bit qh is set: the fifth bits of a
// Q5_0/Q5_1 block in value order.
__m256i FifthBits(const uint8_t* qh) {
  const __m256i v = _mm256_set1_epi32(static_cast<int>(LoadU32(qh)));
  // Byte j takes byte j / 8 of the word, then is tested against bit j % 8.
  const __m256i spread = _mm256_shuffle_epi8(
      v, _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

// Classic formats: one FMA per 32-value block; four accumulators so the FMA latency (4
// cycles) does not cap the loop at one block per 4 cycles.
template <typename Block, typename BlockFn>
float ClassicDot(const Block* bw, const BlockQ8_0* bx, int64_t nb, BlockFn block) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 4 <= nb; i += 4) {
    for (int u = 0; u < 4; ++u) {
      const __m256i p = block(bw[i + u], bx[i + u]);
      acc[u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),
                               _mm256_set1_ps(H(bw[i + u].d) * H(bx[i + u].d)), acc[u]);
    }
  }
  for (; i < nb; ++i) {
    const __m256i p = block(bw[i], bx[i]);
    acc[0] =
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(H(bw[i].d) * H(bx[i].d)), acc[0]);
  }
  return Hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

float DotQ4_0(const void* w, const void* x, int64_t n) {
  return ClassicDot(static_cast<const BlockQ4_0*>(w), static_cast<const BlockQ8_0*>(x), n / kQK,
                    [](const BlockQ4_0& bw, const BlockQ8_0& bx) {
                      const __m256i q = _mm256_sub_epi8(Nibbles32(bw.qs), _mm256_set1_epi8(8));
                      return DotS8(q, Load(bx.qs));
                    });
}

float DotQ8_0(const void* w, const void* x, int64_t n) {
  return ClassicDot(
      static_cast<const BlockQ8_0*>(w), static_cast<const BlockQ8_0*>(x), n / kQK,
      [](const BlockQ8_0& bw, const BlockQ8_0& bx) { return DotS8(Load(bw.qs), Load(bx.qs)); });
}

float DotQ5_0(const void* w, const void* x, int64_t n) {
  return ClassicDot(static_cast<const BlockQ5_0*>(w), static_cast<const BlockQ8_0*>(x), n / kQK,
                    [](const BlockQ5_0& bw, const BlockQ8_0& bx) {
                      const __m256i q5 = _mm256_or_si256(Nibbles32(bw.qs), FifthBits(bw.qh));
                      return DotS8(_mm256_sub_epi8(q5, _mm256_set1_epi8(16)), Load(bx.qs));
                    });
}

// Q4_1/Q5_1: unsigned codes times x, plus the minimum times the sum of x's codes
// (maddubs of ones).
template <typename Block, bool kFive>
float DotMin(const void* w, const void* x, int64_t n) {
  const auto* bw = static_cast<const Block*>(w);
  const auto* bx = static_cast<const BlockQ8_0*>(x);
  const __m256i ones8 = _mm256_set1_epi8(1);
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQK; ++i) {
    __m256i q = Nibbles32(bw[i].qs);
    if constexpr (kFive) q = _mm256_or_si256(q, FifthBits(bw[i].qh));
    const __m256i y = Load(bx[i].qs);
    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones16);
    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, y), ones16);
    const float dx = H(bx[i].d);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(H(bw[i].d) * dx), acc);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(H(bw[i].m) * dx), acc);
  }
  return Hsum(acc);
}

// Byte shuffles that broadcast int16 element s of a 128-bit lane to the whole lane.
__m256i Splat16(int s) {
  return _mm256_set1_epi16(static_cast<int16_t>((2 * s) | ((2 * s + 1) << 8)));
}

// Q4_K/Q5_K: qs byte 32p + l holds sub-block 2p (low nibble) and 2p+1 (high nibble) at
// value l; Q5_K's fifth bit of sub-block s is bit s of qh[l].
template <bool kFive>
float DotQ45_K(const void* w, const void* x, int64_t n) {
  const auto* w8 = static_cast<const uint8_t*>(w);
  const auto* bx = static_cast<const BlockQ8_K*>(x);
  const int64_t bytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const uint8_t* blk = w8 + i * bytes;
    uint16_t d16, dmin16;
    std::memcpy(&d16, blk, 2);
    std::memcpy(&dmin16, blk + 2, 2);
    const uint8_t* qs = blk + (kFive ? 48 : 16);
    uint64_t sc8, m8;
    UnpackScalesK4(blk + 4, &sc8, &m8);
    // Minimum term: m_s pairs with bsums[2s] + bsums[2s+1]; (m, m) int16 pairs per lane.
    __m256i mv = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(m8)));
    mv = _mm256_or_si256(mv, _mm256_slli_epi32(mv, 16));
    const __m256i msum = _mm256_madd_epi16(Load(bx[i].bsums), mv);
    const __m256i scb = _mm256_broadcastsi128_si256(
        _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(sc8))));
    __m256i hb = kFive ? Load(blk + 16) : _mm256_setzero_si256();
    __m256i isum = _mm256_setzero_si256();
    for (int p = 0; p < 4; ++p) {
      const __m256i q = Load(qs + 32 * p);
      __m256i lo = _mm256_and_si256(q, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      if constexpr (kFive) {
        // Bit 0 of each byte of hb is the fifth bit of the current sub-block; 16-bit
        // shifts move bits only within a byte here (see the masks).
        const __m256i b16 = _mm256_set1_epi8(0x10);
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), b16));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), b16));
        hb = _mm256_srli_epi16(hb, 2);
      }
      const __m256i p0 = _mm256_maddubs_epi16(lo, Load(bx[i].qs + 64 * p));
      const __m256i p1 = _mm256_maddubs_epi16(hi, Load(bx[i].qs + 64 * p + 32));
      isum =
          _mm256_add_epi32(isum, _mm256_madd_epi16(p0, _mm256_shuffle_epi8(scb, Splat16(2 * p))));
      isum = _mm256_add_epi32(isum,
                              _mm256_madd_epi16(p1, _mm256_shuffle_epi8(scb, Splat16(2 * p + 1))));
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(bx[i].d * H(d16)), acc);
    acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(bx[i].d * H(dmin16)), acc);
  }
  return Hsum(acc);
}

// Q6_K: in half h, ql[64h + 32(k%2) + l] (nibble k / 2) and bits 2k..2k+1 of qh[32h + l]
// make value 128h + 32k + l; scales per 16 values. The -32 offset is
// -32 * sum_g scale_g * bsums[g].
float DotQ6_K(const void* w, const void* x, int64_t n) {
  const auto* bw = static_cast<const BlockQ6_K*>(w);
  const auto* bx = static_cast<const BlockQ8_K*>(x);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i m30 = _mm256_set1_epi8(0x30);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const __m256i sc16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bw[i].scales)));
    const __m256i corr = _mm256_madd_epi16(Load(bx[i].bsums), sc16);
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i scb = h == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00)
                                 : _mm256_permute2x128_si256(sc16, sc16, 0x11);
      const __m256i qh = Load(bw[i].qh + 32 * h);
      const __m256i ql0 = Load(bw[i].ql + 64 * h);
      const __m256i ql1 = Load(bw[i].ql + 64 * h + 32);
      const __m256i q[4] = {_mm256_or_si256(_mm256_and_si256(ql0, m4),
                                            _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)),
                            _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                            _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                            _mm256_and_si256(qh, m30)),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                            _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30))};
      for (int k = 0; k < 4; ++k) {
        // Low lane: scale 2k of this half; high lane: 2k + 1.
        const __m256i sel =
            _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>((4 * k + 2) | ((4 * k + 3) << 8))),
                             _mm_set1_epi16(static_cast<int16_t>((4 * k) | ((4 * k + 1) << 8))));
        const __m256i p = _mm256_maddubs_epi16(q[k], Load(bx[i].qs + 128 * h + 32 * k));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, _mm256_shuffle_epi8(scb, sel)));
      }
    }
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(corr, 5));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(bx[i].d * H(bw[i].d)), acc);
  }
  return Hsum(acc);
}

// F16/BF16 weights times F32 x: widen 8 weights per register (vcvtph2ps, or a 16-bit
// shift for bfloat16, both exact) and FMA into four accumulators (FMA latency).
template <bool kBf16>
__m256 Widen8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (kBf16) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(h);
  }
}

template <bool kBf16>
float DotHalfF32(const void* w, const float* x, int64_t n) {
  const auto* h = static_cast<const uint16_t*>(w);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int u = 0; u < 4; ++u) {
      acc[u] =
          _mm256_fmadd_ps(Widen8<kBf16>(h + i + 8 * u), _mm256_loadu_ps(x + i + 8 * u), acc[u]);
    }
  }
  for (; i + 8 <= n; i += 8) {
    acc[0] = _mm256_fmadd_ps(Widen8<kBf16>(h + i), _mm256_loadu_ps(x + i), acc[0]);
  }
  float s = Hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; i < n; ++i) s += (kBf16 ? Bf16ToFloat(h[i]) : HalfToFloat(h[i])) * x[i];
  return s;
}

}  // namespace

FloatDotFn Avx2FloatDot(GgmlType weight) {
  if (weight == GgmlType::kF16) return DotHalfF32<false>;
  if (weight == GgmlType::kBF16) return DotHalfF32<true>;
  return nullptr;
}

VecDotFn Avx2VecDot(GgmlType weight) {
  switch (weight) {
    case GgmlType::kQ4_0:
      return DotQ4_0;
    case GgmlType::kQ4_1:
      return DotMin<BlockQ4_1, false>;
    case GgmlType::kQ5_0:
      return DotQ5_0;
    case GgmlType::kQ5_1:
      return DotMin<BlockQ5_1, true>;
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

}  // namespace moex::kcpu::vd
