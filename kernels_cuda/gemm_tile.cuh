// The tiled matrix kernel shared by MatMul (larger batches) and ExpertFfn: a block owns
// 64 weight rows x 32 token rows; per step of 64 columns it dequantises the 64x64 weight
// tile once into shared memory and multiplies it with the 32 token rows, so each weight
// is read from memory once per 32 tokens (a GEMV reads it once per token).
//
// Plain SIMT FMAs in F32 (no tensor cores, no integer dot products): the first goal is
// exact agreement with the CPU reference on every block type; dp4a/mma paths are a later
// step (see "Not yet" in cuda_ops.h).
#ifndef MOEX_KERNELS_CUDA_GEMM_TILE_CUH_
#define MOEX_KERNELS_CUDA_GEMM_TILE_CUH_

#include "kernels_cuda/cuda_common.cuh"

namespace moex::kcuda {

inline constexpr int kTileM = 64;  // weight rows per block
inline constexpr int kTileN = 32;  // token rows per block
inline constexpr int kTileK = 64;  // columns per step (8 chunks)
inline constexpr int kTileThreads = 256;

enum TileMode : int {
  kTilePlain = 0,    // y[t][r] = W x[t]
  kTileGateUp = 1,   // act[entry][r] = silu(Wg x[tok]) * (Wu x[tok]), per expert (gathered x)
  kTileScatter = 2,  // out[tok][r] += weight * (Wd act[entry]), per expert (atomic)
};

struct TileParams {
  const uint8_t* w0 = nullptr;  // weights (gate for kTileGateUp)
  const uint8_t* w1 = nullptr;  // up weights (kTileGateUp only)
  int64_t row_bytes = 0;
  bool wide = false;         // DecodeChunk's wide loads (every matrix 16-byte aligned)
  int64_t expert_bytes = 0;  // bytes from one expert's matrix to the next
  int64_t rows = 0, cols = 0;
  const float* x = nullptr;  // activation rows, `cols` wide
  int64_t n_tokens = 0;      // kTilePlain: rows of x and y
  float* y = nullptr;        // output rows, `rows` wide
  const int32_t* offsets = nullptr;
  const int32_t* token_ids = nullptr;
  const float* weights = nullptr;
};

template <GgmlType T, int kMode>
__global__ void __launch_bounds__(kTileThreads) TiledKernel(TileParams p) {
  constexpr bool kTwo = kMode == kTileGateUp;
  // Column-major tiles (k outer) so the inner loop reads a row of each; +1 pads the
  // stride off the 32 banks.
  __shared__ float ws[kTwo ? 2 : 1][kTileK][kTileM + 1];
  __shared__ float xs[kTileK][kTileN + 1];
  __shared__ int32_t src_row[kTileN];  // row of x feeding token column n (-1: none)

  const int tid = threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const uint8_t* w0 = p.w0;
  const uint8_t* w1 = p.w1;
  int64_t begin = 0, count = p.n_tokens;
  if constexpr (kMode != kTilePlain) {
    const int e = blockIdx.z;
    begin = p.offsets[e];
    count = p.offsets[e + 1] - begin;
    w0 += e * p.expert_bytes;
    if (kTwo) w1 += e * p.expert_bytes;
  }
  if (n0 >= count) return;  // the expert has fewer tokens than this tile starts at
  if (tid < kTileN) {
    const int64_t n = n0 + tid;
    int32_t src = -1;
    if (n < count) {
      if constexpr (kMode == kTileGateUp) {
        src = p.token_ids[begin + n];
      } else if constexpr (kMode == kTileScatter) {
        src = static_cast<int32_t>(begin + n);  // act rows are entry-ordered
      } else {
        src = static_cast<int32_t>(n);
      }
    }
    src_row[tid] = src;
  }

  // Thread (tx, ty) computes rows r0 + tx + 16 i (i < 4) for tokens n0 + ty + 16 j (j < 2).
  const int tx = tid % 16, ty = tid / 16;
  float acc[kTwo ? 2 : 1][4][2] = {};
  const int64_t n_chunks = (p.cols + 7) / 8;
  for (int64_t k0 = 0; k0 < p.cols; k0 += kTileK) {
    __syncthreads();  // the previous step's tiles are consumed (and src_row is written)
    // Weight tile: 64 rows x 8 chunks, two chunks per thread; lanes of a warp walk along
    // a row, so they read neighbouring bytes of the same blocks.
    for (int q = tid; q < kTileM * 8; q += kTileThreads) {
      const int r = q / 8, cc = q % 8;
      const int64_t chunk = k0 / 8 + cc;
      float v[8], u[8];
      if (r0 + r < p.rows && chunk < n_chunks) {
        DecodeChunk<T>(w0 + (r0 + r) * p.row_bytes, chunk, p.cols, p.wide, v);
        if constexpr (kTwo) DecodeChunk<T>(w1 + (r0 + r) * p.row_bytes, chunk, p.cols, p.wide, u);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = u[i] = 0.0f;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        ws[0][cc * 8 + i][r] = v[i];
        if constexpr (kTwo) ws[kTwo ? 1 : 0][cc * 8 + i][r] = u[i];
      }
    }
    // Activation tile: 32 token rows x 64 columns, lanes along a row (coalesced).
    for (int q = tid; q < kTileN * kTileK; q += kTileThreads) {
      const int n = q / kTileK, kk = q % kTileK;
      const int32_t src = src_row[n];
      const int64_t c = k0 + kk;
      xs[kk][n] = (src >= 0 && c < p.cols) ? p.x[static_cast<int64_t>(src) * p.cols + c] : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kTileK; ++kk) {
      float a[kTwo ? 2 : 1][4], b[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[0][i] = ws[0][kk][tx + 16 * i];
        if constexpr (kTwo) a[kTwo ? 1 : 0][i] = ws[kTwo ? 1 : 0][kk][tx + 16 * i];
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) b[j] = xs[kk][ty + 16 * j];
#pragma unroll
      for (int m = 0; m < (kTwo ? 2 : 1); ++m) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 2; ++j) acc[m][i][j] = fmaf(a[m][i], b[j], acc[m][i][j]);
        }
      }
    }
  }

#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int n = ty + 16 * j;
    if (n0 + n >= count) continue;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t r = r0 + tx + 16 * i;
      if (r >= p.rows) continue;
      if constexpr (kMode == kTilePlain) {
        p.y[(n0 + n) * p.rows + r] = acc[0][i][j];
      } else if constexpr (kMode == kTileGateUp) {
        const float g = acc[0][i][j];
        p.y[(begin + n0 + n) * p.rows + r] = g / (1.0f + expf(-g)) * acc[kTwo ? 1 : 0][i][j];
      } else {
        const int64_t entry = begin + n0 + n;
        const int32_t tok = p.token_ids[entry];
        atomicAdd(p.y + static_cast<int64_t>(tok) * p.rows + r, p.weights[entry] * acc[0][i][j]);
      }
    }
  }
}

}  // namespace moex::kcuda

#endif  // MOEX_KERNELS_CUDA_GEMM_TILE_CUH_
