// Quantisers: float rows into ggml blocks that llama.cpp (and quant.cc) decode.
//
// Design: the classic formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and Q8_K use ggml's
// reference rounding rules, so moex writes the same bytes as quantize_row_*_ref and
// gguf-py for them; files written by moex then match files written by llama.cpp's tools.
// The k-quants (Q4_K, Q5_K, Q6_K) use a simpler scheme of our own, in two stages:
//   1. fit each sub-block independently: a small grid search over the inverse scale,
//      each candidate refined by a closed-form least-squares fit of scale (and min);
//   2. quantise the sub-block scales (6-bit for Q4_K/Q5_K against fp16 d and dmin,
//      int8 for Q6_K against fp16 d), then re-quantise every value against the scale it
//      will actually be decoded with, so rounding of the scales costs as little as
//      possible.
// No importance weights (imatrix): this is for tests, caches and re-quantising experts,
// not for producing the best possible model files.
//
// Layouts are written through structs that repeat quant.cc's (see there for the bit
// maps); the tests round-trip every type through DequantizeRow and pin both files
// against hand-built blocks.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels_cpu/blocks.h"
#include "kernels_cpu/quant.h"

namespace moex::kcpu {
namespace {

using namespace blocks;  // NOLINT: the block layouts, kernels_cpu/blocks.h

template <typename Block>
void StoreBlock(const Block& b, uint8_t* dst, int64_t i) {
  std::memcpy(dst + i * static_cast<int64_t>(sizeof(Block)), &b, sizeof(Block));
}

// Round half to even, as ggml's nearest_int does for the magnitudes used here.
int Nearest(float v) { return static_cast<int>(std::lrint(v)); }

// The value of largest magnitude, with its sign (the first one on ties). Symmetric
// formats map it to the most negative code, which has no positive counterpart, so the
// whole code range is used.
float SignedAbsMax(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

// ---- classic formats: ggml's reference rounding --------------------------------------

void QuantQ4_0(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    const float d = SignedAbsMax(x, kQK) / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ4_0 b;
    b.d = FloatToHalf(d);
    for (int j = 0; j < kQK / 2; ++j) {
      // x * id lies in [-8, 8]; + 8.5 then truncation is round-half-up onto 0..16.
      const int q0 = std::min(15, static_cast<int>(x[j] * id + 8.5f));
      const int q1 = std::min(15, static_cast<int>(x[j + kQK / 2] * id + 8.5f));
      b.qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
    StoreBlock(b, dst, i);
  }
}

void MinMax(const float* x, int n, float* lo, float* hi) {
  *lo = x[0];
  *hi = x[0];
  for (int j = 1; j < n; ++j) {
    *lo = std::min(*lo, x[j]);
    *hi = std::max(*hi, x[j]);
  }
}

void QuantQ4_1(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float lo, hi;
    MinMax(x, kQK, &lo, &hi);
    const float d = (hi - lo) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ4_1 b;
    b.d = FloatToHalf(d);
    b.m = FloatToHalf(lo);
    for (int j = 0; j < kQK / 2; ++j) {
      const int q0 = std::min(15, static_cast<int>((x[j] - lo) * id + 0.5f));
      const int q1 = std::min(15, static_cast<int>((x[j + kQK / 2] - lo) * id + 0.5f));
      b.qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
    StoreBlock(b, dst, i);
  }
}

// Packs 32 five-bit codes: low nibbles into qs (value j and j + 16 share byte j), the
// fifth bit of value j into bit j of the little-endian qh word.
void PackQ5(const int* q, uint8_t* qs, uint8_t* qh_bytes) {
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    qs[j] = static_cast<uint8_t>((q[j] & 0x0F) | ((q[j + kQK / 2] & 0x0F) << 4));
    qh |= static_cast<uint32_t>(q[j] >> 4) << j;
    qh |= static_cast<uint32_t>(q[j + kQK / 2] >> 4) << (j + kQK / 2);
  }
  std::memcpy(qh_bytes, &qh, 4);
}

void QuantQ5_0(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    const float d = SignedAbsMax(x, kQK) / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int q[kQK];
    for (int j = 0; j < kQK; ++j) q[j] = std::min(31, static_cast<int>(x[j] * id + 16.5f));
    BlockQ5_0 b;
    b.d = FloatToHalf(d);
    PackQ5(q, b.qs, b.qh);
    StoreBlock(b, dst, i);
  }
}

void QuantQ5_1(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float lo, hi;
    MinMax(x, kQK, &lo, &hi);
    const float d = (hi - lo) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int q[kQK];
    for (int j = 0; j < kQK; ++j) q[j] = std::min(31, static_cast<int>((x[j] - lo) * id + 0.5f));
    BlockQ5_1 b;
    b.d = FloatToHalf(d);
    b.m = FloatToHalf(lo);
    PackQ5(q, b.qs, b.qh);
    StoreBlock(b, dst, i);
  }
}

void QuantQ8_0(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ8_0 b;
    b.d = FloatToHalf(d);
    // roundf (half away from zero) is what the reference uses here.
    for (int j = 0; j < kQK; ++j) b.qs[j] = static_cast<int8_t>(std::round(x[j] * id));
    StoreBlock(b, dst, i);
  }
}

// Q8_K keeps d in fp32 and the sums of each 16 codes (bsums) for the k-quant dot
// products; the largest-magnitude value maps to -127 so codes stay within [-127, 127].
void QuantQ8_K(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    BlockQ8_K b;
    std::memset(&b, 0, sizeof(b));
    const float max = SignedAbsMax(x, kQKK);
    if (max != 0.0f) {
      const float iscale = -127.0f / max;
      for (int j = 0; j < kQKK; ++j) {
        b.qs[j] = static_cast<int8_t>(std::min(127, Nearest(iscale * x[j])));
      }
      for (int g = 0; g < kQKK / 16; ++g) {
        int sum = 0;
        for (int l = 0; l < 16; ++l) sum += b.qs[16 * g + l];
        b.bsums[g] = static_cast<int16_t>(sum);
      }
      b.d = 1.0f / iscale;
    }
    StoreBlock(b, dst, i);
  }
}

// ---- k-quants: our own fits -------------------------------------------------------------

// Fits x[0..n) ~ scale * L - min with L in [0, nmax], scale >= 0 and min >= 0 (the
// formats store min as a non-negative magnitude, so a sub-block that is all positive
// gets min = 0). Tries a grid of inverse scales around nmax / range; for each, the codes
// are fixed and (scale, -min) solved by least squares, keeping the fit with the lowest
// squared error.
void FitScaleMin(const float* x, int n, int nmax, float* scale, float* min) {
  float lo, hi;
  MinMax(x, n, &lo, &hi);
  lo = std::min(lo, 0.0f);
  if (hi <= lo) {  // constant non-positive sub-block (including all zero)
    *scale = 0.0f;
    *min = -lo;
    return;
  }
  float best_scale = (hi - lo) / static_cast<float>(nmax);
  float best_offset = lo;
  float best_err = INFINITY;
  constexpr int kSteps = 12;
  for (int t = -kSteps; t <= kSteps; ++t) {
    const float iscale = (static_cast<float>(nmax) + 0.08f * static_cast<float>(t)) / (hi - lo);
    float sl = 0, sl2 = 0, sx = 0, slx = 0;
    int codes[kQK];
    for (int j = 0; j < n; ++j) {
      codes[j] = std::clamp(Nearest((x[j] - lo) * iscale), 0, nmax);
      const float l = static_cast<float>(codes[j]);
      sl += l;
      sl2 += l * l;
      sx += x[j];
      slx += l * x[j];
    }
    const float det = static_cast<float>(n) * sl2 - sl * sl;
    if (det <= 0.0f) continue;
    float a = (static_cast<float>(n) * slx - sl * sx) / det;
    float b = (sl2 * sx - sl * slx) / det;
    if (b > 0.0f) {  // the offset must be <= 0: refit the scale alone
      b = 0.0f;
      a = slx / sl2;
    }
    if (a <= 0.0f) continue;
    float err = 0.0f;
    for (int j = 0; j < n; ++j) {
      const float e = a * static_cast<float>(codes[j]) + b - x[j];
      err += e * e;
    }
    if (err < best_err) {
      best_err = err;
      best_scale = a;
      best_offset = b;
    }
  }
  *scale = best_scale;
  *min = -best_offset;
}

// Quantises the eight sub-block scales and mins of a Q4_K/Q5_K super-block to 6 bits
// against fp16 super-scales, packs them as quant.cc's ScaleMinK4 unpacks them, and
// returns the effective (decoded) per-sub-block scale and min.
void PackScalesK4(const float* scales, const float* mins, uint16_t* d16, uint16_t* dmin16,
                  uint8_t* packed, float* eff_scale, float* eff_min) {
  const float max_scale = *std::max_element(scales, scales + 8);
  const float max_min = *std::max_element(mins, mins + 8);
  *d16 = FloatToHalf(max_scale / 63.0f);
  *dmin16 = FloatToHalf(max_min / 63.0f);
  // Quantise against the fp16 values the decoder will see, not the exact quotients.
  const float d = HalfToFloat(*d16);
  const float dmin = HalfToFloat(*dmin16);
  int sc[8], m[8];
  for (int s = 0; s < 8; ++s) {
    sc[s] = d > 0.0f ? std::clamp(Nearest(scales[s] / d), 0, 63) : 0;
    m[s] = dmin > 0.0f ? std::clamp(Nearest(mins[s] / dmin), 0, 63) : 0;
    eff_scale[s] = d * static_cast<float>(sc[s]);
    eff_min[s] = dmin * static_cast<float>(m[s]);
  }
  std::memset(packed, 0, 12);
  for (int s = 0; s < 4; ++s) {
    packed[s] = static_cast<uint8_t>(sc[s]);
    packed[s + 4] = static_cast<uint8_t>(m[s]);
  }
  for (int s = 4; s < 8; ++s) {
    packed[s + 4] = static_cast<uint8_t>((sc[s] & 0x0F) | ((m[s] & 0x0F) << 4));
    packed[s - 4] |= static_cast<uint8_t>((sc[s] >> 4) << 6);
    packed[s] |= static_cast<uint8_t>((m[s] >> 4) << 6);
  }
}

// Codes of one super-block for Q4_K (nmax 15) or Q5_K (nmax 31), fitted against the
// decoded scales; fills the 12 scale bytes and fp16 super-scales.
void QuantSuperBlockK(const float* x, int nmax, uint16_t* d16, uint16_t* dmin16, uint8_t* packed,
                      int* codes) {
  float scales[8], mins[8], eff_scale[8], eff_min[8];
  for (int s = 0; s < 8; ++s) FitScaleMin(x + 32 * s, 32, nmax, &scales[s], &mins[s]);
  PackScalesK4(scales, mins, d16, dmin16, packed, eff_scale, eff_min);
  for (int s = 0; s < 8; ++s) {
    const float inv = eff_scale[s] > 0.0f ? 1.0f / eff_scale[s] : 0.0f;
    for (int l = 0; l < 32; ++l) {
      const float v = (x[32 * s + l] + eff_min[s]) * inv;
      codes[32 * s + l] = std::clamp(Nearest(v), 0, nmax);
    }
  }
}

void QuantQ4_K(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    BlockQ4_K b;
    int codes[kQKK];
    QuantSuperBlockK(x, 15, &b.d, &b.dmin, b.scales, codes);
    // Sub-blocks 2k and 2k + 1 share qs[32k .. 32k + 32): low and high nibble.
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        b.qs[32 * k + l] = static_cast<uint8_t>(codes[64 * k + l] | (codes[64 * k + 32 + l] << 4));
      }
    }
    StoreBlock(b, dst, i);
  }
}

void QuantQ5_K(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    BlockQ5_K b;
    int codes[kQKK];
    QuantSuperBlockK(x, 31, &b.d, &b.dmin, b.scales, codes);
    std::memset(b.qh, 0, sizeof(b.qh));
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        const int lo = codes[64 * k + l];
        const int hi = codes[64 * k + 32 + l];
        b.qs[32 * k + l] = static_cast<uint8_t>((lo & 0x0F) | ((hi & 0x0F) << 4));
        // Fifth bit of sub-block s goes to bit s of qh[l].
        b.qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * k)) | ((hi >> 4) << (2 * k + 1)));
      }
    }
    StoreBlock(b, dst, i);
  }
}

// Fits x[0..16) ~ scale * L with L in [-32, 31]: a grid of inverse scales anchored at the
// signed extreme (which maps to -32), each refined by least squares for the scale.
float FitScaleSymmetric(const float* x, int n) {
  const float max = SignedAbsMax(x, n);
  if (max == 0.0f) return 0.0f;
  float best_scale = max / -32.0f;
  float best_err = INFINITY;
  constexpr int kSteps = 8;
  for (int t = -kSteps; t <= kSteps; ++t) {
    const float iscale = -(32.0f + 0.1f * static_cast<float>(t)) / max;
    float slx = 0, sl2 = 0;
    int codes[16];
    for (int j = 0; j < n; ++j) {
      codes[j] = std::clamp(Nearest(x[j] * iscale), -32, 31);
      slx += static_cast<float>(codes[j]) * x[j];
      sl2 += static_cast<float>(codes[j] * codes[j]);
    }
    if (sl2 <= 0.0f) continue;
    const float a = slx / sl2;
    float err = 0.0f;
    for (int j = 0; j < n; ++j) {
      const float e = a * static_cast<float>(codes[j]) - x[j];
      err += e * e;
    }
    if (err < best_err) {
      best_err = err;
      best_scale = a;
    }
  }
  return best_scale;
}

void QuantQ6_K(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    BlockQ6_K b;
    float scales[16];
    float amax = 0.0f;
    for (int g = 0; g < 16; ++g) {
      scales[g] = FitScaleSymmetric(x + 16 * g, 16);
      amax = std::max(amax, std::fabs(scales[g]));
    }
    b.d = FloatToHalf(amax / 127.0f);
    const float d = HalfToFloat(b.d);
    int codes[kQKK];
    for (int g = 0; g < 16; ++g) {
      const int sc = d > 0.0f ? std::clamp(Nearest(scales[g] / d), -128, 127) : 0;
      b.scales[g] = static_cast<int8_t>(sc);
      const float eff = d * static_cast<float>(sc);
      const float inv = eff != 0.0f ? 1.0f / eff : 0.0f;
      for (int l = 0; l < 16; ++l) {
        codes[16 * g + l] = std::clamp(Nearest(x[16 * g + l] * inv), -32, 31) + 32;
      }
    }
    std::memset(b.ql, 0, sizeof(b.ql));
    std::memset(b.qh, 0, sizeof(b.qh));
    // Value 128h + 32k + l: low nibble in ql[64h + 32(k % 2) + l] (high nibble when
    // k >= 2), top two bits in qh[32h + l] at shift 2k.
    for (int h = 0; h < 2; ++h) {
      for (int k = 0; k < 4; ++k) {
        for (int l = 0; l < 32; ++l) {
          const int q = codes[128 * h + 32 * k + l];
          b.ql[64 * h + 32 * (k % 2) + l] |= static_cast<uint8_t>((q & 0x0F) << (4 * (k / 2)));
          b.qh[32 * h + l] |= static_cast<uint8_t>((q >> 4) << (2 * k));
        }
      }
    }
    StoreBlock(b, dst, i);
  }
}

}  // namespace

void QuantizeRow(GgmlType type, const float* src, void* dst, int64_t n) {
  auto* d = static_cast<uint8_t*>(dst);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToHalf(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      }
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t b = FloatToBf16(src[i]);
        std::memcpy(d + 2 * i, &b, 2);
      }
      return;
    case GgmlType::kQ4_0:
      return QuantQ4_0(src, d, n / kQK);
    case GgmlType::kQ4_1:
      return QuantQ4_1(src, d, n / kQK);
    case GgmlType::kQ5_0:
      return QuantQ5_0(src, d, n / kQK);
    case GgmlType::kQ5_1:
      return QuantQ5_1(src, d, n / kQK);
    case GgmlType::kQ8_0:
      return QuantQ8_0(src, d, n / kQK);
    case GgmlType::kQ4_K:
      return QuantQ4_K(src, d, n / kQKK);
    case GgmlType::kQ5_K:
      return QuantQ5_K(src, d, n / kQKK);
    case GgmlType::kQ6_K:
      return QuantQ6_K(src, d, n / kQKK);
    case GgmlType::kQ8_K:
      return QuantQ8_K(src, d, n / kQKK);
    case GgmlType::kQ8_1:
    case GgmlType::kQ2_K:
    case GgmlType::kQ3_K:
      break;  // no quantiser (can_quantize is false)
  }
  // REQUIRES violated: leave the destination alone rather than write a half-valid row.
}

}  // namespace moex::kcpu
