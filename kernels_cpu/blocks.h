// The GGUF block layouts, as C structs: the one definition quant.cc (dequantisers),
// quantize.cc (quantisers) and the vec_dot level files read and write blocks through.
// Layouts follow ggml-common.h exactly (read there, written anew here); the static
// asserts pin each size to the bytes llama.cpp reads. Members are byte arrays and 2/4-byte
// scalars; code reading a block in place copies scalars out with std::memcpy.
#ifndef MOEX_KERNELS_CPU_BLOCKS_H_
#define MOEX_KERNELS_CPU_BLOCKS_H_

#include <cstdint>

namespace moex::kcpu::blocks {

constexpr int kQK = 32;    // values per block of the classic formats
constexpr int kQKK = 256;  // values per super-block of the k-quants

struct BlockQ4_0 {
  uint16_t d;           // fp16 scale
  uint8_t qs[kQK / 2];  // nibbles: low = values 0..15, high = values 16..31
};
struct BlockQ4_1 {
  uint16_t d, m;  // fp16 scale and minimum
  uint8_t qs[kQK / 2];
};
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];  // bit j = fifth bit of value j
  uint8_t qs[kQK / 2];
};
struct BlockQ5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};
struct BlockQ2_K {
  uint8_t scales[kQKK / 16];  // low nibble scale, high nibble min, per 16 values
  uint8_t qs[kQKK / 4];       // 2-bit quants
  uint16_t d, dmin;
};
struct BlockQ3_K {
  uint8_t hmask[kQKK / 8];  // third bit of each quant; set means "no -4 offset"
  uint8_t qs[kQKK / 4];     // low two bits
  uint8_t scales[12];       // sixteen 6-bit scales, biased by 32
  uint16_t d;
};
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];  // eight 6-bit scales and eight 6-bit mins (get_scale_min_k4 packing)
  uint8_t qs[kQKK / 2];
};
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];  // low four bits
  uint8_t qh[kQKK / 4];  // high two bits
  int8_t scales[kQKK / 16];
  uint16_t d;
};
struct BlockQ8_K {
  float d;
  int8_t qs[kQKK];
  int16_t bsums[kQKK / 16];
};

static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);

}  // namespace moex::kcpu::blocks

#endif  // MOEX_KERNELS_CPU_BLOCKS_H_
