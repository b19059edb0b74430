// Reference CPU operators of the forward pass: plain pointer/shape interfaces, F32
// activations, weights in any GGUF block format read in place.
//
// These are the clear, correct versions the rest of moex is checked against; they are
// parallel (TBB) and let the compiler vectorise, but do not hand-tune. The exception is
// MatMul on quantised weights, which runs the hand-written integer vec_dots of vec_dot.h
// (scalar / AVX2 / AVX-512 chosen at run time); its tests compare it with the exact
// product of the dequantised weights.
// Thread-safety: pure functions; MatMul and MatMulMany parallelise internally and may be
// called from inside another call's parallel region (each nesting level gets its own
// scratch).
#ifndef MOEX_KERNELS_CPU_OPS_H_
#define MOEX_KERNELS_CPU_OPS_H_

#include <cstdint>
#include <span>

#include "kernels_cpu/cpu_features.h"
#include "kernels_cpu/quant.h"

namespace moex::kcpu {

// y[t][n] = sum_k W[n][k] * x[t][k] for t < n_tokens, n < rows.
// W is `rows` rows of `cols` values of `type`, each row RowBytes(type, cols) bytes apart.
// x has row stride `cols`, y has row stride `rows`.
// Quantised weights: x is quantised to 8-bit blocks once per token and each output is an
// integer vec_dot (vec_dot.h), so the result carries x's 8-bit rounding (as llama.cpp's
// CPU path does) and does not depend on the batch size (decode equals prefill).
// F16/BF16 weights are widened to F32 in registers (exact) and dotted with x in float;
// F32 rows are dotted directly. All paths split rows into TBB tasks of 16-32 KiB.
void MatMul(GgmlType type, const void* w, int64_t rows, int64_t cols, const float* x,
            int64_t n_tokens, float* y);

// One product of a MatMulMany batch: y[t][n] = sum_k W[n][k] * x[r(t)][k] for
// t < n_tokens, n < rows, where r(t) = x_rows[t] (x_rows null: r(t) = t). W, x and y are
// laid out as for MatMul; the row indirection lets the experts of a MoE layer read their
// tokens straight from the layer's input instead of a gathered copy.
struct MatMulTask {
  GgmlType type = GgmlType::kF32;
  const void* w = nullptr;
  int64_t rows = 0, cols = 0;
  const float* x = nullptr;
  const int32_t* x_rows = nullptr;
  int64_t n_tokens = 0;
  float* y = nullptr;
};

// Runs every task in one TBB parallel region over (task, block of rows), so that many
// small products (the active experts of a layer) cost one fork/join instead of one each.
// Each output is computed exactly as MatMul computes it (same activation rounding, same
// dot), so the results equal one MatMul per task bit for bit. Activation rows read by
// several tasks with the same x pointer, width and activation type (a layer's gate and up
// products) are quantised once. REQUIRES: no task's y overlaps any task's x or y.
void MatMulMany(std::span<const MatMulTask> tasks);

// MatMul's integer path with the vec_dot kernels of `level` (benchmarks and tests compare
// levels with it). Returns false, touching nothing, when `type` has no integer dot or
// cols is not a multiple of its activation block. REQUIRES: CpuSupports(level).
bool MatMulQuantizedActivations(GgmlType type, IsaLevel level, const void* w, int64_t rows,
                                int64_t cols, const float* x, int64_t n_tokens, float* y);

// out = x / sqrt(mean(x^2) + eps) * w (w may be null: no scale). out may alias x.
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out);

// Rotates the first n_rot dims of each of n_heads heads (head_dim apart) by position
// `pos`. neox=false pairs (2i, 2i+1) (llama); neox=true pairs (i, i + n_rot/2).
void Rope(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int64_t pos, float freq_base,
          bool neox);

// In-place softmax over n values (max-subtracted).
void Softmax(float* x, int64_t n);

// gate[i] = silu(gate[i]) * up[i].
void SwiGlu(float* gate, const float* up, int64_t n);

// y[i] += a * x[i]
void Axpy(float a, const float* x, float* y, int64_t n);

float Dot(const float* a, const float* b, int64_t n);

}  // namespace moex::kcpu

#endif  // MOEX_KERNELS_CPU_OPS_H_
