// Scalar reference vec_dots: the exact formula of each format, in integer arithmetic
// within a block and one float multiply-add per block (per scale pair for the k-quants'
// minimum). These are what the AVX2/AVX-512 kernels are tested against, and what runs on
// a CPU without AVX2. The formulas are those of the formats (ggml-common.h layouts, the
// sums of ggml-cpu's *_generic vec_dots: k-quant minima taken from the Q8_K bsums);
// the code is written anew, plain loops the compiler may vectorise.
#include <cstring>

#include "kernels_cpu/vec_dot_internal.h"

namespace moex::kcpu::vd {
namespace {

template <typename Block>
const Block* Blocks(const void* p) {
  return static_cast<const Block*>(p);
}

float Half(uint16_t h) { return HalfToFloat(h); }

float DotQ4_0(const void* w, const void* x, int64_t n) {
  const auto* bw = Blocks<BlockQ4_0>(w);
  const auto* bx = Blocks<BlockQ8_0>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      isum += ((bw[i].qs[j] & 0x0F) - 8) * bx[i].qs[j];
      isum += ((bw[i].qs[j] >> 4) - 8) * bx[i].qs[j + kQK / 2];
    }
    sum += static_cast<float>(isum) * (Half(bw[i].d) * Half(bx[i].d));
  }
  return sum;
}

// Q4_1/Q5_1 values are d * q + m: the minimum meets the sum of the activation codes.
float DotQ4_1(const void* w, const void* x, int64_t n) {
  const auto* bw = Blocks<BlockQ4_1>(w);
  const auto* bx = Blocks<BlockQ8_0>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int isum = 0, xsum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      isum += (bw[i].qs[j] & 0x0F) * bx[i].qs[j] + (bw[i].qs[j] >> 4) * bx[i].qs[j + kQK / 2];
      xsum += bx[i].qs[j] + bx[i].qs[j + kQK / 2];
    }
    const float dx = Half(bx[i].d);
    sum += static_cast<float>(isum) * (Half(bw[i].d) * dx) +
           static_cast<float>(xsum) * (Half(bw[i].m) * dx);
  }
  return sum;
}

float DotQ5_0(const void* w, const void* x, int64_t n) {
  const auto* bw = Blocks<BlockQ5_0>(w);
  const auto* bx = Blocks<BlockQ8_0>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    const uint32_t qh = LoadU32(bw[i].qh);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (bw[i].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1) << 4);
      const int hi = (bw[i].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      isum += (lo - 16) * bx[i].qs[j] + (hi - 16) * bx[i].qs[j + kQK / 2];
    }
    sum += static_cast<float>(isum) * (Half(bw[i].d) * Half(bx[i].d));
  }
  return sum;
}

float DotQ5_1(const void* w, const void* x, int64_t n) {
  const auto* bw = Blocks<BlockQ5_1>(w);
  const auto* bx = Blocks<BlockQ8_0>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    const uint32_t qh = LoadU32(bw[i].qh);
    int isum = 0, xsum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (bw[i].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1) << 4);
      const int hi = (bw[i].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      isum += lo * bx[i].qs[j] + hi * bx[i].qs[j + kQK / 2];
      xsum += bx[i].qs[j] + bx[i].qs[j + kQK / 2];
    }
    const float dx = Half(bx[i].d);
    sum += static_cast<float>(isum) * (Half(bw[i].d) * dx) +
           static_cast<float>(xsum) * (Half(bw[i].m) * dx);
  }
  return sum;
}

float DotQ8_0(const void* w, const void* x, int64_t n) {
  const auto* bw = Blocks<BlockQ8_0>(w);
  const auto* bx = Blocks<BlockQ8_0>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int isum = 0;
    for (int j = 0; j < kQK; ++j) isum += bw[i].qs[j] * bx[i].qs[j];
    sum += static_cast<float>(isum) * (Half(bw[i].d) * Half(bx[i].d));
  }
  return sum;
}

// Q2_K: value = d * (scale & 15) * q - dmin * (scale >> 4) per group of 16; the minimum
// term is dmin * sum_g min_g * bsums[g].
float DotQ2_K(const void* w, const void* x, int64_t n) {
  const auto* bw = Blocks<BlockQ2_K>(w);
  const auto* bx = Blocks<BlockQ8_K>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQKK; ++i) {
    int isum = 0, msum = 0;
    for (int g = 0; g < kQKK / 16; ++g) {
      const uint8_t* q = bw[i].qs + 32 * (g / 8) + 16 * (g % 2);
      const int shift = 2 * ((g / 2) % 4);
      int gsum = 0;
      for (int l = 0; l < 16; ++l) gsum += ((q[l] >> shift) & 3) * bx[i].qs[16 * g + l];
      isum += (bw[i].scales[g] & 0x0F) * gsum;
      msum += (bw[i].scales[g] >> 4) * bx[i].bsums[g];
    }
    sum += bx[i].d * Half(bw[i].d) * static_cast<float>(isum) -
           bx[i].d * Half(bw[i].dmin) * static_cast<float>(msum);
  }
  return sum;
}

int Q3KScale(const uint8_t* s, int g) {
  const int low = g < 8 ? (s[g] & 0x0F) : (s[g - 8] >> 4);
  const int high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
  return (low | (high << 4)) - 32;
}

float DotQ3_K(const void* w, const void* x, int64_t n) {
  const auto* bw = Blocks<BlockQ3_K>(w);
  const auto* bx = Blocks<BlockQ8_K>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQKK; ++i) {
    int isum = 0;
    for (int g = 0; g < kQKK / 16; ++g) {
      const uint8_t* q = bw[i].qs + 32 * (g / 8) + 16 * (g % 2);
      const uint8_t* hm = bw[i].hmask + 16 * (g % 2);
      const int shift = 2 * ((g / 2) % 4);
      const int hbit = (g / 2) % 4 + 4 * (g / 8);
      int gsum = 0;
      for (int l = 0; l < 16; ++l) {
        const int q3 = ((q[l] >> shift) & 3) - (((hm[l] >> hbit) & 1) ? 0 : 4);
        gsum += q3 * bx[i].qs[16 * g + l];
      }
      isum += Q3KScale(bw[i].scales, g) * gsum;
    }
    sum += bx[i].d * Half(bw[i].d) * static_cast<float>(isum);
  }
  return sum;
}

// Q4_K/Q5_K: d * sum_s sc_s * sum(q * x) - dmin * sum_s m_s * (bsums[2s] + bsums[2s+1]).
template <bool kFive>
float DotQ45_K(const void* w, const void* x, int64_t n) {
  const auto* bx = Blocks<BlockQ8_K>(x);
  const auto* w8 = static_cast<const uint8_t*>(w);
  const int64_t bytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  float sum = 0;
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const uint8_t* blk = w8 + i * bytes;
    uint16_t d16, dmin16;
    std::memcpy(&d16, blk, 2);
    std::memcpy(&dmin16, blk + 2, 2);
    const uint8_t* packed = blk + 4;
    const uint8_t* qh = kFive ? blk + 16 : nullptr;
    const uint8_t* qs = kFive ? blk + 48 : blk + 16;
    uint64_t sc8, m8;
    UnpackScalesK4(packed, &sc8, &m8);
    int isum = 0, msum = 0;
    for (int s = 0; s < 8; ++s) {
      const int sc = static_cast<int>((sc8 >> (8 * s)) & 0xFF);
      const int m = static_cast<int>((m8 >> (8 * s)) & 0xFF);
      const uint8_t* q = qs + 32 * (s / 2);
      const int shift = 4 * (s % 2);
      int ssum = 0;
      for (int l = 0; l < 32; ++l) {
        int v = (q[l] >> shift) & 0x0F;
        if (kFive) v |= ((qh[l] >> s) & 1) << 4;
        ssum += v * bx[i].qs[32 * s + l];
      }
      isum += sc * ssum;
      msum += m * (bx[i].bsums[2 * s] + bx[i].bsums[2 * s + 1]);
    }
    sum += bx[i].d * Half(d16) * static_cast<float>(isum) -
           bx[i].d * Half(dmin16) * static_cast<float>(msum);
  }
  return sum;
}

// Q6_K: d * sum_g scale_g * sum((q - 32) * x) over groups of 16.
float DotQ6_K(const void* w, const void* x, int64_t n) {
  const auto* bw = Blocks<BlockQ6_K>(w);
  const auto* bx = Blocks<BlockQ8_K>(x);
  float sum = 0;
  for (int64_t i = 0; i < n / kQKK; ++i) {
    int isum = 0;
    for (int h = 0; h < 2; ++h) {
      for (int k = 0; k < 4; ++k) {
        const uint8_t* ql = bw[i].ql + 64 * h + 32 * (k % 2);
        const uint8_t* qh = bw[i].qh + 32 * h;
        const int lo_shift = 4 * (k / 2), hi_shift = 2 * k;
        for (int g = 0; g < 2; ++g) {
          int gsum = 0;
          for (int l = 16 * g; l < 16 * g + 16; ++l) {
            const int q6 = (((ql[l] >> lo_shift) & 0x0F) | (((qh[l] >> hi_shift) & 3) << 4)) - 32;
            gsum += q6 * bx[i].qs[128 * h + 32 * k + l];
          }
          isum += bw[i].scales[8 * h + 2 * k + g] * gsum;
        }
      }
    }
    sum += bx[i].d * Half(bw[i].d) * static_cast<float>(isum);
  }
  return sum;
}

}  // namespace

VecDotFn ScalarVecDot(GgmlType weight) {
  switch (weight) {
    case GgmlType::kQ4_0:
      return DotQ4_0;
    case GgmlType::kQ4_1:
      return DotQ4_1;
    case GgmlType::kQ5_0:
      return DotQ5_0;
    case GgmlType::kQ5_1:
      return DotQ5_1;
    case GgmlType::kQ8_0:
      return DotQ8_0;
    case GgmlType::kQ2_K:
      return DotQ2_K;
    case GgmlType::kQ3_K:
      return DotQ3_K;
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
