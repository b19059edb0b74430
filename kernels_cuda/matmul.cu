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

// One warp per weight row: lane l takes chunks l, l + 32, ... (neighbouring lanes read
// neighbouring bytes of the row), dequantises each in registers, dots it with every
// token's x, and the warp sums its lanes at the end. The weights are read exactly once,
// which is what bounds decode.
template <GgmlType T>
__global__ void __launch_bounds__(kGemvWarps * 32)
    GemvKernel(const uint8_t* w, int64_t row_bytes, int64_t rows, int64_t cols, const float* x,
               int n_tokens, bool wide, float* y) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  if (r >= rows) return;
  const uint8_t* wr = w + r * row_bytes;
  const int64_t n_chunks = (cols + 7) / 8;
  float acc[kGemvMaxTokens] = {};
  for (int64_t c = lane; c < n_chunks; c += 32) {
    float v[8];
    DecodeChunk<T>(wr, c, cols, wide, v);
#pragma unroll
    for (int t = 0; t < kGemvMaxTokens; ++t) {
      if (t >= n_tokens) break;
      float xv[8];
      LoadX8(x + t * cols, c, cols, xv);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[t] = fmaf(v[i], xv[i], acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < kGemvMaxTokens; ++t) {
    if (t >= n_tokens) break;
    const float s = WarpSum(acc[t]);
    if (lane == 0) y[t * rows + r] = s;
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
                           GemvKernel<T><<<grid, kGemvWarps * 32, 0, s>>>(
                               wb, row_bytes, rows, cols, x + t0 * cols, nt, wide, y + t0 * rows));
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
