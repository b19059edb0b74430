// Tensor element types of the GGUF/ggml ecosystem and their block layouts.
//
// The type ids are the ones GGUF files store (ggml's `enum ggml_type`), so a file's
// tensor type can be looked up directly. Quantised types pack `block_elems` values into
// `block_bytes` bytes; a row of n values (n a multiple of block_elems) takes
// n / block_elems * block_bytes bytes. Layouts follow ggml-common.h exactly (read there,
// written anew here): a block read by moex is bit-for-bit the block llama.cpp reads.
//
// This header lives in kernels_cpu because kernels are leaves (plain pointers, no
// Status): everything above them (GGUF reader, experts, caches) shares these traits.
// All functions are thread-safe (pure).
#ifndef MOEX_KERNELS_CPU_QUANT_H_
#define MOEX_KERNELS_CPU_QUANT_H_

#include <cstddef>
#include <cstdint>

namespace moex::kcpu {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

struct TypeTraits {
  GgmlType type;
  const char* name;     // ggml's spelling: "f32", "q4_K", ...
  int64_t block_elems;  // values per block (1 for F32/F16/BF16)
  int64_t block_bytes;  // bytes per block
  bool can_dequantize;  // a scalar reference dequantiser exists
  bool can_quantize;    // moex has its own quantiser for it
};

// Traits of a raw type id as stored in a file; nullptr when the id is not one moex knows.
const TypeTraits* FindTypeTraits(uint32_t type_id);
const TypeTraits& GetTypeTraits(GgmlType type);
// Case-insensitive lookup by ggml name ("q4_k", "Q8_0", "bf16"); nullptr when unknown.
const TypeTraits* FindTypeTraitsByName(const char* name);

// Bytes of a row of n values; n must be a multiple of the block size.
inline int64_t RowBytes(const TypeTraits& t, int64_t n) {
  return n / t.block_elems * t.block_bytes;
}

// Scalar reference dequantisation of n values (n % block_elems == 0).
// REQUIRES: GetTypeTraits(type).can_dequantize.
void DequantizeRow(GgmlType type, const void* src, float* dst, int64_t n);

// Quantises n values (n % block_elems == 0) into dst (RowBytes(type, n) bytes).
// REQUIRES: GetTypeTraits(type).can_quantize.
void QuantizeRow(GgmlType type, const float* src, void* dst, int64_t n);

// IEEE half and bfloat16 conversions (round to nearest even; NaN preserved).
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float Bf16ToFloat(uint16_t b);
uint16_t FloatToBf16(float f);

}  // namespace moex::kcpu

#endif  // MOEX_KERNELS_CPU_QUANT_H_
