// Shared by the vec_dot level files only: the k-quant scale unpacking and the per-level
// tables that vec_dot.cc dispatches over (block layouts: kernels_cpu/blocks.h).
//
// Blocks are read through these structs directly from the row (no memcpy): every member
// is a byte array or a 2/4-byte scalar read with memcpy-equivalent unaligned loads in the
// SIMD code, and the scalar code copies the scalars out with std::memcpy.
#ifndef MOEX_KERNELS_CPU_VEC_DOT_INTERNAL_H_
#define MOEX_KERNELS_CPU_VEC_DOT_INTERNAL_H_

#include <cstdint>
#include <cstring>

#include "kernels_cpu/blocks.h"
#include "kernels_cpu/quant.h"
#include "kernels_cpu/vec_dot.h"

namespace moex::kcpu::vd {

using namespace blocks;  // NOLINT: the block layouts, kernels_cpu/blocks.h

// Helpers in an unnamed namespace: each level file compiles its own copy with its own
// flags. Shared inline functions would be merged by the linker, and the AVX-512 copy
// could end up called from the scalar code on a CPU without AVX-512.
namespace {

inline uint32_t LoadU32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K block, one per byte, from
// its 12 packed bytes (layout: quant.cc's ScaleMinK4). Word-wide: scales 0..3 are the low
// six bits of bytes 0..3, mins 0..3 those of bytes 4..7; entries 4..7 take their low
// nibble from bytes 8..11 and their top two bits from the top bits of bytes 0..3
// (scales) or 4..7 (mins).
inline void UnpackScalesK4(const uint8_t* packed, uint64_t* scales, uint64_t* mins) {
  const uint32_t a = LoadU32(packed), b = LoadU32(packed + 4), c = LoadU32(packed + 8);
  constexpr uint32_t k6 = 0x3F3F3F3F, k4 = 0x0F0F0F0F, k2 = 0x03030303;
  const uint32_t s_lo = a & k6, m_lo = b & k6;
  const uint32_t s_hi = (c & k4) | (((a >> 6) & k2) << 4);
  const uint32_t m_hi = ((c >> 4) & k4) | (((b >> 6) & k2) << 4);
  *scales = s_lo | (static_cast<uint64_t>(s_hi) << 32);
  *mins = m_lo | (static_cast<uint64_t>(m_hi) << 32);
}

}  // namespace

// Per-level tables: the kernel for a weight type, or nullptr where the level has none.
VecDotFn ScalarVecDot(GgmlType weight);
VecDotFn Avx2VecDot(GgmlType weight);
VecDotFn Avx512VecDot(GgmlType weight);

// Batched kernels matching Avx512VecDot's (vec_dot.h, VecDotBatchFn); nullptr for types
// without one.
VecDotBatchFn Avx512VecDotBatch(GgmlType weight);
int64_t Avx512VecDotBatchScratch(GgmlType weight, int64_t n);

// F16/BF16 x F32 dots; nullptr for other types.
FloatDotFn Avx2FloatDot(GgmlType weight);
FloatDotFn Avx512FloatDot(GgmlType weight);

// AVX-512 activation quantisers (same bytes as QuantizeRow); false for other types.
bool Avx512QuantizeActivation(GgmlType act, const float* x, void* dst, int64_t n);

}  // namespace moex::kcpu::vd

#endif  // MOEX_KERNELS_CPU_VEC_DOT_INTERNAL_H_
