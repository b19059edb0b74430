// The small operators of the forward pass (RMSNorm, RoPE, router, SwiGLU, the weighted
// expert combine) and the error helpers shared by the kernel files.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>

#include "kernels_cuda/cuda_common.cuh"
#include "kernels_cuda/cuda_ops.h"

namespace moex::kcuda {

const char* TypeName(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return "f32";
    case GgmlType::kF16:
      return "f16";
    case GgmlType::kBF16:
      return "bf16";
    case GgmlType::kQ8_0:
      return "q8_0";
    case GgmlType::kQ4_0:
      return "q4_0";
    case GgmlType::kQ4_1:
      return "q4_1";
    case GgmlType::kQ4_K:
      return "q4_K";
    case GgmlType::kQ5_K:
      return "q5_K";
    case GgmlType::kQ6_K:
      return "q6_K";
    default:
      return "unsupported type";
  }
}

std::string CudaError(cudaError_t e, const std::string& what) {
  return what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

std::string CheckLaunch(const std::string& what) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : CudaError(e, what + " launch");
}

namespace {

std::string Dims(const char* kernel, std::initializer_list<int64_t> dims) {
  std::string s = std::string(kernel) + " (";
  bool first = true;
  for (int64_t d : dims) {
    s += (first ? "" : "x") + std::to_string(d);
    first = false;
  }
  return s + ")";
}

constexpr int kNormThreads = 256;

// One block per row: the sum of squares is reduced across the block in F32 (a tree, so
// its rounding error grows with log n, not n), then the row is scaled as kcpu::RmsNorm.
__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(const float* x, const float* w, int64_t n, float eps, float* out) {
  __shared__ float part[kNormThreads / 32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  float* o = out + static_cast<int64_t>(blockIdx.x) * n;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kNormThreads) ss = fmaf(xr[i], xr[i], ss);
  ss = WarpSum(ss);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kNormThreads / 32; ++i) total += part[i];
  const float scale = 1.0f / sqrtf(total / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += kNormThreads) {
    o[i] = xr[i] * scale * (w ? w[i] : 1.0f);
  }
}

constexpr int kMaxRopeHalf = 128;
struct RopeFreqs {
  float inv_freq[kMaxRopeHalf];  // base^(-2i/n_rot), computed on the host as kcpu::Rope does
};

__global__ void RopeKernel(float* x, int64_t n_heads, int64_t head_dim, int64_t half, int64_t pos0,
                           bool neox, RopeFreqs f) {
  const int64_t t = blockIdx.x;
  const float pos = static_cast<float>(pos0 + t);
  for (int64_t q = threadIdx.x; q < n_heads * half; q += blockDim.x) {
    const int64_t h = q / half, i = q % half;
    float* v = x + (t * n_heads + h) * head_dim;
    const float theta = pos * f.inv_freq[i];
    float s, c;
    sincosf(theta, &s, &c);
    const int64_t a = neox ? i : 2 * i;
    const int64_t b = neox ? i + half : 2 * i + 1;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
  }
}

constexpr int kRouterMaxPerLane = 32;  // n_expert <= 1024

// One warp per token: each lane keeps experts lane, lane + 32, ... in registers; top-k is
// k rounds of a warp arg-max (ties to the lower id); lane j keeps the j-th pick.
__global__ void RouterKernel(const float* logits, int64_t n_tokens, int n_expert, int top_k,
                             bool norm_topk, float* probs, int32_t* experts, float* weights) {
  const int lane = threadIdx.x & 31;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (t >= n_tokens) return;
  const float* lr = logits + t * n_expert;
  float p[kRouterMaxPerLane];
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kRouterMaxPerLane; ++i) {
    const int e = lane + 32 * i;
    p[i] = e < n_expert ? lr[e] : -INFINITY;
    mx = fmaxf(mx, p[i]);
  }
  mx = WarpMax(mx);
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kRouterMaxPerLane; ++i) {
    const int e = lane + 32 * i;
    p[i] = e < n_expert ? expf(p[i] - mx) : 0.0f;
    sum += p[i];
  }
  const float inv = 1.0f / WarpSum(sum);
#pragma unroll
  for (int i = 0; i < kRouterMaxPerLane; ++i) {
    const int e = lane + 32 * i;
    if (e < n_expert) {
      p[i] *= inv;
      if (probs) probs[t * n_expert + e] = p[i];
    } else {
      p[i] = -1.0f;  // never picked: probabilities are >= 0
    }
  }
  int my_pick = -1;
  float my_prob = 0.0f, picked_sum = 0.0f;
  for (int j = 0; j < top_k; ++j) {
    // Lane-local best: ids grow with i, so strict > keeps the lowest id among equals.
    float best = -2.0f;
    int best_id = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < kRouterMaxPerLane; ++i) {
      if (p[i] > best) {
        best = p[i];
        best_id = lane + 32 * i;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oid = __shfl_xor_sync(0xffffffffu, best_id, o);
      if (ob > best || (ob == best && oid < best_id)) {
        best = ob;
        best_id = oid;
      }
    }
    if (best_id % 32 == lane) {
#pragma unroll
      for (int i = 0; i < kRouterMaxPerLane; ++i) {
        if (lane + 32 * i == best_id) p[i] = -1.0f;
      }
    }
    if (lane == j) {
      my_pick = best_id;
      my_prob = best;
    }
    picked_sum += best;  // in pick order, as experts/moe_layer.cc sums
  }
  if (lane < top_k) {
    experts[t * top_k + lane] = my_pick;
    weights[t * top_k + lane] = norm_topk ? my_prob / picked_sum : my_prob;
  }
}

__global__ void SwiGluKernel(float* gate, const float* up, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void AddRowsKernel(float* y, const float* x, int64_t n, int64_t x_stride,
                              const float* gate_logits) {
  const int64_t r = blockIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= n) return;
  // The CPU's expression (experts/moe_layer.cc): g = 1 / (1 + exp(-logit)), y += g * x.
  const float g = gate_logits ? 1.0f / (1.0f + expf(-gate_logits[r])) : 1.0f;
  y[r * n + c] += g * x[r * x_stride + c];
}

__global__ void CombineKernel(const float* y, const float* w, int64_t k, int64_t n, bool accumulate,
                              float* out) {
  const int64_t t = blockIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= n) return;
  float acc = accumulate ? out[t * n + c] : 0.0f;
  for (int64_t j = 0; j < k; ++j) acc += w[t * k + j] * y[(t * k + j) * n + c];
  out[t * n + c] = acc;
}

}  // namespace

std::string RmsNorm(const float* x, const float* w, int64_t n_rows, int64_t n, float eps,
                    float* out, void* stream) {
  const std::string what = Dims("RmsNormKernel", {n_rows, n});
  if (n_rows < 0 || n <= 0 || n_rows > 0x7fffffff) return what + ": bad shape";
  if (n_rows == 0) return "";
  if (!x || !out) return what + ": null pointer";
  RmsNormKernel<<<static_cast<unsigned>(n_rows), kNormThreads, 0,
                  static_cast<cudaStream_t>(stream)>>>(x, w, n, eps, out);
  return CheckLaunch(what);
}

std::string Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                 int64_t pos0, float freq_base, bool neox, void* stream) {
  const std::string what = Dims("RopeKernel", {n_tokens, n_heads, head_dim, n_rot});
  if (n_tokens < 0 || n_heads <= 0 || head_dim <= 0 || n_rot <= 0 || n_rot % 2 != 0 ||
      n_rot > head_dim || n_rot / 2 > kMaxRopeHalf || n_tokens > 0x7fffffff || pos0 < 0) {
    return what + ": bad shape (n_rot must be even, <= head_dim and <= 256)";
  }
  if (n_tokens == 0) return "";
  if (!x) return what + ": null pointer";
  RopeFreqs f;
  // kcpu::Rope's expression term by term, so theta = pos * inv_freq is the CPU's float.
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    f.inv_freq[i] = std::pow(freq_base, -2.0f * static_cast<float>(i) / n_rot);
  }
  RopeKernel<<<static_cast<unsigned>(n_tokens), 128, 0, static_cast<cudaStream_t>(stream)>>>(
      x, n_heads, head_dim, n_rot / 2, pos0, neox, f);
  return CheckLaunch(what);
}

std::string RouterTopK(const float* logits, int64_t n_tokens, int64_t n_expert, int64_t top_k,
                       bool norm_topk, float* probs, int32_t* experts, float* weights,
                       void* stream) {
  const std::string what = Dims("RouterKernel", {n_tokens, n_expert, top_k});
  if (n_tokens < 0 || n_expert <= 0 || n_expert > 32 * kRouterMaxPerLane || top_k <= 0 ||
      top_k > n_expert || top_k > 32 || n_tokens > 0x7fffffff) {
    return what + ": bad shape (n_expert <= 1024, 0 < top_k <= min(n_expert, 32))";
  }
  if (n_tokens == 0) return "";
  if (!logits || !experts || !weights) return what + ": null pointer";
  constexpr int kWarps = 4;
  RouterKernel<<<static_cast<unsigned>((n_tokens + kWarps - 1) / kWarps), kWarps * 32, 0,
                 static_cast<cudaStream_t>(stream)>>>(logits, n_tokens, static_cast<int>(n_expert),
                                                      static_cast<int>(top_k), norm_topk, probs,
                                                      experts, weights);
  return CheckLaunch(what);
}

std::string SwiGlu(float* gate, const float* up, int64_t n, void* stream) {
  const std::string what = Dims("SwiGluKernel", {n});
  if (n < 0) return what + ": bad shape";
  if (n == 0) return "";
  if (!gate || !up) return what + ": null pointer";
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 65535);
  SwiGluKernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(gate,
                                                                                             up, n);
  return CheckLaunch(what);
}

std::string CombineExperts(const float* y, const float* weights, int64_t n_tokens, int64_t k,
                           int64_t n, bool accumulate, float* out, void* stream) {
  const std::string what = Dims("CombineKernel", {n_tokens, k, n});
  if (n_tokens < 0 || k <= 0 || n <= 0 || n_tokens > 65535) {
    return what + ": bad shape (n_tokens <= 65535 per call)";
  }
  if (n_tokens == 0) return "";
  if (!y || !weights || !out) return what + ": null pointer";
  const dim3 grid(static_cast<unsigned>((n + 255) / 256), static_cast<unsigned>(n_tokens));
  CombineKernel<<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(y, weights, k, n, accumulate,
                                                                     out);
  return CheckLaunch(what);
}

std::string AddRows(float* y, const float* x, int64_t n_rows, int64_t n, int64_t x_stride,
                    const float* gate_logits, void* stream) {
  const std::string what = Dims("AddRowsKernel", {n_rows, n, x_stride});
  if (n_rows < 0 || n <= 0 || x_stride < 0 || n_rows > 65535) {
    return what + ": bad shape (n_rows <= 65535 per call)";
  }
  if (n_rows == 0) return "";
  if (!y || !x) return what + ": null pointer";
  const dim3 grid(static_cast<unsigned>((n + 255) / 256), static_cast<unsigned>(n_rows));
  AddRowsKernel<<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(y, x, n, x_stride,
                                                                     gate_logits);
  return CheckLaunch(what);
}

}  // namespace moex::kcuda
