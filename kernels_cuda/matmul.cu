// Quantised matrix products (warp-per-row GEMV for decode, the tiled kernel for larger
// batches) and the embedding-row lookup.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "kernels_cuda/cuda_common.cuh"
#include "kernels_cuda/cuda_ops.h"
#include "kernels_cuda/gemm_tile.cuh"

namespace moex::kcuda {
namespace {

constexpr int kGemvWarps = 4;  // rows per block: small blocks keep all SMs busy on 768 rows

// x[8c .. 8c+7] of a row of `cols` values, zero beyond cols.
__device__ __forceinline__ void LoadX8(const float* xr, int64_t c, int64_t cols, float* o) {
  if (8 * c + 8 <= cols) {
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = __ldg(xr + 8 * c + i);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = 8 * c + i < cols ? __ldg(xr + 8 * c + i) : 0.0f;
  }
}

// Which matrix of a stack, and which activation row, each blockIdx.y of a GEMV launch
// reads (MatMulSelected); ids == nullptr: the plain product (one matrix, grid.y == 1).
struct GemvSelect {
  const int32_t* ids = nullptr;  // device [grid.y]: the expert of each selection
  int64_t n_expert = 0;
  int64_t expert_bytes = 0;
  int64_t x_group = 1;   // selection i reads activation row i / x_group ...
  int64_t x_stride = 0;  // ... which starts x_stride floats after the previous one
};

// Adds 8 weights times 8 activations of each token to the token's accumulator.
__device__ __forceinline__ void Dot8(const float* v, const float* x, int64_t c, int64_t cols,
                                     int n_tokens, float* acc) {
#pragma unroll
  for (int t = 0; t < kGemvMaxTokens; ++t) {
    if (t >= n_tokens) break;
    float xv[8];
    LoadX8(x + t * cols, c, cols, xv);
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[t] = fmaf(v[i], xv[i], acc[t]);
  }
}

// Chunks each lane decodes before it multiplies any (bench/gpu_check.sh compares builds
// with -DMOEX_GEMV_UNROLL=1, 2, 4 on the GPU machine).
#ifndef MOEX_GEMV_UNROLL
#define MOEX_GEMV_UNROLL 4
#endif
constexpr int kGemvUnroll = MOEX_GEMV_UNROLL;

// One warp per weight row: lane l takes chunks l, l + 32, ... (neighbouring lanes read
// neighbouring bytes of the row), dequantises each in registers, dots it with every
// token's x, and the warp sums its lanes at the end. The weights are read exactly once,
// which is what bounds decode. Each lane decodes kGemvUnroll chunks before it multiplies
// any, so that as many loads are in flight (a warp per row has little other work to hide
// the memory latency with); the load width (kWide) is a template argument so that no
// branch stands between those loads. The additions stay in chunk order: any unroll gives
// the same result bit for bit.
template <GgmlType T, bool kWide>
__global__ void __launch_bounds__(kGemvWarps * 32)
    GemvKernel(const uint8_t* w, int64_t row_bytes, int64_t rows, int64_t cols, const float* x,
               int n_tokens, float* y, GemvSelect sel) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  if (r >= rows) return;
  if (sel.ids != nullptr) {
    const int64_t i = blockIdx.y;
    const int32_t e = sel.ids[i];
    y += i * rows;
    if (e < 0 || e >= sel.n_expert) {  // never from the router: make it visible
      if (lane == 0) y[r] = __int_as_float(0x7fc00000);
      return;
    }
    w += e * sel.expert_bytes;
    x += (i / sel.x_group) * sel.x_stride;
  }
  const uint8_t* wr = w + r * row_bytes;
  const int64_t n_chunks = (cols + 7) / 8;
  float acc[kGemvMaxTokens] = {};
  int64_t c = lane;
  for (; c + 32 * (kGemvUnroll - 1) < n_chunks; c += 32 * kGemvUnroll) {
    float v[kGemvUnroll][8];
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) DecodeChunk<T>(wr, c + 32 * u, cols, kWide, v[u]);
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) Dot8(v[u], x, c + 32 * u, cols, n_tokens, acc);
  }
  for (; c < n_chunks; c += 32) {
    float v[8];
    DecodeChunk<T>(wr, c, cols, kWide, v);
    Dot8(v, x, c, cols, n_tokens, acc);
  }
#pragma unroll
  for (int t = 0; t < kGemvMaxTokens; ++t) {
    if (t >= n_tokens) break;
    const float s = WarpSum(acc[t]);
    if (lane == 0) y[t * rows + r] = s;
  }
}

template <GgmlType T>
void LaunchGemv(dim3 grid, cudaStream_t s, bool wide, const uint8_t* w, int64_t row_bytes,
                int64_t rows, int64_t cols, const float* x, int n_tokens, float* y,
                GemvSelect sel) {
  if (wide) {
    GemvKernel<T, true>
        <<<grid, kGemvWarps * 32, 0, s>>>(w, row_bytes, rows, cols, x, n_tokens, y, sel);
  } else {
    GemvKernel<T, false>
        <<<grid, kGemvWarps * 32, 0, s>>>(w, row_bytes, rows, cols, x, n_tokens, y, sel);
  }
}

template <GgmlType T>
__global__ void GetRowsKernel(const uint8_t* table, int64_t row_bytes, int64_t table_rows,
                              int64_t cols, const int32_t* ids, bool wide, float* out) {
  const int32_t id = ids[blockIdx.x];
  float* o = out + static_cast<int64_t>(blockIdx.x) * cols;
  const bool ok = id >= 0 && id < table_rows;
  const uint8_t* row = table + static_cast<int64_t>(ok ? id : 0) * row_bytes;
  for (int64_t c = threadIdx.x; c < (cols + 7) / 8; c += blockDim.x) {
    float v[8];
    if (ok) {
      DecodeChunk<T>(row, c, cols, wide, v);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = __int_as_float(0x7fc00000);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (8 * c + i < cols) o[8 * c + i] = v[i];
    }
  }
}

std::string Shape(const char* kernel, GgmlType type, int64_t rows, int64_t cols, int64_t n) {
  return std::string(kernel) + " (" + TypeName(type) + ", " + std::to_string(rows) + "x" +
         std::to_string(cols) + ", n=" + std::to_string(n) + ")";
}

// Shared shape checks of the weight-matrix entry points; "" when fine.
std::string CheckMatrix(const char* kernel, GgmlType type, int64_t rows, int64_t cols, int64_t n) {
  const std::string what = Shape(kernel, type, rows, cols, n);
  if (!IsSupportedWeightType(type)) return what + ": unsupported weight type";
  if (rows <= 0 || cols <= 0 || n < 0) return what + ": bad shape";
  const BlockInfo b = HostBlockInfo(type);
  if (cols % b.elems != 0) {
    return what + ": cols is not a multiple of the block size " + std::to_string(b.elems);
  }
  if (rows > (int64_t{1} << 31) - 1 || n > (int64_t{1} << 31) - 1) {
    return what + ": more than 2^31 rows";
  }
  return "";
}

}  // namespace

bool IsSupportedWeightType(GgmlType type) {
  for (GgmlType t : kWeightTypes) {
    if (t == type) return true;
  }
  return false;
}

std::string MatMul(GgmlType type, const void* w, int64_t rows, int64_t cols, const float* x,
                   int64_t n_tokens, float* y, void* stream, MatMulPath path) {
  const char* name = "MatMul";
  if (std::string err = CheckMatrix(name, type, rows, cols, n_tokens); !err.empty()) return err;
  if (n_tokens == 0) return "";
  if (w == nullptr || x == nullptr || y == nullptr) {
    return Shape(name, type, rows, cols, n_tokens) + ": null pointer";
  }
  const bool gemv =
      path == MatMulPath::kGemv || (path == MatMulPath::kAuto && n_tokens <= kGemvMaxTokens);
  auto* s = static_cast<cudaStream_t>(stream);
  const auto* wb = static_cast<const uint8_t*>(w);
  const int64_t row_bytes = HostRowBytes(type, cols);
  const bool wide = WideLoadsOk(wb, row_bytes);
  if (gemv) {
    name = "GemvKernel";
    // The GEMV keeps one accumulator per token in registers: larger batches run it on
    // slices of kGemvMaxTokens tokens.
    const dim3 grid(static_cast<unsigned>((rows + kGemvWarps - 1) / kGemvWarps));
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kGemvMaxTokens) {
      const int nt = static_cast<int>(std::min<int64_t>(kGemvMaxTokens, n_tokens - t0));
      MOEX_DISPATCH_WEIGHT(type, T,
                           LaunchGemv<T>(grid, s, wide, wb, row_bytes, rows, cols, x + t0 * cols,
                                         nt, y + t0 * rows, GemvSelect{}));
      if (std::string err = CheckLaunch(Shape(name, type, rows, cols, nt)); !err.empty()) {
        return err;
      }
    }
    return "";
  }
  name = "TiledKernel";
  if ((n_tokens + kTileN - 1) / kTileN > 65535) {
    return Shape(name, type, rows, cols, n_tokens) + ": too many tokens for one launch";
  }
  TileParams p;
  p.w0 = wb;
  p.row_bytes = row_bytes;
  p.wide = wide;
  p.rows = rows;
  p.cols = cols;
  p.x = x;
  p.n_tokens = n_tokens;
  p.y = y;
  const dim3 grid(static_cast<unsigned>((rows + kTileM - 1) / kTileM),
                  static_cast<unsigned>((n_tokens + kTileN - 1) / kTileN));
  MOEX_DISPATCH_WEIGHT(type, T, TiledKernel<T, kTilePlain><<<grid, kTileThreads, 0, s>>>(p));
  return CheckLaunch(Shape(name, type, rows, cols, n_tokens));
}

std::string MatMulSelected(GgmlType type, const void* w, int64_t n_expert, int64_t rows,
                           int64_t cols, const int32_t* ids, int64_t n_sel, const float* x,
                           int64_t x_group, int64_t x_stride, float* y, void* stream) {
  const char* name = "MatMulSelected";
  if (std::string err = CheckMatrix(name, type, rows, cols, n_sel); !err.empty()) return err;
  if (n_expert <= 0 || n_sel > 65535 || x_group <= 0 || x_stride < 0) {
    return Shape(name, type, rows, cols, n_sel) + ": bad selection (" + std::to_string(n_expert) +
           " experts, <= 65535 selections, group " + std::to_string(x_group) + ", stride " +
           std::to_string(x_stride) + ")";
  }
  if (n_sel == 0) return "";
  if (w == nullptr || ids == nullptr || x == nullptr || y == nullptr) {
    return Shape(name, type, rows, cols, n_sel) + ": null pointer";
  }
  const auto* wb = static_cast<const uint8_t*>(w);
  const int64_t row_bytes = HostRowBytes(type, cols);
  GemvSelect sel{ids, n_expert, rows * row_bytes, x_group, x_stride};
  const bool wide = WideLoadsOk(wb, row_bytes) && sel.expert_bytes % 16 == 0;
  const dim3 grid(static_cast<unsigned>((rows + kGemvWarps - 1) / kGemvWarps),
                  static_cast<unsigned>(n_sel));
  MOEX_DISPATCH_WEIGHT(type, T,
                       LaunchGemv<T>(grid, static_cast<cudaStream_t>(stream), wide, wb, row_bytes,
                                     rows, cols, x, 1, y, sel));
  return CheckLaunch(Shape("GemvKernel (selected)", type, rows, cols, n_sel));
}

std::string GetRows(GgmlType type, const void* table, int64_t table_rows, int64_t cols,
                    const int32_t* ids, int64_t n_ids, float* out, void* stream) {
  if (std::string err = CheckMatrix("GetRows", type, table_rows, cols, n_ids); !err.empty()) {
    return err;
  }
  if (n_ids == 0) return "";
  if (table == nullptr || ids == nullptr || out == nullptr) {
    return Shape("GetRows", type, table_rows, cols, n_ids) + ": null pointer";
  }
  auto* s = static_cast<cudaStream_t>(stream);
  const auto* tb = static_cast<const uint8_t*>(table);
  const int64_t row_bytes = HostRowBytes(type, cols);
  MOEX_DISPATCH_WEIGHT(type, T,
                       GetRowsKernel<T><<<static_cast<unsigned>(n_ids), 128, 0, s>>>(
                           tb, row_bytes, table_rows, cols, ids, WideLoadsOk(tb, row_bytes), out));
  return CheckLaunch(Shape("GetRowsKernel", type, table_rows, cols, n_ids));
}

}  // namespace moex::kcuda
