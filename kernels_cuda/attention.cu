// Causal GQA attention over the device KV layout of cuda_ops.h (KvLayout), and the KV
// store that writes rows into it.
//
// Both attention kernels give each lane of a warp the head dims lane, lane + 32, ...
// (head_dim / 32 of them, at most 8): a Q8_0 or Q4_1 block is then one value per lane,
// read with neighbouring lanes on neighbouring bytes, and the running output stays in
// registers. Softmax is the online (streaming) form: a running max m, a running sum l and
// the output rescaled by exp(m_old - m_new) whenever the max grows, which is exact in
// real arithmetic and differs from kcpu::CausalAttention's two-pass softmax only in F32
// rounding.
#include <cuda_runtime.h>

#include <string>

#include "kernels_cuda/cuda_common.cuh"
#include "kernels_cuda/cuda_ops.h"

namespace moex::kcuda {
namespace {

constexpr int kMaxDimsPerLane = 8;  // head_dim <= 256

// Value at dim d of a KV row.
template <GgmlType T>
__device__ __forceinline__ float KvValue(const uint8_t* row, int d) {
  if constexpr (T == GgmlType::kF32) {
    return reinterpret_cast<const float*>(row)[d];
  } else if constexpr (T == GgmlType::kF16) {
    return Half(reinterpret_cast<const uint16_t*>(row)[d]);
  } else if constexpr (T == GgmlType::kBF16) {
    return Bf16(reinterpret_cast<const uint16_t*>(row)[d]);
  } else if constexpr (T == GgmlType::kQ8_0) {
    const uint8_t* b = row + (d >> 5) * sizeof(blk::BlockQ8_0);
    return static_cast<float>(reinterpret_cast<const int8_t*>(b + 2)[d & 31]) * Half(Ld16(b));
  } else {  // Q4_1: byte l % 16 of the block, low nibble for l < 16
    const uint8_t* b = row + (d >> 5) * sizeof(blk::BlockQ4_1);
    const int l = d & 31;
    return static_cast<float>((b[4 + (l & 15)] >> (4 * (l >> 4))) & 0x0F) * Half(Ld16(b)) +
           Half(Ld16(b + 2));
  }
}

#define MOEX_DISPATCH_KV(type, T, ...)              \
  switch (type) {                                   \
    MOEX_CASE_TYPE(GgmlType::kF32, T, __VA_ARGS__)  \
    MOEX_CASE_TYPE(GgmlType::kF16, T, __VA_ARGS__)  \
    MOEX_CASE_TYPE(GgmlType::kBF16, T, __VA_ARGS__) \
    MOEX_CASE_TYPE(GgmlType::kQ8_0, T, __VA_ARGS__) \
    MOEX_CASE_TYPE(GgmlType::kQ4_1, T, __VA_ARGS__) \
    default:                                        \
      break;                                        \
  }

struct AttnParams {
  const uint8_t* k = nullptr;
  const uint8_t* v = nullptr;
  int64_t row_bytes = 0, capacity = 0;
  int n_head = 0, group = 0, head_dim = 0;
  const float* q = nullptr;
  int64_t n_tokens = 0, pos0 = 0;
  float scale = 1.0f;
  float* out = nullptr;
  // decode only: partial results per (token, head, split)
  int n_splits = 0, chunk = 0;
  float* part_ml = nullptr;   // [t][h][split][2]: running max and sum
  float* part_acc = nullptr;  // [t][h][split][head_dim]: unnormalised output
};

// ---- decode: flash-decoding ------------------------------------------------------------------

constexpr int kDecodeWarps = 4;

// Block (split s, head h, token t): the rows of chunk s that token t sees, spread over
// the warps (row j to warp j % 4), each warp with its own online softmax; the warps'
// states are merged in shared memory and written as the split's partial result.
template <GgmlType T>
__global__ void __launch_bounds__(kDecodeWarps * 32) DecodeKernel(AttnParams p) {
  __shared__ float sm_ml[kDecodeWarps][2];
  __shared__ float sm_acc[kDecodeWarps][kMaxDimsPerLane * 32];
  const int s = blockIdx.x, h = blockIdx.y;
  const int64_t t = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int ni = p.head_dim / 32;
  const int64_t n_ctx = p.pos0 + t + 1;
  const int64_t j_begin = static_cast<int64_t>(s) * p.chunk;
  const int64_t j_end = min(n_ctx, j_begin + p.chunk);
  const int kvh = h / p.group;
  const float* qh = p.q + (t * p.n_head + h) * p.head_dim;
  float q[kMaxDimsPerLane], acc[kMaxDimsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxDimsPerLane; ++i) {
    q[i] = i < ni ? qh[lane + 32 * i] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const uint8_t* kb = p.k + kvh * p.capacity * p.row_bytes;
  const uint8_t* vb = p.v + kvh * p.capacity * p.row_bytes;
  for (int64_t j = j_begin + warp; j < j_end; j += kDecodeWarps) {
    const uint8_t* kr = kb + j * p.row_bytes;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      if (i < ni) dot = fmaf(q[i], KvValue<T>(kr, lane + 32 * i), dot);
    }
    const float score = WarpSum(dot) * p.scale;
    const float m_new = fmaxf(m, score);
    const float corr = expf(m - m_new), w = expf(score - m_new);
    l = l * corr + w;
    const uint8_t* vr = vb + j * p.row_bytes;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      if (i < ni) acc[i] = acc[i] * corr + w * KvValue<T>(vr, lane + 32 * i);
    }
    m = m_new;
  }
  if (lane == 0) {
    sm_ml[warp][0] = m;
    sm_ml[warp][1] = l;
  }
#pragma unroll
  for (int i = 0; i < kMaxDimsPerLane; ++i) {
    if (i < ni) sm_acc[warp][lane + 32 * i] = acc[i];
  }
  __syncthreads();
  float mx = -INFINITY;
#pragma unroll
  for (int w = 0; w < kDecodeWarps; ++w) mx = fmaxf(mx, sm_ml[w][0]);
  const int64_t part = (t * p.n_head + h) * p.n_splits + s;
  if (threadIdx.x == 0) {
    float lsum = 0.0f;
    if (mx != -INFINITY) {
      for (int w = 0; w < kDecodeWarps; ++w) lsum += sm_ml[w][1] * expf(sm_ml[w][0] - mx);
    }
    p.part_ml[2 * part] = mx;
    p.part_ml[2 * part + 1] = lsum;
  }
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float a = 0.0f;
    if (mx != -INFINITY) {
      for (int w = 0; w < kDecodeWarps; ++w) a += sm_acc[w][d] * expf(sm_ml[w][0] - mx);
    }
    p.part_acc[part * p.head_dim + d] = a;
  }
}

// Block (head h, token t): merges the splits' partial softmaxes (empty splits carry
// m = -inf, l = 0 and drop out) and normalises.
__global__ void DecodeReduceKernel(AttnParams p) {
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  const int64_t base = (t * p.n_head + h) * p.n_splits;
  float mx = -INFINITY;
  for (int s = 0; s < p.n_splits; ++s) mx = fmaxf(mx, p.part_ml[2 * (base + s)]);
  float lsum = 0.0f;
  for (int s = 0; s < p.n_splits; ++s) {
    const float ms = p.part_ml[2 * (base + s)];
    if (ms != -INFINITY) lsum += p.part_ml[2 * (base + s) + 1] * expf(ms - mx);
  }
  const float inv = 1.0f / lsum;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < p.n_splits; ++s) {
      const float ms = p.part_ml[2 * (base + s)];
      if (ms != -INFINITY) a += p.part_acc[(base + s) * p.head_dim + d] * expf(ms - mx);
    }
    p.out[(t * p.n_head + h) * p.head_dim + d] = a * inv;
  }
}

// ---- prefill: tiled, causal -------------------------------------------------------------------

constexpr int kPrefillWarps = 4;
constexpr int kQueriesPerWarp = 4;
constexpr int kPrefillQueries = kPrefillWarps * kQueriesPerWarp;  // 16 per block
constexpr int kKvTile = 32;                                       // one key per lane

int64_t PrefillSmemBytes(int head_dim) {
  return static_cast<int64_t>(sizeof(float)) *
         (kPrefillQueries * head_dim + kKvTile * (head_dim + 1) + kKvTile * head_dim);
}

// Block (query tile, head h): per tile of 32 KV rows, the block dequantises K and V once
// into shared memory (shared by its 16 queries); lane j scores key j against a query,
// the warp takes the tile's max and sum with shuffles, then every lane adds p_j * v_j to
// its dims. Keys after a query's position are masked (causal).
template <GgmlType T>
__global__ void __launch_bounds__(kPrefillWarps * 32) PrefillKernel(AttnParams p) {
  extern __shared__ float smem[];
  const int D = p.head_dim, ni = D / 32;
  float* qs = smem;                      // [16][D]
  float* ks = qs + kPrefillQueries * D;  // [32][D + 1]: +1 keeps lane j's row on bank j
  float* vs = ks + kKvTile * (D + 1);    // [32][D]
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kPrefillQueries;
  const int h = blockIdx.y, kvh = h / p.group;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int64_t t_last = min(p.n_tokens, t0 + kPrefillQueries) - 1;
  for (int idx = threadIdx.x; idx < kPrefillQueries * D; idx += blockDim.x) {
    const int64_t t = t0 + idx / D;
    qs[idx] = t <= t_last ? p.q[(t * p.n_head + h) * D + idx % D] : 0.0f;
  }
  float m[kQueriesPerWarp], l[kQueriesPerWarp], acc[kQueriesPerWarp][kMaxDimsPerLane];
#pragma unroll
  for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
    m[qi] = -INFINITY;
    l[qi] = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; ++i) acc[qi][i] = 0.0f;
  }
  const uint8_t* kb = p.k + kvh * p.capacity * p.row_bytes;
  const uint8_t* vb = p.v + kvh * p.capacity * p.row_bytes;
  const int64_t last_row = p.pos0 + t_last;
  for (int64_t j0 = 0; j0 <= last_row; j0 += kKvTile) {
    __syncthreads();  // the previous tile is consumed (and qs is written)
    for (int idx = threadIdx.x; idx < kKvTile * D; idx += blockDim.x) {
      const int r = idx / D, d = idx % D;
      const int64_t j = j0 + r;
      const bool in = j <= last_row;
      ks[r * (D + 1) + d] = in ? KvValue<T>(kb + j * p.row_bytes, d) : 0.0f;
      vs[r * D + d] = in ? KvValue<T>(vb + j * p.row_bytes, d) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
      const int lq = warp * kQueriesPerWarp + qi;
      const int64_t t = t0 + lq;
      if (t > t_last) break;
      const int64_t j = j0 + lane;
      float score = -INFINITY;
      if (j <= p.pos0 + t) {
        const float* qr = qs + lq * D;
        const float* kr = ks + lane * (D + 1);
        float dot = 0.0f;
        for (int d = 0; d < D; ++d) dot = fmaf(qr[d], kr[d], dot);
        score = dot * p.scale;
      }
      const float m_new = fmaxf(m[qi], WarpMax(score));
      if (m_new == -INFINITY) continue;     // nothing visible yet (cannot happen at tile 0)
      const float w = expf(score - m_new);  // 0 for masked keys
      const float corr = expf(m[qi] - m_new);
      l[qi] = l[qi] * corr + WarpSum(w);
      m[qi] = m_new;
#pragma unroll
      for (int i = 0; i < kMaxDimsPerLane; ++i) acc[qi][i] *= corr;
      for (int jj = 0; jj < kKvTile; ++jj) {
        const float wj = __shfl_sync(0xffffffffu, w, jj);
        const float* vr = vs + jj * D;
#pragma unroll
        for (int i = 0; i < kMaxDimsPerLane; ++i) {
          if (i < ni) acc[qi][i] = fmaf(wj, vr[lane + 32 * i], acc[qi][i]);
        }
      }
    }
  }
#pragma unroll
  for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
    const int64_t t = t0 + warp * kQueriesPerWarp + qi;
    if (t > t_last) break;
    const float inv = 1.0f / l[qi];
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      if (i < ni) p.out[(t * p.n_head + h) * D + lane + 32 * i] = acc[qi][i] * inv;
    }
  }
}

// ---- KV store ---------------------------------------------------------------------------------

// Block (token t, KV head h, 0 = K / 1 = V); one warp per 32 values. Quantised rows follow
// kernels_cpu/quantize.cc: Q8_0 d = amax / 127, q = round(x / d); Q4_1 d = (max - min) / 15,
// m = min, q = min(15, (int)((x - m) / d + 0.5)).
template <GgmlType T>
__global__ void KvStoreKernel(const float* k, const float* v, int64_t n_head_kv, int head_dim,
                              int64_t capacity, int64_t row_bytes, int64_t pos0, uint8_t* kc,
                              uint8_t* vc) {
  const int64_t t = blockIdx.x;
  const int64_t h = blockIdx.y;
  const bool is_v = blockIdx.z == 1;
  const float* src = (is_v ? v : k) + (t * n_head_kv + h) * head_dim;
  uint8_t* row = (is_v ? vc : kc) + (h * capacity + pos0 + t) * row_bytes;
  const int lane = threadIdx.x & 31;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    const float x = src[d];
    if constexpr (T == GgmlType::kF32) {
      reinterpret_cast<float*>(row)[d] = x;
    } else if constexpr (T == GgmlType::kF16) {
      reinterpret_cast<uint16_t*>(row)[d] = __half_as_ushort(__float2half_rn(x));
    } else if constexpr (T == GgmlType::kBF16) {
      // Round to nearest even, as kcpu::FloatToBf16 (inputs are finite).
      const uint32_t u = __float_as_uint(x);
      reinterpret_cast<uint16_t*>(row)[d] =
          static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
    } else if constexpr (T == GgmlType::kQ8_0) {
      uint8_t* b = row + (d >> 5) * sizeof(blk::BlockQ8_0);
      const float amax = WarpMax(fabsf(x));
      const float dd = amax / 127.0f;
      const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
      reinterpret_cast<int8_t*>(b + 2)[lane] = static_cast<int8_t>(roundf(x * id));
      if (lane == 0) *reinterpret_cast<uint16_t*>(b) = __half_as_ushort(__float2half_rn(dd));
    } else {  // Q4_1
      uint8_t* b = row + (d >> 5) * sizeof(blk::BlockQ4_1);
      const float lo = -WarpMax(-x), hi = WarpMax(x);
      const float dd = (hi - lo) / 15.0f;
      const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
      const int q = min(15, static_cast<int>((x - lo) * id + 0.5f));
      const int q_hi = __shfl_down_sync(0xffffffffu, q, 16);
      if (lane < 16) b[4 + lane] = static_cast<uint8_t>(q | (q_hi << 4));
      if (lane == 0) {
        reinterpret_cast<uint16_t*>(b)[0] = __half_as_ushort(__float2half_rn(dd));
        reinterpret_cast<uint16_t*>(b)[1] = __half_as_ushort(__float2half_rn(lo));
      }
    }
  }
}

// A chunk of 256 rows per split keeps a split's four warps busy for 64 rows each, and
// gives a 4K context 16 splits per head: with 32 heads, 512 blocks fill any current GPU.
constexpr int64_t kDecodeChunk = 256;

bool UsesDecode(AttentionPath path, int64_t n_tokens) {
  return path == AttentionPath::kDecode || (path == AttentionPath::kAuto && n_tokens <= 4);
}

// The split results: a running max and sum, and head_dim partial outputs, per (token,
// head, split).
int64_t DecodeWorkspaceBytes(int64_t head_dim, int64_t n_tokens, int64_t pos0, int64_t n_head) {
  const int64_t n_splits = (pos0 + n_tokens + kDecodeChunk - 1) / kDecodeChunk;
  return n_tokens * n_head * n_splits * (2 + head_dim) * static_cast<int64_t>(sizeof(float));
}

std::string KvShape(const char* kernel, const KvLayout& kv, int64_t n_tokens, int64_t pos0) {
  return std::string(kernel) + " (" + TypeName(kv.type) +
         ", n_head_kv=" + std::to_string(kv.n_head_kv) +
         ", head_dim=" + std::to_string(kv.head_dim) + ", capacity=" + std::to_string(kv.capacity) +
         ", n_tokens=" + std::to_string(n_tokens) + ", pos0=" + std::to_string(pos0) + ")";
}

std::string CheckKv(const std::string& what, const KvLayout& kv, int64_t n_tokens, int64_t pos0) {
  if (!IsSupportedKvType(kv.type)) return what + ": unsupported KV type";
  if (kv.n_head_kv <= 0 || kv.head_dim <= 0 || kv.head_dim % 32 != 0 ||
      kv.head_dim > 32 * kMaxDimsPerLane || kv.capacity <= 0) {
    return what + ": bad KV layout (head_dim must be a multiple of 32 and <= 256)";
  }
  if (n_tokens < 0 || pos0 < 0 || pos0 + n_tokens > kv.capacity || n_tokens > 65535) {
    return what + ": positions beyond the KV capacity (or more than 65535 tokens)";
  }
  return "";
}

}  // namespace

bool IsSupportedKvType(GgmlType type) {
  return type == GgmlType::kF32 || type == GgmlType::kF16 || type == GgmlType::kBF16 ||
         type == GgmlType::kQ8_0 || type == GgmlType::kQ4_1;
}

int64_t KvBufferBytes(const KvLayout& kv) {
  return kv.n_head_kv * kv.capacity * HostRowBytes(kv.type, kv.head_dim);
}

std::string KvStore(const KvLayout& kv, const float* k, const float* v, int64_t n_tokens,
                    int64_t pos0, void* k_cache, void* v_cache, void* stream) {
  const std::string what = KvShape("KvStoreKernel", kv, n_tokens, pos0);
  if (std::string err = CheckKv(what, kv, n_tokens, pos0); !err.empty()) return err;
  if (n_tokens == 0) return "";
  if (!k || !v || !k_cache || !v_cache) return what + ": null pointer";
  const dim3 grid(static_cast<unsigned>(n_tokens), static_cast<unsigned>(kv.n_head_kv), 2);
  // One thread per dim: whole warps per 32-value block, as the quantised stores need.
  const int threads = static_cast<int>(kv.head_dim);
  const int64_t row_bytes = HostRowBytes(kv.type, kv.head_dim);
  auto* kc = static_cast<uint8_t*>(k_cache);
  auto* vc = static_cast<uint8_t*>(v_cache);
  MOEX_DISPATCH_KV(
      kv.type, T,
      KvStoreKernel<T><<<grid, threads, 0, static_cast<cudaStream_t>(stream)>>>(
          k, v, kv.n_head_kv, static_cast<int>(kv.head_dim), kv.capacity, row_bytes, pos0, kc, vc));
  return CheckLaunch(what);
}

std::string Attention(const KvLayout& kv, const void* k_cache, const void* v_cache, const float* q,
                      int64_t n_tokens, int64_t pos0, int64_t n_head, float scale, float* out,
                      void* stream, AttentionPath path, void* workspace, int64_t workspace_bytes) {
  const bool decode = UsesDecode(path, n_tokens);
  std::string what = KvShape(decode ? "DecodeKernel" : "PrefillKernel", kv, n_tokens, pos0) +
                     " n_head=" + std::to_string(n_head);
  if (std::string err = CheckKv(what, kv, n_tokens, pos0); !err.empty()) return err;
  if (n_head <= 0 || n_head % kv.n_head_kv != 0 || n_head > 65535) {
    return what + ": n_head must be a positive multiple of n_head_kv";
  }
  if (n_tokens == 0) return "";
  if (!k_cache || !v_cache || !q || !out) return what + ": null pointer";
  auto* s = static_cast<cudaStream_t>(stream);
  AttnParams p;
  p.k = static_cast<const uint8_t*>(k_cache);
  p.v = static_cast<const uint8_t*>(v_cache);
  p.row_bytes = HostRowBytes(kv.type, kv.head_dim);
  p.capacity = kv.capacity;
  p.n_head = static_cast<int>(n_head);
  p.group = static_cast<int>(n_head / kv.n_head_kv);
  p.head_dim = static_cast<int>(kv.head_dim);
  p.q = q;
  p.n_tokens = n_tokens;
  p.pos0 = pos0;
  p.scale = scale;
  p.out = out;
  if (!decode) {
    const int64_t smem = PrefillSmemBytes(p.head_dim);
    const dim3 grid(static_cast<unsigned>((n_tokens + kPrefillQueries - 1) / kPrefillQueries),
                    static_cast<unsigned>(n_head));
    cudaError_t e = cudaSuccess;
    // Above 48 KiB (head_dim > 128) a kernel must opt in to its dynamic shared memory.
    MOEX_DISPATCH_KV(
        kv.type, T,
        e = cudaFuncSetAttribute(PrefillKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(smem));
        if (e == cudaSuccess) PrefillKernel<T><<<grid, kPrefillWarps * 32, smem, s>>>(p));
    if (e != cudaSuccess) return CudaError(e, what + ": cudaFuncSetAttribute");
    return CheckLaunch(what);
  }
  p.chunk = static_cast<int>(kDecodeChunk);
  p.n_splits = static_cast<int>((pos0 + n_tokens + kDecodeChunk - 1) / kDecodeChunk);
  const int64_t parts = n_tokens * n_head * p.n_splits;
  const int64_t need = DecodeWorkspaceBytes(kv.head_dim, n_tokens, pos0, n_head);
  void* scratch = workspace;
  cudaError_t e = cudaSuccess;
  if (scratch == nullptr) {
    e = cudaMallocAsync(&scratch, static_cast<size_t>(need), s);
    if (e != cudaSuccess) return CudaError(e, what + ": cudaMallocAsync of the split results");
  } else if (workspace_bytes < need) {
    return what + ": workspace of " + std::to_string(workspace_bytes) + " bytes, " +
           std::to_string(need) + " needed";
  }
  p.part_ml = static_cast<float*>(scratch);
  p.part_acc = p.part_ml + 2 * parts;
  const dim3 grid(static_cast<unsigned>(p.n_splits), static_cast<unsigned>(n_head),
                  static_cast<unsigned>(n_tokens));
  MOEX_DISPATCH_KV(kv.type, T, DecodeKernel<T><<<grid, kDecodeWarps * 32, 0, s>>>(p));
  std::string err = CheckLaunch(what);
  if (err.empty()) {
    const dim3 rgrid(static_cast<unsigned>(n_head), static_cast<unsigned>(n_tokens));
    DecodeReduceKernel<<<rgrid, 128, 0, s>>>(p);
    err = CheckLaunch(what + ": DecodeReduceKernel");
  }
  if (workspace == nullptr) {
    e = cudaFreeAsync(scratch, s);
    if (err.empty() && e != cudaSuccess) err = CudaError(e, what + ": cudaFreeAsync");
  }
  return err;
}

int64_t AttentionWorkspaceBytes(const KvLayout& kv, int64_t n_tokens, int64_t pos0, int64_t n_head,
                                AttentionPath path) {
  if (!UsesDecode(path, n_tokens)) return 0;
  return DecodeWorkspaceBytes(kv.head_dim, n_tokens, pos0, n_head);
}

}  // namespace moex::kcuda
