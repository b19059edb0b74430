// The routed-expert FFN of prefill on tokens grouped by expert: one launch of the tiled
// kernel computes gate and up for every expert's tokens with SwiGLU in its epilogue, a
// second runs down and scatter-adds the weighted rows into the output.
#include <cuda_runtime.h>

#include <string>

#include "kernels_cuda/cuda_common.cuh"
#include "kernels_cuda/cuda_ops.h"
#include "kernels_cuda/gemm_tile.cuh"

namespace moex::kcuda {
namespace {

std::string Shape(const ExpertFfnArgs& a) {
  return std::string("ExpertFfn (") + TypeName(a.gate_up_type) + "/" + TypeName(a.down_type) +
         ", n_expert=" + std::to_string(a.n_expert) + ", n_embd=" + std::to_string(a.n_embd) +
         ", n_ff=" + std::to_string(a.n_ff) + ", n_tokens=" + std::to_string(a.n_tokens) +
         ", n_entries=" + std::to_string(a.n_entries) + ")";
}

}  // namespace

std::string ExpertFfn(const ExpertFfnArgs& a, void* stream) {
  const std::string what = Shape(a);
  if (!IsSupportedWeightType(a.gate_up_type) || !IsSupportedWeightType(a.down_type)) {
    return what + ": unsupported weight type";
  }
  if (a.n_expert <= 0 || a.n_embd <= 0 || a.n_ff <= 0 || a.n_tokens < 0 || a.n_entries < 0 ||
      a.max_entries_per_expert < 0 || a.max_entries_per_expert > a.n_entries) {
    return what + ": bad shape";
  }
  if (a.n_embd % HostBlockInfo(a.gate_up_type).elems != 0 ||
      a.n_ff % HostBlockInfo(a.down_type).elems != 0) {
    return what + ": a row length is not a multiple of its type's block size";
  }
  if (a.n_expert > 65535 || (a.max_entries_per_expert + kTileN - 1) / kTileN > 65535 ||
      a.n_entries > (int64_t{1} << 31) - 1) {
    return what + ": too large for one launch";
  }
  if (a.n_entries == 0 || a.max_entries_per_expert == 0) return "";
  if (!a.gate || !a.up || !a.down || !a.x || !a.offsets || !a.token_ids || !a.weights || !a.out) {
    return what + ": null pointer";
  }
  auto* s = static_cast<cudaStream_t>(stream);
  float* act = static_cast<float*>(a.workspace);
  cudaError_t e = cudaSuccess;
  if (act == nullptr) {
    e = cudaMallocAsync(reinterpret_cast<void**>(&act),
                        static_cast<size_t>(ExpertFfnWorkspaceBytes(a)), s);
    if (e != cudaSuccess) return CudaError(e, what + ": cudaMallocAsync of the activations");
  } else if (a.workspace_bytes < ExpertFfnWorkspaceBytes(a)) {
    return what + ": workspace of " + std::to_string(a.workspace_bytes) + " bytes, " +
           std::to_string(ExpertFfnWorkspaceBytes(a)) + " needed";
  }

  const unsigned n_tiles = static_cast<unsigned>((a.max_entries_per_expert + kTileN - 1) / kTileN);
  TileParams gu;
  gu.w0 = static_cast<const uint8_t*>(a.gate);
  gu.w1 = static_cast<const uint8_t*>(a.up);
  gu.row_bytes = HostRowBytes(a.gate_up_type, a.n_embd);
  gu.expert_bytes = gu.row_bytes * a.n_ff;
  gu.wide = WideLoadsOk(a.gate, gu.row_bytes) && WideLoadsOk(a.up, gu.row_bytes);
  gu.rows = a.n_ff;
  gu.cols = a.n_embd;
  gu.x = a.x;
  gu.y = act;
  gu.offsets = a.offsets;
  gu.token_ids = a.token_ids;
  const dim3 grid_gu(static_cast<unsigned>((a.n_ff + kTileM - 1) / kTileM), n_tiles,
                     static_cast<unsigned>(a.n_expert));
  MOEX_DISPATCH_WEIGHT(a.gate_up_type, T,
                       TiledKernel<T, kTileGateUp><<<grid_gu, kTileThreads, 0, s>>>(gu));
  std::string err = CheckLaunch(what + ": gate/up TiledKernel");

  if (err.empty()) {
    TileParams dn;
    dn.w0 = static_cast<const uint8_t*>(a.down);
    dn.row_bytes = HostRowBytes(a.down_type, a.n_ff);
    dn.expert_bytes = dn.row_bytes * a.n_embd;
    dn.wide = WideLoadsOk(a.down, dn.row_bytes);
    dn.rows = a.n_embd;
    dn.cols = a.n_ff;
    dn.x = act;
    dn.y = a.out;
    dn.offsets = a.offsets;
    dn.token_ids = a.token_ids;
    dn.weights = a.weights;
    const dim3 grid_dn(static_cast<unsigned>((a.n_embd + kTileM - 1) / kTileM), n_tiles,
                       static_cast<unsigned>(a.n_expert));
    MOEX_DISPATCH_WEIGHT(a.down_type, T,
                         TiledKernel<T, kTileScatter><<<grid_dn, kTileThreads, 0, s>>>(dn));
    err = CheckLaunch(what + ": down TiledKernel");
  }
  if (a.workspace == nullptr) {
    // Stream-ordered: the memory is released after the kernels that read it.
    e = cudaFreeAsync(act, s);
    if (err.empty() && e != cudaSuccess) err = CudaError(e, what + ": cudaFreeAsync");
  }
  return err;
}

int64_t ExpertFfnWorkspaceBytes(const ExpertFfnArgs& a) {
  return a.n_entries * a.n_ff * static_cast<int64_t>(sizeof(float));
}

}  // namespace moex::kcuda
