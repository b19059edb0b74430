// Integer dot products of a quantised weight row with a quantised activation row: the
// inner loop of decode (one token: every weight row is read once, so the row's bytes, not
// the arithmetic, should set the speed).
//
// Design (after ggml's vec_dot_*_q8_* in ggml-cpu; the formulas are the formats', the code
// is ours): the activation x is quantised once per token into 8-bit blocks, Q8_K (256
// values, fp32 d, int8 codes, int16 sums per 16 codes) for the k-quants and Q8_0 (32
// values, fp16 d) for the classic formats. A weight row is then read in place, block by
// block, and each block's integer products are summed exactly in int32 before one float
// multiply by the two blocks' scales. Formats with an offset or a minimum (Q4_0's -8,
// Q6_K's -32, Q4_K's dmin * m) fold it into Q8_K's bsums or a per-block sum of the
// activation codes, so the weight codes are used unsigned (what VNNI's u8 x s8 wants).
//
// Three levels, picked at run time (cpu_features.h): scalar (vec_dot_ref.cc, the exact
// formula, what the others are tested against), AVX2 (vec_dot_avx2.cc) and AVX-512 with
// VNNI (vec_dot_avx512.cc). A level without its own kernel for a type falls back to the
// next lower one. Results of different levels differ only in the order of the float sums
// across blocks (the integer part of each block is exact).
// Thread-safety: all functions are pure; dispatch tables are resolved once.
#ifndef MOEX_KERNELS_CPU_VEC_DOT_H_
#define MOEX_KERNELS_CPU_VEC_DOT_H_

#include <cstdint>

#include "kernels_cpu/cpu_features.h"
#include "kernels_cpu/quant.h"

namespace moex::kcpu {

// sum_i W[i] * X[i] over n values (n a multiple of both block sizes) of a weight row w in
// its GGUF layout and an activation row x in VecDotActivationType(weight type).
using VecDotFn = float (*)(const void* w, const void* x, int64_t n);

// The activation block type the integer dot of `weight` takes: kQ8_K for Q2_K..Q6_K,
// kQ8_0 for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; kF32 when there is no integer dot (F32, F16,
// BF16, Q8_K, Q8_1).
GgmlType VecDotActivationType(GgmlType weight);

// The kernel of `level` for `weight` (or of the best lower level that has one); nullptr
// when VecDotActivationType(weight) is kF32. REQUIRES: CpuSupports(level).
VecDotFn GetVecDot(GgmlType weight, IsaLevel level);

// GetVecDot at BestIsaLevel(), resolved once per type.
VecDotFn GetVecDot(GgmlType weight);

// Several tokens against a block of weight rows: out[j * out_stride + r] = the VecDotFn of
// the same type and level applied to (w + r * row_bytes, x[j], n), bit for bit, for every
// token j < n_x and row r < rows. For prefill: a weight block is decoded (nibbles
// unpacked, sub-block scales expanded) once per kVecDotBatch tokens instead of once per
// token, and a kernel may lay the tokens' rows out anew once for all the rows of the call
// (Q8_0 does); each token's result keeps the vec_dot's own integers and float
// operations, so it does not depend on how tokens or rows are grouped.
// `scratch` (32-byte aligned, VecDotBatchScratchBytes(weight, n) bytes; null when that is
// 0) is the kernel's to use during the call: callers own it, so a call allocates nothing.
using VecDotBatchFn = void (*)(const void* w, int64_t row_bytes, int64_t rows, const void* const* x,
                               int n_x, int64_t n, float* out, int64_t out_stride, void* scratch);
// Tokens per pass over a weight block (8: 8-17 % faster than 4 or 6 in BM_PrefillGemm;
// the Q4_K kernel's 24 accumulators then fill most of the 32 vector registers).
constexpr int kVecDotBatch = 8;

// The batched kernel of exactly the kernel GetVecDot(weight, level) returns, or nullptr
// where there is none (callers then take one vec_dot per token): AVX-512 level, Q4_K, Q5_K,
// Q6_K and Q8_0. REQUIRES: CpuSupports(level).
VecDotBatchFn GetVecDotBatch(GgmlType weight, IsaLevel level);

// GetVecDotBatch at BestIsaLevel() (the level GetVecDot(weight) uses), resolved once.
VecDotBatchFn GetVecDotBatch(GgmlType weight);

// The scratch a batched kernel of `weight` needs for rows of n values (0: none).
int64_t VecDotBatchScratchBytes(GgmlType weight, int64_t n);

// sum_i W[i] * x[i] for an F16 or BF16 weight row and F32 x (n any length): these formats
// need no activation quantisation, only a widening of the weights in registers.
using FloatDotFn = float (*)(const void* w, const float* x, int64_t n);

// The F16/BF16 kernel of the best level that has one (AVX2 or AVX-512), resolved once;
// nullptr for other types or on CPUs without AVX2 (callers then dequantise rows).
FloatDotFn GetFloatDot(GgmlType weight);

// The F16/BF16 kernel of exactly `level` (nullptr at kScalar or for other types).
// REQUIRES: CpuSupports(level).
FloatDotFn GetFloatDot(GgmlType weight, IsaLevel level);

// Quantises n floats into activation blocks of `act` (kQ8_K or kQ8_0), exactly as
// QuantizeRow does (same bytes), vectorised where the CPU allows.
void QuantizeActivation(GgmlType act, const float* x, void* dst, int64_t n);

}  // namespace moex::kcpu

#endif  // MOEX_KERNELS_CPU_VEC_DOT_H_
