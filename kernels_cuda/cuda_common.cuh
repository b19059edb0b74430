// Shared pieces of the kernel files (device code and error plumbing): the GGUF block
// decoders, F16/BF16 conversions, warp reductions and the checked-launch helpers. Only
// .cu files include this; cuda_ops.h is the public face.
//
// Decoders produce 8 consecutive values ("a chunk") of a row: 8 divides every block size
// (32 and 256), so a chunk never straddles a block, and a warp that hands chunk c to lane
// c % 32 reads each block with neighbouring lanes on neighbouring bytes. The arithmetic
// repeats kernels_cpu/quant.cc's expression for every value (e.g. (d * sc) * q - dmin * m),
// so a dequantised weight is bit-identical to the CPU reference (the products are exact,
// so FMA contraction cannot change them: see quant.cc).
#ifndef MOEX_KERNELS_CUDA_CUDA_COMMON_CUH_
#define MOEX_KERNELS_CUDA_CUDA_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels_cpu/blocks.h"
#include "kernels_cpu/quant.h"

namespace moex::kcuda {

using kcpu::GgmlType;
namespace blk = kcpu::blocks;

// ---- host: block traits of the types the kernels read (no link to kernels_cpu) -------------

struct BlockInfo {
  int64_t elems = 0;  // values per block
  int64_t bytes = 0;  // bytes per block
};
inline BlockInfo HostBlockInfo(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return {1, 4};
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return {1, 2};
    case GgmlType::kQ8_0:
      return {blk::kQK, sizeof(blk::BlockQ8_0)};
    case GgmlType::kQ4_0:
      return {blk::kQK, sizeof(blk::BlockQ4_0)};
    case GgmlType::kQ4_1:
      return {blk::kQK, sizeof(blk::BlockQ4_1)};
    case GgmlType::kQ4_K:
      return {blk::kQKK, sizeof(blk::BlockQ4_K)};
    case GgmlType::kQ5_K:
      return {blk::kQKK, sizeof(blk::BlockQ5_K)};
    case GgmlType::kQ6_K:
      return {blk::kQKK, sizeof(blk::BlockQ6_K)};
    default:
      return {};
  }
}
inline int64_t HostRowBytes(GgmlType t, int64_t n) {
  const BlockInfo b = HostBlockInfo(t);
  return b.elems ? n / b.elems * b.bytes : 0;
}
const char* TypeName(GgmlType t);

// "kernel (shape): cudaErrorX (text)".
std::string CudaError(cudaError_t e, const std::string& what);
// The error of the launch just made, if any (clears the sticky last-error state).
std::string CheckLaunch(const std::string& what);

// ---- device: numbers ------------------------------------------------------------------------

__device__ __forceinline__ float Half(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float Bf16(uint16_t b) {
  return __uint_as_float(static_cast<uint32_t>(b) << 16);
}
__device__ __forceinline__ uint16_t Ld16(const uint8_t* p) {
  return *reinterpret_cast<const uint16_t*>(p);  // every field read so is 2-byte aligned
}

// Byte i (0..7, little-endian) of an 8-byte load.
__device__ __forceinline__ uint32_t Byte(uint2 w, int i) {
  return ((i < 4 ? w.x : w.y) >> (8 * (i & 3))) & 0xFF;
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ---- device: chunk decoders, Decode<type>(row, c, out) = values 8c .. 8c+7 of the row ---------

template <GgmlType T>
struct Dec;

template <>
struct Dec<GgmlType::kF32> {
  __device__ __forceinline__ static void Chunk(const uint8_t* row, int64_t c, float* o) {
    const float* p = reinterpret_cast<const float*>(row) + 8 * c;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = p[i];
  }
  __device__ __forceinline__ static float Elem(const uint8_t* row, int64_t i) {
    return reinterpret_cast<const float*>(row)[i];
  }
  __device__ __forceinline__ static void Wide(const uint8_t* row, int64_t c, float* o) {
    const float4* p = reinterpret_cast<const float4*>(row) + 2 * c;
    const float4 a = p[0], b = p[1];
    o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w, o[4] = b.x, o[5] = b.y, o[6] = b.z, o[7] = b.w;
  }
};
template <>
struct Dec<GgmlType::kF16> {
  __device__ __forceinline__ static void Chunk(const uint8_t* row, int64_t c, float* o) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + 8 * c;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = Half(p[i]);
  }
  __device__ __forceinline__ static float Elem(const uint8_t* row, int64_t i) {
    return Half(reinterpret_cast<const uint16_t*>(row)[i]);
  }
  __device__ __forceinline__ static void Wide(const uint8_t* row, int64_t c, float* o) {
    const uint4 u = reinterpret_cast<const uint4*>(row)[c];
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = Half(static_cast<uint16_t>(w[i / 2] >> (16 * (i % 2))));
  }
};
template <>
struct Dec<GgmlType::kBF16> {
  __device__ __forceinline__ static void Chunk(const uint8_t* row, int64_t c, float* o) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + 8 * c;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = Bf16(p[i]);
  }
  __device__ __forceinline__ static float Elem(const uint8_t* row, int64_t i) {
    return Bf16(reinterpret_cast<const uint16_t*>(row)[i]);
  }
  __device__ __forceinline__ static void Wide(const uint8_t* row, int64_t c, float* o) {
    const uint4 u = reinterpret_cast<const uint4*>(row)[c];
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = Bf16(static_cast<uint16_t>(w[i / 2] >> (16 * (i % 2))));
  }
};
template <>
struct Dec<GgmlType::kQ8_0> {
  __device__ __forceinline__ static void Chunk(const uint8_t* row, int64_t c, float* o) {
    const uint8_t* b = row + (c >> 2) * sizeof(blk::BlockQ8_0);
    const float d = Half(Ld16(b));
    const int8_t* q = reinterpret_cast<const int8_t*>(b + 2) + 8 * (c & 3);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = static_cast<float>(q[i]) * d;
  }
};
// Q4_0: byte j holds value j (low nibble) and value j + 16 (high nibble).
template <>
struct Dec<GgmlType::kQ4_0> {
  __device__ __forceinline__ static void Chunk(const uint8_t* row, int64_t c, float* o) {
    const uint8_t* b = row + (c >> 2) * sizeof(blk::BlockQ4_0);
    const float d = Half(Ld16(b));
    const int p = static_cast<int>(c & 3);
    const uint8_t* q = b + 2 + 8 * (p & 1);
    const int shift = 4 * (p >> 1);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = static_cast<float>(((q[i] >> shift) & 0x0F) - 8) * d;
  }
};
template <>
struct Dec<GgmlType::kQ4_1> {
  __device__ __forceinline__ static void Chunk(const uint8_t* row, int64_t c, float* o) {
    const uint8_t* b = row + (c >> 2) * sizeof(blk::BlockQ4_1);
    const float d = Half(Ld16(b)), m = Half(Ld16(b + 2));
    const int p = static_cast<int>(c & 3);
    const uint8_t* q = b + 4 + 8 * (p & 1);
    const int shift = 4 * (p >> 1);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = static_cast<float>((q[i] >> shift) & 0x0F) * d + m;
  }
};

// Q4_K/Q5_K scale and min j (0..7) of the 12 packed bytes (get_scale_min_k4 packing).
__device__ __forceinline__ void ScaleMinK4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K: sub-block s = c / 4 of 32 values sits in qs[32 * (s / 2) + l], low nibble for even s.
template <>
struct Dec<GgmlType::kQ4_K> {
  template <bool kWideLoads = false>
  __device__ __forceinline__ static void Chunk(const uint8_t* row, int64_t c, float* o) {
    const uint8_t* b = row + (c >> 5) * sizeof(blk::BlockQ4_K);
    const int s = static_cast<int>(c >> 2) & 7, p = static_cast<int>(c & 3);
    int sc, m;
    ScaleMinK4(s, b + 4, &sc, &m);
    const float ds = Half(Ld16(b)) * static_cast<float>(sc);
    const float ms = Half(Ld16(b + 2)) * static_cast<float>(m);
    const uint8_t* q = b + 16 + 32 * (s >> 1) + 8 * p;
    const int shift = 4 * (s & 1);
    if (kWideLoads) {  // q is 8-byte aligned when the row is 16-byte aligned (144 = 9 * 16)
      const uint2 w = *reinterpret_cast<const uint2*>(q);
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = ds * static_cast<float>((Byte(w, i) >> shift) & 0x0F) - ms;
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = ds * static_cast<float>((q[i] >> shift) & 0x0F) - ms;
    }
  }
};
// Q5_K: as Q4_K plus the fifth bit of sub-block s in bit s of qh[l].
template <>
struct Dec<GgmlType::kQ5_K> {
  template <bool kWideLoads = false>
  __device__ __forceinline__ static void Chunk(const uint8_t* row, int64_t c, float* o) {
    const uint8_t* b = row + (c >> 5) * sizeof(blk::BlockQ5_K);
    const int s = static_cast<int>(c >> 2) & 7, p = static_cast<int>(c & 3);
    int sc, m;
    ScaleMinK4(s, b + 4, &sc, &m);
    const float ds = Half(Ld16(b)) * static_cast<float>(sc);
    const float ms = Half(Ld16(b + 2)) * static_cast<float>(m);
    const uint8_t* qh = b + 16 + 8 * p;
    const uint8_t* q = b + 48 + 32 * (s >> 1) + 8 * p;
    const int shift = 4 * (s & 1);
    if (kWideLoads) {  // q and qh are 8-byte aligned when the row is 16-byte aligned (176 = 11 *
                       // 16)
      const uint2 wq = *reinterpret_cast<const uint2*>(q);
      const uint2 wh = *reinterpret_cast<const uint2*>(qh);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int q5 =
            static_cast<int>(((Byte(wq, i) >> shift) & 0x0F) | (((Byte(wh, i) >> s) & 1) << 4));
        o[i] = ds * static_cast<float>(q5) - ms;
      }
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int q5 = ((q[i] >> shift) & 0x0F) | (((qh[i] >> s) & 1) << 4);
        o[i] = ds * static_cast<float>(q5) - ms;
      }
    }
  }
};
// Q6_K: value v = 128 h + 32 k + l takes ql[64 h + 32 (k % 2) + l] (nibble k / 2),
// qh[32 h + l] bits 2k..2k+1 and scale scales[8 h + 2 k + l / 16].
template <>
struct Dec<GgmlType::kQ6_K> {
  __device__ __forceinline__ static void Chunk(const uint8_t* row, int64_t c, float* o) {
    const uint8_t* b = row + (c >> 5) * sizeof(blk::BlockQ6_K);
    const int v = 8 * (static_cast<int>(c) & 31);
    const int h = v >> 7, k = (v >> 5) & 3, l = v & 31;
    const uint8_t* ql = b + 64 * h + 32 * (k & 1) + l;
    const uint8_t* qh = b + 128 + 32 * h + l;
    const int8_t sc = reinterpret_cast<const int8_t*>(b + 192)[8 * h + 2 * k + (l >> 4)];
    const float dl = Half(Ld16(b + 208)) * static_cast<float>(sc);
    const int lo_shift = 4 * (k >> 1), hi_shift = 2 * k;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int q6 = (((ql[i] >> lo_shift) & 0x0F) | (((qh[i] >> hi_shift) & 3) << 4)) - 32;
      o[i] = dl * static_cast<float>(q6);
    }
  }
};

template <GgmlType T>
inline constexpr bool kIsFloatType =
    T == GgmlType::kF32 || T == GgmlType::kF16 || T == GgmlType::kBF16;

template <GgmlType T>
inline constexpr bool kHasWideLoads =
    kIsFloatType<T> || T == GgmlType::kQ4_K || T == GgmlType::kQ5_K;

// Values [8c, 8c + 8) of a row of `cols` values, zero beyond cols (only float types have
// rows that are not whole chunks). `wide`: the row starts 16-byte aligned, so types whose
// chunk fields are 8- or 16-byte aligned within their blocks load them in one instruction
// (the other types' blocks, 18, 34 or 210 bytes, are only 2-byte aligned). Wide and
// narrow loads give the same values.
template <GgmlType T>
__device__ __forceinline__ void DecodeChunk(const uint8_t* row, int64_t c, int64_t cols, bool wide,
                                            float* o) {
  if constexpr (kIsFloatType<T>) {
    if (8 * c + 8 > cols) {
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = 8 * c + i < cols ? Dec<T>::Elem(row, 8 * c + i) : 0.0f;
      return;
    }
    if (wide) return Dec<T>::Wide(row, c, o);
    return Dec<T>::Chunk(row, c, o);
  } else if constexpr (kHasWideLoads<T>) {
    if (wide) return Dec<T>::template Chunk<true>(row, c, o);
    return Dec<T>::template Chunk<false>(row, c, o);
  } else {
    Dec<T>::Chunk(row, c, o);
  }
}

// Whether rows at `w`, row_bytes apart, may use DecodeChunk's wide loads.
inline bool WideLoadsOk(const void* w, int64_t row_bytes) {
  return reinterpret_cast<uintptr_t>(w) % 16 == 0 && row_bytes % 16 == 0;
}

// Runs `body` (a statement using the constexpr GgmlType `T`) for the runtime weight type
// `type`; unsupported types run nothing (entry points check IsSupportedWeightType first).
// A macro, not a generic lambda, because kernels are compiled as C++17.
#define MOEX_CASE_TYPE(TYPE, T, ...) \
  case TYPE: {                       \
    constexpr GgmlType T = TYPE;     \
    __VA_ARGS__;                     \
    break;                           \
  }
#define MOEX_DISPATCH_WEIGHT(type, T, ...)          \
  switch (type) {                                   \
    MOEX_CASE_TYPE(GgmlType::kF32, T, __VA_ARGS__)  \
    MOEX_CASE_TYPE(GgmlType::kF16, T, __VA_ARGS__)  \
    MOEX_CASE_TYPE(GgmlType::kBF16, T, __VA_ARGS__) \
    MOEX_CASE_TYPE(GgmlType::kQ8_0, T, __VA_ARGS__) \
    MOEX_CASE_TYPE(GgmlType::kQ4_0, T, __VA_ARGS__) \
    MOEX_CASE_TYPE(GgmlType::kQ4_K, T, __VA_ARGS__) \
    MOEX_CASE_TYPE(GgmlType::kQ5_K, T, __VA_ARGS__) \
    MOEX_CASE_TYPE(GgmlType::kQ6_K, T, __VA_ARGS__) \
    default:                                        \
      break;                                        \
  }

}  // namespace moex::kcuda

#endif  // MOEX_KERNELS_CUDA_CUDA_COMMON_CUH_
