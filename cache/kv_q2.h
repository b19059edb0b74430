// 2-bit KV rows for MiKV's demoted tier (`mikv:bits=2`): groups of 32 values, each an f16
// step and an f16 minimum and 32 2-bit codes (12 bytes: 3 bits a value), value =
// minimum + code * step: the asymmetric, group-wise uniform quantiser of KIVI and MiKV
// (arXiv 2402.02750 §3; 2402.18096 §4) at the group size of the cache's other row types.
// GGUF's 2-bit type (Q2_K) needs 256-value blocks, longer than a head.
// Thread-safety: pure functions.
#ifndef MOEX_CACHE_KV_Q2_H_
#define MOEX_CACHE_KV_Q2_H_

#include <cstdint>

namespace moex {

inline constexpr int64_t kQ2Group = 32;
inline constexpr int64_t kQ2GroupBytes = 12;

// Bytes of a row of n values; n must be a multiple of kQ2Group.
inline constexpr int64_t Q2RowBytes(int64_t n) { return n / kQ2Group * kQ2GroupBytes; }

// Codes are chosen against the stored (f16-rounded) step and minimum, so every value is
// within half a step of its decoded value (plus the f16 rounding of the group's extremes).
void QuantizeRowQ2(const float* x, uint8_t* dst, int64_t n);
void DequantizeRowQ2(const uint8_t* src, float* y, int64_t n);

}  // namespace moex

#endif  // MOEX_CACHE_KV_Q2_H_
