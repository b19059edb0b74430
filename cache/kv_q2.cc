#include "cache/kv_q2.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels_cpu/quant.h"

namespace moex {

void QuantizeRowQ2(const float* x, uint8_t* dst, int64_t n) {
  for (int64_t g = 0; g < n; g += kQ2Group, x += kQ2Group, dst += kQ2GroupBytes) {
    float lo = x[0], hi = x[0];
    for (int64_t j = 1; j < kQ2Group; ++j) {
      lo = std::min(lo, x[j]);
      hi = std::max(hi, x[j]);
    }
    const uint16_t d16 = kcpu::FloatToHalf((hi - lo) / 3.0f);
    const uint16_t m16 = kcpu::FloatToHalf(lo);
    const float d = kcpu::HalfToFloat(d16), m = kcpu::HalfToFloat(m16);
    const float id = d > 0 ? 1.0f / d : 0.0f;
    std::memcpy(dst, &d16, 2);
    std::memcpy(dst + 2, &m16, 2);
    uint8_t* qs = dst + 4;
    std::memset(qs, 0, kQ2Group / 4);
    for (int64_t j = 0; j < kQ2Group; ++j) {
      const int code = std::clamp(static_cast<int>(std::lround((x[j] - m) * id)), 0, 3);
      qs[j / 4] = static_cast<uint8_t>(qs[j / 4] | code << (2 * (j % 4)));
    }
  }
}

void DequantizeRowQ2(const uint8_t* src, float* y, int64_t n) {
  for (int64_t g = 0; g < n; g += kQ2Group, y += kQ2Group, src += kQ2GroupBytes) {
    uint16_t d16, m16;
    std::memcpy(&d16, src, 2);
    std::memcpy(&m16, src + 2, 2);
    const float d = kcpu::HalfToFloat(d16), m = kcpu::HalfToFloat(m16);
    const uint8_t* qs = src + 4;
    for (int64_t j = 0; j < kQ2Group; ++j) y[j] = m + d * ((qs[j / 4] >> (2 * (j % 4))) & 3);
  }
}

}  // namespace moex
