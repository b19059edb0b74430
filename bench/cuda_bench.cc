// Microbenchmarks of the CUDA kernels (kernels_cuda/cuda_ops.h), timed with CUDA events:
//  - BM_CudaGemv/<type>/<rows>/<cols>: the decode GEMV (one token) streaming weight bytes,
//    reported as GB/s of weights. Each iteration runs the GEMV back to back over enough
//    copies of the matrix (>= 256 MiB together) that none is still in L2 when it comes
//    round again, as in decode, where each expert's weights are read once per token; the
//    small expert matrices (768 x 2048 is ~0.9 MB in Q4_K) also pay the launch cost, as
//    they would in a real decode step without CUDA graphs.
//  - BM_CudaH2DPinned/<MiB>: host-to-device copies from pinned memory (the expert upload
//    path), GB/s.
//  - BM_CudaDecodeAttention/<kv type>/<context>: one decode token over a context of
//    Qwen3-30B-A3B's attention shape (32 query heads, 4 KV heads, head_dim 128), time per
//    call and GB/s of KV rows read.
// Without a device every benchmark reports an error and the run continues.
//
//   build/gpu/bench/moex_cuda_bench --benchmark_min_time=0.2
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels_cpu/quant.h"
#include "kernels_cuda/cuda_ops.h"
#include "kernels_cuda/device_probe.h"

namespace moex::kcuda {
namespace {

using kcpu::GgmlType;

bool SkipWithoutDevice(benchmark::State& state) {
  static const std::string why = [] {
    std::string w;
    return ProbeCudaDevices(&w).empty() ? (w.empty() ? std::string("no CUDA device") : w)
                                        : std::string();
  }();
  if (why.empty()) return false;
  state.SkipWithError(("no CUDA device: " + why).c_str());
  return true;
}

bool Ok(benchmark::State& state, cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  state.SkipWithError((std::string(what) + ": " + cudaGetErrorString(e)).c_str());
  return false;
}

// Elapsed milliseconds between two events recorded around `body` on the default stream.
template <typename F>
float TimeMs(F&& body) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a);
  body();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms;
}

const GgmlType kTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ8_0,
                           GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

void BM_CudaGemv(benchmark::State& state) {
  if (SkipWithoutDevice(state)) return;
  const GgmlType type = kTypes[state.range(0)];
  const int64_t rows = state.range(1), cols = state.range(2);
  state.SetLabel(kcpu::GetTypeTraits(type).name);
  const int64_t row_bytes = kcpu::RowBytes(kcpu::GetTypeTraits(type), cols);
  const int64_t bytes = rows * row_bytes;
  const int64_t copies = std::max<int64_t>(1, ((int64_t{256} << 20) + bytes - 1) / bytes);
  // 64 distinct quantised rows tiled over the matrix: quantising hundreds of MB on the
  // host would take longer than the benchmark, and repeated rows stream like any others.
  std::mt19937_64 rng(1);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> src(cols);
  std::vector<uint8_t> block(64 * row_bytes);
  for (int r = 0; r < 64; ++r) {
    for (float& v : src) v = dist(rng);
    kcpu::QuantizeRow(type, src.data(), block.data() + r * row_bytes, cols);
  }
  std::vector<uint8_t> host(bytes);
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(block.data() + (r % 64) * row_bytes, row_bytes, host.data() + r * row_bytes);
  }
  uint8_t* w = nullptr;
  float *x = nullptr, *y = nullptr;
  if (!Ok(state, cudaMalloc(&w, copies * bytes), "cudaMalloc weights") ||
      !Ok(state, cudaMalloc(&x, cols * sizeof(float)), "cudaMalloc x") ||
      !Ok(state, cudaMalloc(&y, rows * sizeof(float)), "cudaMalloc y")) {
    cudaFree(w);
    cudaFree(x);
    return;
  }
  for (int64_t c = 0; c < copies; ++c) {
    cudaMemcpy(w + c * bytes, host.data(), bytes, cudaMemcpyHostToDevice);
  }
  for (float& v : src) v = dist(rng) * 20.0f;
  cudaMemcpy(x, src.data(), cols * sizeof(float), cudaMemcpyHostToDevice);
  double total_ms = 0;
  int64_t launches = 0;
  std::string err;
  for (auto _ : state) {
    const float ms = TimeMs([&] {
      for (int64_t c = 0; c < copies && err.empty(); ++c) {
        err = MatMul(type, w + c * bytes, rows, cols, x, 1, y, nullptr, MatMulPath::kGemv);
      }
    });
    state.SetIterationTime(ms / 1e3);
    total_ms += ms;
    launches += copies;
    if (!err.empty()) break;
  }
  if (!err.empty()) state.SkipWithError(err.c_str());
  state.counters["GB/s"] = static_cast<double>(launches) * bytes / (total_ms * 1e-3) / 1e9;
  state.counters["us/call"] = total_ms * 1e3 / std::max<int64_t>(1, launches);
  state.counters["MB"] = bytes / 1e6;
  cudaFree(w);
  cudaFree(x);
  cudaFree(y);
}
void GemvArgs(benchmark::internal::Benchmark* b) {
  // Qwen3-30B-A3B's expert matrices (gate/up 768 x 2048, down 2048 x 768) and a dense
  // 7B-class FFN matrix (4096 x 14336).
  for (int t = 0; t < 8; ++t) {
    for (auto [r, c] : {std::pair<int, int>{768, 2048}, {2048, 768}, {4096, 14336}}) {
      b->Args({t, r, c});
    }
  }
}
BENCHMARK(BM_CudaGemv)->Apply(GemvArgs)->UseManualTime()->Unit(benchmark::kMicrosecond);

void BM_CudaH2DPinned(benchmark::State& state) {
  if (SkipWithoutDevice(state)) return;
  const size_t bytes = static_cast<size_t>(state.range(0)) << 20;
  void* host = nullptr;
  void* dev = nullptr;
  if (!Ok(state, cudaMallocHost(&host, bytes), "cudaMallocHost") ||
      !Ok(state, cudaMalloc(&dev, bytes), "cudaMalloc")) {
    cudaFreeHost(host);
    return;
  }
  std::fill_n(static_cast<char*>(host), bytes, 1);
  double total_ms = 0;
  for (auto _ : state) {
    const float ms =
        TimeMs([&] { cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, nullptr); });
    state.SetIterationTime(ms / 1e3);
    total_ms += ms;
  }
  state.counters["GB/s"] =
      static_cast<double>(state.iterations()) * bytes / (total_ms * 1e-3) / 1e9;
  cudaFree(dev);
  cudaFreeHost(host);
}
// 2 MiB: one small expert matrix; 64 MiB: a layer's worth of experts.
BENCHMARK(BM_CudaH2DPinned)->Arg(2)->Arg(64)->UseManualTime()->Unit(benchmark::kMicrosecond);

const GgmlType kKvTypes[] = {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0,
                             GgmlType::kQ4_1};

void BM_CudaDecodeAttention(benchmark::State& state) {
  if (SkipWithoutDevice(state)) return;
  const GgmlType type = kKvTypes[state.range(0)];
  const int64_t ctx = state.range(1);
  state.SetLabel(kcpu::GetTypeTraits(type).name);
  const KvLayout kv{type, 4, 128, ctx};
  const int64_t n_head = 32, width = kv.n_head_kv * kv.head_dim;
  const int64_t kv_bytes = KvBufferBytes(kv);
  void *k = nullptr, *v = nullptr;
  float *rows = nullptr, *q = nullptr, *out = nullptr;
  if (!Ok(state, cudaMalloc(&k, kv_bytes), "cudaMalloc") ||
      !Ok(state, cudaMalloc(&v, kv_bytes), "cudaMalloc") ||
      !Ok(state, cudaMalloc(&rows, ctx * width * sizeof(float)), "cudaMalloc") ||
      !Ok(state, cudaMalloc(&q, n_head * 128 * sizeof(float)), "cudaMalloc") ||
      !Ok(state, cudaMalloc(&out, n_head * 128 * sizeof(float)), "cudaMalloc")) {
    cudaFree(k);
    cudaFree(v);
    cudaFree(rows);
    cudaFree(q);
    return;
  }
  std::mt19937_64 rng(2);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> host(ctx * width);
  for (float& f : host) f = dist(rng);
  cudaMemcpy(rows, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice);
  cudaMemcpy(q, host.data(), n_head * 128 * sizeof(float), cudaMemcpyHostToDevice);
  std::string err = KvStore(kv, rows, rows, ctx, 0, k, v, nullptr);
  const float scale = 1.0f / std::sqrt(128.0f);
  // Our own scratch: cudaMallocAsync's default pool would hand its memory back to the
  // driver at each event synchronisation and time a fresh allocation per call.
  const int64_t ws_bytes = AttentionWorkspaceBytes(kv, 1, ctx - 1, n_head, AttentionPath::kDecode);
  void* ws = nullptr;
  if (!Ok(state, cudaMalloc(&ws, ws_bytes), "cudaMalloc workspace")) err = "no workspace";
  double total_ms = 0;
  for (auto _ : state) {
    if (!err.empty()) break;
    const float ms = TimeMs([&] {
      err = Attention(kv, k, v, q, 1, ctx - 1, n_head, scale, out, nullptr, AttentionPath::kDecode,
                      ws, ws_bytes);
    });
    state.SetIterationTime(ms / 1e3);
    total_ms += ms;
  }
  if (!err.empty()) state.SkipWithError(err.c_str());
  state.counters["GB/s"] =
      static_cast<double>(state.iterations()) * 2 * kv_bytes / (total_ms * 1e-3) / 1e9;
  state.counters["us/call"] = total_ms * 1e3 / std::max<int64_t>(1, state.iterations());
  cudaFree(k);
  cudaFree(v);
  cudaFree(rows);
  cudaFree(q);
  cudaFree(out);
  cudaFree(ws);
}
BENCHMARK(BM_CudaDecodeAttention)
    ->ArgsProduct({{0, 1, 2, 3, 4}, {4096}})
    ->Args({1, 32768})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace moex::kcuda

BENCHMARK_MAIN();
