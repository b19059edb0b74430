// Microbenchmarks of the CPU reference kernels, with the machine's limit measured in the
// same run: BM_MemoryRead streams a buffer much larger than the caches (the bandwidth a
// memory-bound decode can reach); BM_MatVec reports the weight bytes it streams per
// second, so the two figures compare directly (bytes_per_second counters).
//
//   build/release/bench/moex_kernels_bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels_cpu/ops.h"
#include "kernels_cpu/quant.h"
#include "tbb/blocked_range.h"
#include "tbb/global_control.h"
#include "tbb/parallel_reduce.h"

namespace moex::kcpu {
namespace {

constexpr int64_t kBigBytes = int64_t{512} << 20;  // 512 MiB: far beyond any cache

void BM_MemoryRead(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads);
  std::vector<uint64_t> buf(kBigBytes / 8, 1);
  for (auto _ : state) {
    const uint64_t sum = tbb::parallel_reduce(
        tbb::blocked_range<size_t>(0, buf.size(), 1 << 16), uint64_t{0},
        [&](const tbb::blocked_range<size_t>& r, uint64_t acc) {
          uint64_t a[8] = {};
          size_t i = r.begin();
          for (; i + 8 <= r.end(); i += 8) {
            for (int j = 0; j < 8; ++j) a[j] += buf[i + j];
          }
          for (; i < r.end(); ++i) acc += buf[i];
          return acc + std::accumulate(a, a + 8, uint64_t{0});
        },
        std::plus<uint64_t>());
    benchmark::DoNotOptimize(sum);
  }
  state.SetBytesProcessed(state.iterations() * kBigBytes);
}
BENCHMARK(BM_MemoryRead)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

// y = W x for one token (decode) or 16 tokens (small prefill), W of `rows` x 4096 in
// `type`, sized to exceed the last-level cache.
void BM_MatVec(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const int64_t n_tok = state.range(1);
  const TypeTraits& tt = GetTypeTraits(type);
  const int64_t cols = 4096, rows = 8192;
  std::mt19937_64 rng(1);
  std::normal_distribution<float> d(0, 0.05f);
  std::vector<float> row(cols);
  std::vector<uint8_t> w(rows * RowBytes(tt, cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (float& v : row) v = d(rng);
    QuantizeRow(type, row.data(), w.data() + r * RowBytes(tt, cols), cols);
  }
  std::vector<float> x(n_tok * cols, 0.5f), y(n_tok * rows);
  for (auto _ : state) {
    MatMul(type, w.data(), rows, cols, x.data(), n_tok, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(w.size()));
  state.SetLabel(tt.name);
}
BENCHMARK(BM_MatVec)
    ->ArgsProduct({{static_cast<int64_t>(GgmlType::kF32), static_cast<int64_t>(GgmlType::kF16),
                    static_cast<int64_t>(GgmlType::kBF16), static_cast<int64_t>(GgmlType::kQ8_0),
                    static_cast<int64_t>(GgmlType::kQ4_0), static_cast<int64_t>(GgmlType::kQ4_K),
                    static_cast<int64_t>(GgmlType::kQ5_K), static_cast<int64_t>(GgmlType::kQ6_K)},
                   {1, 16}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace moex::kcpu

BENCHMARK_MAIN();
