// Reference CPU operators of the forward pass: plain pointer/shape interfaces, F32
// activations, weights in any GGUF block format read in place.
//
// These are the clear, correct versions the rest of moex is checked against; they are
// parallel (TBB) and let the compiler vectorise, but do not hand-tune. The fast AVX-512
// kernels (issue "fast CPU kernels") are tested against them.
// Thread-safety: pure functions; MatMul parallelises internally.
#ifndef MOEX_KERNELS_CPU_OPS_H_
#define MOEX_KERNELS_CPU_OPS_H_

#include <cstdint>

#include "kernels_cpu/quant.h"

namespace moex::kcpu {

// y[t][n] = sum_k W[n][k] * x[t][k] for t < n_tokens, n < rows.
// W is `rows` rows of `cols` values of `type`, each row RowBytes(type, cols) bytes apart.
// x has row stride `cols`, y has row stride `rows`.
void MatMul(GgmlType type, const void* w, int64_t rows, int64_t cols, const float* x,
            int64_t n_tokens, float* y);

// out = x / sqrt(mean(x^2) + eps) * w (w may be null: no scale). out may alias x.
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out);

// Rotates the first n_rot dims of each of n_heads heads (head_dim apart) by position
// `pos`. neox=false pairs (2i, 2i+1) (llama); neox=true pairs (i, i + n_rot/2).
void Rope(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int64_t pos,
          float freq_base, bool neox);

// In-place softmax over n values (max-subtracted).
void Softmax(float* x, int64_t n);

// gate[i] = silu(gate[i]) * up[i].
void SwiGlu(float* gate, const float* up, int64_t n);

// y[i] += a * x[i]
void Axpy(float a, const float* x, float* y, int64_t n);

float Dot(const float* a, const float* b, int64_t n);

}  // namespace moex::kcpu

#endif  // MOEX_KERNELS_CPU_OPS_H_
