// Scalar reference dequantisers for the ggml block formats, and the half/bfloat16
// conversions they rest on.
//
// Design: each format has a plain struct mirroring its block in ggml-common.h (sizes are
// static_asserted against the traits table) and one function that decodes a whole row.
// Blocks are memcpy'd out of the source buffer before use, so rows need no alignment and
// reading raw file bytes through the structs never breaks aliasing rules. The arithmetic
// follows ggml's reference order term by term (e.g. (d * sc) * q - dmin * m), so results
// are bit-identical to dequantize_row_* in ggml-quants.c; that is what lets golden tests
// compare against llama.cpp exactly. Multi-byte fields are little-endian, as in GGUF; the
// code assumes a little-endian host (x86-64, aarch64). quantize.cc writes the same
// layouts through its own byte offsets; the tests pin both against hand-built blocks.
#include "kernels_cpu/quant.h"

#include <algorithm>
#include <cstring>

#include "kernels_cpu/blocks.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

// The only multiply-adds here are d * q + m forms whose product is exact in float (an
// fp16 scale times a 6-bit sub-scale times a code of at most 5 bits has at most 22
// significant bits), so whether the compiler contracts them into FMAs (GCC does with
// -march=native) cannot change a result: there is one rounding either way.

namespace moex::kcpu {
namespace {

using namespace blocks;  // NOLINT: the block layouts, kernels_cpu/blocks.h

template <typename Block>
Block LoadBlock(const uint8_t* src, int64_t i) {
  Block b;
  std::memcpy(&b, src + i * static_cast<int64_t>(sizeof(Block)), sizeof(Block));
  return b;
}

// Unpacks the j-th (0..7) 6-bit scale and min of a Q4_K/Q5_K block. Bytes 0..3 hold
// scales 0..3 in their low six bits, bytes 4..7 mins 0..3; entries 4..7 keep their low
// four bits in the nibbles of bytes 8..11 and their top two bits in the spare top bits
// of bytes 0..3 (scales) and 4..7 (mins).
void ScaleMinK4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void DequantQ4_0(const uint8_t* src, float* y, int64_t nb) {
  // Separate loops for the low and high nibbles keep each loop a plain stride-1 map,
  // which the compiler vectorises (the reference is on the decode path).
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const BlockQ4_0 b = LoadBlock<BlockQ4_0>(src, i);
    const float d = HalfToFloat(b.d);
    for (int j = 0; j < kQK / 2; ++j) y[j] = static_cast<float>((b.qs[j] & 0x0F) - 8) * d;
    for (int j = 0; j < kQK / 2; ++j) y[j + kQK / 2] = static_cast<float>((b.qs[j] >> 4) - 8) * d;
  }
}

void DequantQ4_1(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const BlockQ4_1 b = LoadBlock<BlockQ4_1>(src, i);
    const float d = HalfToFloat(b.d);
    const float m = HalfToFloat(b.m);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>(b.qs[j] & 0x0F) * d + m;
      y[j + kQK / 2] = static_cast<float>(b.qs[j] >> 4) * d + m;
    }
  }
}

uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Fifth bits of a Q5 block: value j (0..31) takes bit j of qh.
void DequantQ5_0(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const BlockQ5_0 b = LoadBlock<BlockQ5_0>(src, i);
    const float d = HalfToFloat(b.d);
    const uint32_t qh = LoadU32(b.qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (b.qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1) << 4);
      const int hi = (b.qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      y[j] = static_cast<float>(lo - 16) * d;
      y[j + kQK / 2] = static_cast<float>(hi - 16) * d;
    }
  }
}

void DequantQ5_1(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const BlockQ5_1 b = LoadBlock<BlockQ5_1>(src, i);
    const float d = HalfToFloat(b.d);
    const float m = HalfToFloat(b.m);
    const uint32_t qh = LoadU32(b.qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (b.qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1) << 4);
      const int hi = (b.qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      y[j] = static_cast<float>(lo) * d + m;
      y[j + kQK / 2] = static_cast<float>(hi) * d + m;
    }
  }
}

void DequantQ8_0(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const BlockQ8_0 b = LoadBlock<BlockQ8_0>(src, i);
    const float d = HalfToFloat(b.d);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(b.qs[j]) * d;
  }
}

// Q2_K: 16 groups of 16. Group g sits in qs bytes [32 * (g / 8) + 16 * (g % 2), +16) at
// bit shift 2 * ((g / 2) % 4): each 32-byte half of qs carries 128 values in four planes.
void DequantQ2_K(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const BlockQ2_K b = LoadBlock<BlockQ2_K>(src, i);
    const float d = HalfToFloat(b.d);
    const float dmin = HalfToFloat(b.dmin);
    for (int g = 0; g < kQKK / 16; ++g) {
      const uint8_t* q = b.qs + 32 * (g / 8) + 16 * (g % 2);
      const int shift = 2 * ((g / 2) % 4);
      const float dl = d * static_cast<float>(b.scales[g] & 0x0F);
      const float ml = dmin * static_cast<float>(b.scales[g] >> 4);
      for (int l = 0; l < 16; ++l) {
        *y++ = dl * static_cast<float>((q[l] >> shift) & 3) - ml;
      }
    }
  }
}

// Q3_K scales: scale g (0..15) has its low nibble in byte g % 8 (low nibble for g < 8,
// high nibble otherwise) and its top two bits in byte 8 + g % 4 at shift 2 * (g / 4).
int Q3KScale(const uint8_t* s, int g) {
  const int low = g < 8 ? (s[g] & 0x0F) : (s[g - 8] >> 4);
  const int high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
  return (low | (high << 4)) - 32;
}

// Q3_K quants follow Q2_K's plane order; the hmask bit for value l of group g is bit
// (g / 2) % 4 + 4 * (g / 8) of hmask[16 * (g % 2) + l]: one bit plane per 32 values.
void DequantQ3_K(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const BlockQ3_K b = LoadBlock<BlockQ3_K>(src, i);
    const float d = HalfToFloat(b.d);
    for (int g = 0; g < kQKK / 16; ++g) {
      const uint8_t* q = b.qs + 32 * (g / 8) + 16 * (g % 2);
      const uint8_t* hm = b.hmask + 16 * (g % 2);
      const int shift = 2 * ((g / 2) % 4);
      const int hbit = (g / 2) % 4 + 4 * (g / 8);
      const float dl = d * static_cast<float>(Q3KScale(b.scales, g));
      for (int l = 0; l < 16; ++l) {
        const int q3 = ((q[l] >> shift) & 3) - (((hm[l] >> hbit) & 1) ? 0 : 4);
        *y++ = dl * static_cast<float>(q3);
      }
    }
  }
}

// Q4_K/Q5_K: 8 sub-blocks of 32; qs byte 32 * (s / 2) + l holds sub-block s (even s in
// the low nibble, odd s in the high one). Q5_K's fifth bit of sub-block s is bit s of
// qh[l].
void DequantQ4_K(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const BlockQ4_K b = LoadBlock<BlockQ4_K>(src, i);
    const float d = HalfToFloat(b.d);
    const float dmin = HalfToFloat(b.dmin);
    for (int s = 0; s < 8; ++s) {
      int sc, m;
      ScaleMinK4(s, b.scales, &sc, &m);
      const float ds = d * static_cast<float>(sc);
      const float ms = dmin * static_cast<float>(m);
      const uint8_t* q = b.qs + 32 * (s / 2);
      const int shift = 4 * (s % 2);
      for (int l = 0; l < 32; ++l) {
        *y++ = ds * static_cast<float>((q[l] >> shift) & 0x0F) - ms;
      }
    }
  }
}

void DequantQ5_K(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const BlockQ5_K b = LoadBlock<BlockQ5_K>(src, i);
    const float d = HalfToFloat(b.d);
    const float dmin = HalfToFloat(b.dmin);
    for (int s = 0; s < 8; ++s) {
      int sc, m;
      ScaleMinK4(s, b.scales, &sc, &m);
      const float ds = d * static_cast<float>(sc);
      const float ms = dmin * static_cast<float>(m);
      const uint8_t* q = b.qs + 32 * (s / 2);
      const int shift = 4 * (s % 2);
      for (int l = 0; l < 32; ++l) {
        const int q5 = ((q[l] >> shift) & 0x0F) | (((b.qh[l] >> s) & 1) << 4);
        *y++ = ds * static_cast<float>(q5) - ms;
      }
    }
  }
}

// Q6_K: two halves of 128 values. In half h, value 32 * k + l (k = 0..3, l = 0..31)
// takes its low nibble from ql[64 * h + 32 * (k % 2) + l] (low nibble for k < 2, high
// otherwise), its top two bits from qh[32 * h + l] at shift 2 * k, and int8 scale
// scales[8 * h + 2 * k + l / 16].
void DequantQ6_K(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const BlockQ6_K b = LoadBlock<BlockQ6_K>(src, i);
    const float d = HalfToFloat(b.d);
    for (int h = 0; h < 2; ++h) {
      for (int k = 0; k < 4; ++k) {
        const uint8_t* ql = b.ql + 64 * h + 32 * (k % 2);
        const uint8_t* qh = b.qh + 32 * h;
        const int lo_shift = 4 * (k / 2), hi_shift = 2 * k;
        // Two groups of 16 values share one scale: a constant inside the inner loop.
        for (int g = 0; g < 2; ++g) {
          const float dl = d * static_cast<float>(b.scales[8 * h + 2 * k + g]);
          for (int l = 16 * g; l < 16 * g + 16; ++l) {
            const int q6 = (((ql[l] >> lo_shift) & 0x0F) | (((qh[l] >> hi_shift) & 3) << 4)) - 32;
            *y++ = dl * static_cast<float>(q6);
          }
        }
      }
    }
  }
}

void DequantQ8_K(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const BlockQ8_K b = LoadBlock<BlockQ8_K>(src, i);
    for (int j = 0; j < kQKK; ++j) *y++ = b.d * static_cast<float>(b.qs[j]);
  }
}

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h >> 15) << 31;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in float.
    const float v = static_cast<float>(mant) * 0x1p-24f;
    return sign ? -v : v;
  }
  if (exp == 31) return BitsToFloat(sign | 0x7F800000u | (mant << 13));  // inf, NaN payload
  return BitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t FloatToHalf(float f) {
  const uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const uint32_t a = u & 0x7FFFFFFF;
  if (a > 0x7F800000u) {
    // NaN: keep the top payload bits and force the quiet bit so it cannot become inf.
    return static_cast<uint16_t>(sign | 0x7E00 | ((a >> 13) & 0x3FF));
  }
  const int exp = static_cast<int>(a >> 23) - 127;
  if (exp >= 16) return sign | 0x7C00;  // at least 2^16: beyond any rounding to 65504
  const uint32_t mant = a & 0x7FFFFF;
  if (exp >= -14) {
    uint32_t r = (static_cast<uint32_t>(exp + 15) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1FFF;
    // A carry out of the mantissa bumps the exponent, which is the right result
    // (including 65520 and up rounding to inf).
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  if (exp < -25) return sign;  // below half the smallest subnormal: rounds to zero
  // Subnormal result in units of 2^-24: (1.mant) * 2^(exp + 24) = m >> shift.
  const uint32_t m = mant | 0x800000;
  const int shift = -(exp + 1);  // 14..24
  uint32_t r = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1);
  const uint32_t halfway = 1u << (shift - 1);
  if (rem > halfway || (rem == halfway && (r & 1))) ++r;
  return static_cast<uint16_t>(sign | r);
}

float Bf16ToFloat(uint16_t b) { return BitsToFloat(static_cast<uint32_t>(b) << 16); }

uint16_t FloatToBf16(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7FFFFFFF) > 0x7F800000u) {
    return static_cast<uint16_t>((u >> 16) | 64);  // quiet NaN, as ggml does
  }
  return static_cast<uint16_t>((u + (0x7FFFu + ((u >> 16) & 1))) >> 16);
}

namespace {

// Half to float over a row. The hardware conversion (F16C) is exact, like HalfToFloat,
// and an order of magnitude faster; the scalar path is for CPUs without it.
void HalfRowToFloat(const uint8_t* s, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, s + 2 * i, 2);
    dst[i] = HalfToFloat(h);
  }
}

}  // namespace

void DequantizeRow(GgmlType type, const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case GgmlType::kF16:
      return HalfRowToFloat(s, dst, n);
    case GgmlType::kBF16:
      // Chunks through a local array: a plain loop the compiler vectorises.
      for (int64_t i = 0; i < n; i += 64) {
        uint16_t b[64];
        uint32_t u[64];
        const int64_t m = std::min<int64_t>(64, n - i);
        std::memcpy(b, s + 2 * i, static_cast<size_t>(m) * 2);
        for (int64_t j = 0; j < m; ++j) u[j] = static_cast<uint32_t>(b[j]) << 16;  // exact
        std::memcpy(dst + i, u, static_cast<size_t>(m) * 4);
      }
      return;
    case GgmlType::kQ4_0:
      return DequantQ4_0(s, dst, n / kQK);
    case GgmlType::kQ4_1:
      return DequantQ4_1(s, dst, n / kQK);
    case GgmlType::kQ5_0:
      return DequantQ5_0(s, dst, n / kQK);
    case GgmlType::kQ5_1:
      return DequantQ5_1(s, dst, n / kQK);
    case GgmlType::kQ8_0:
      return DequantQ8_0(s, dst, n / kQK);
    case GgmlType::kQ2_K:
      return DequantQ2_K(s, dst, n / kQKK);
    case GgmlType::kQ3_K:
      return DequantQ3_K(s, dst, n / kQKK);
    case GgmlType::kQ4_K:
      return DequantQ4_K(s, dst, n / kQKK);
    case GgmlType::kQ5_K:
      return DequantQ5_K(s, dst, n / kQKK);
    case GgmlType::kQ6_K:
      return DequantQ6_K(s, dst, n / kQKK);
    case GgmlType::kQ8_K:
      return DequantQ8_K(s, dst, n / kQKK);
    case GgmlType::kQ8_1:
      break;  // activation-only format: never stored in files
  }
  // REQUIRES violated; there is nothing sensible to decode.
  for (int64_t i = 0; i < n; ++i) dst[i] = 0.0f;
}

}  // namespace moex::kcpu
