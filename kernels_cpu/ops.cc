#include "kernels_cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels_cpu/vec_dot.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

namespace moex::kcpu {

float Dot(const float* a, const float* b, int64_t n) {
  // 64 partial sums: the compiler keeps them in four 16-wide (or eight 8-wide) vector
  // registers, so four independent FMA chains hide the FMA latency. One chain would run
  // at a quarter of the core's speed.
  constexpr int kLanes = 64;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  }
  return s + acc[0];
}

namespace {

// Rows per task so that a task streams about `bytes` of weights.
int64_t Grain(int64_t row_bytes, int64_t bytes) {
  return std::max<int64_t>(1, bytes / std::max<int64_t>(1, row_bytes));
}

// y = W x with x quantised once per token (Q8_K or Q8_0 blocks, see vec_dot.h): each
// output is one integer vec_dot over the weight row read in place. The activation error
// this adds (8-bit codes per 32 or 256 values) is what llama.cpp's CPU path has too.
void MatMulVecDot(VecDotFn dot, GgmlType act, const uint8_t* wb, int64_t row_bytes, int64_t rows,
                  int64_t cols, const float* x, int64_t n_tokens, float* y) {
  const int64_t x_bytes = RowBytes(GetTypeTraits(act), cols);
  // A per-thread buffer, grown once (no allocation per token) -- unless this thread is
  // already inside a MatMul whose workers read that buffer: a thread waiting in a
  // parallel_for may run other work of the arena (another session's delegated
  // evaluation), which calls MatMul again on the same thread. That nested call takes a
  // buffer of its own. (Found by TSan: docs/ROBUSTNESS.md.)
  thread_local std::vector<uint8_t> tls_xq;
  thread_local bool tls_busy = false;
  std::vector<uint8_t> own;
  const bool use_tls = !tls_busy;
  std::vector<uint8_t>& xq = use_tls ? tls_xq : own;
  if (xq.size() < static_cast<size_t>(n_tokens * x_bytes)) xq.resize(n_tokens * x_bytes);
  struct Release {
    bool active;
    ~Release() {
      if (active) tls_busy = false;
    }
  } release{use_tls};
  if (use_tls) tls_busy = true;
  for (int64_t t = 0; t < n_tokens; ++t) {
    QuantizeActivation(act, x + t * cols, xq.data() + t * x_bytes, cols);
  }
  const uint8_t* xqp = xq.data();
  // Tasks of about 32 KiB of weights: a decode step's expert matrices (~0.3-1 MB) still
  // split into a dozen or more tasks per core, while each task streams long enough for
  // the hardware prefetchers to run ahead. Each weight row is used for all tokens while
  // it is in L1.
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, rows, Grain(row_bytes, int64_t{32} << 10)),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t n = r.begin(); n < r.end(); ++n) {
                        const uint8_t* wr = wb + n * row_bytes;
                        for (int64_t t = 0; t < n_tokens; ++t) {
                          y[t * rows + n] = dot(wr, xqp + t * x_bytes, cols);
                        }
                      }
                    });
}

}  // namespace

bool MatMulQuantizedActivations(GgmlType type, IsaLevel level, const void* w, int64_t rows,
                                int64_t cols, const float* x, int64_t n_tokens, float* y) {
  const GgmlType act = VecDotActivationType(type);
  if (act == GgmlType::kF32 || cols % GetTypeTraits(act).block_elems != 0) return false;
  MatMulVecDot(GetVecDot(type, level), act, static_cast<const uint8_t*>(w),
               RowBytes(GetTypeTraits(type), cols), rows, cols, x, n_tokens, y);
  return true;
}

void MatMul(GgmlType type, const void* w, int64_t rows, int64_t cols, const float* x,
            int64_t n_tokens, float* y) {
  const TypeTraits& tt = GetTypeTraits(type);
  const int64_t row_bytes = RowBytes(tt, cols);
  const auto* wb = static_cast<const uint8_t*>(w);
  const GgmlType act = VecDotActivationType(type);
  // Quantised weights: the integer path for every batch size. Decode must give the same
  // logits as a prefill of the same tokens (tests/api), which holds only if a token's
  // outputs do not depend on the batch; and until prefill has a real GEMM, one vec_dot per
  // token is also 2-3x faster than dequantising the row and taking F32 dots (16 tokens,
  // BM_MatVec vs BM_MatVecLevel in bench/kernels_bench.cc).
  if (act != GgmlType::kF32 && cols % GetTypeTraits(act).block_elems == 0) {
    return MatMulVecDot(GetVecDot(type), act, wb, row_bytes, rows, cols, x, n_tokens, y);
  }
  // F16/BF16: widen the weights in registers and dot with x directly (every batch size,
  // so a token's outputs do not depend on its batch). No temporary row: this streams the
  // weights once, at the bandwidth, where dequantising to a row first ran at 40-60 %.
  if (const FloatDotFn fdot = GetFloatDot(type)) {
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, rows, Grain(row_bytes, int64_t{32} << 10)),
                      [&](const tbb::blocked_range<int64_t>& r) {
                        for (int64_t n = r.begin(); n < r.end(); ++n) {
                          const uint8_t* wr = wb + n * row_bytes;
                          for (int64_t t = 0; t < n_tokens; ++t) {
                            y[t * rows + n] = fdot(wr, x + t * cols, cols);
                          }
                        }
                      });
    return;
  }
  // F32 weights (and anything the paths above cannot take): dequantise each row to F32
  // once and reuse it for every token. Tasks of about 16 KiB of weights.
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, rows, Grain(row_bytes, int64_t{16} << 10)),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      std::vector<float> row(cols);
                      for (int64_t n = r.begin(); n < r.end(); ++n) {
                        const float* wr;
                        if (type == GgmlType::kF32) {
                          wr = reinterpret_cast<const float*>(wb + n * row_bytes);
                        } else {
                          DequantizeRow(type, wb + n * row_bytes, row.data(), cols);
                          wr = row.data();
                        }
                        for (int64_t t = 0; t < n_tokens; ++t) {
                          y[t * rows + n] = Dot(wr, x + t * cols, cols);
                        }
                      }
                    });
}

void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

void Rope(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int64_t pos, float freq_base,
          bool neox) {
  // theta_i = pos * base^(-2i/n_rot), as in RoFormer (Su et al. 2021) and llama.cpp.
  const int64_t half = n_rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float theta =
        static_cast<float>(pos) * std::pow(freq_base, -2.0f * static_cast<float>(i) / n_rot);
    const float c = std::cos(theta), s = std::sin(theta);
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + h * head_dim;
      const int64_t a = neox ? i : 2 * i;
      const int64_t b = neox ? i + half : 2 * i + 1;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

void Softmax(float* x, int64_t n) {
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void SwiGlu(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void Axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace moex::kcpu
