// Microbenchmarks of the CPU reference kernels, with the machine's limit measured in the
// same run: BM_MemoryRead streams a buffer much larger than the caches (the bandwidth a
// memory-bound decode can reach); BM_MatVec reports the weight bytes it streams per
// second, so the two figures compare directly (bytes_per_second counters). BM_MatVecLevel
// runs MatMul's decode path (Q8 activations, integer vec_dots) at each ISA level the CPU
// has (third argument: 0 scalar, 1 AVX2, 2 AVX-512), to see what each level buys;
// BM_VecDotInCache is one core's arithmetic rate per level on L2-resident weights;
// BM_ExpertLayer compares a MoE layer's experts run one at a time with MatMulMany;
// BM_PrefillGemm one expert matrix at 32 tokens, one vec_dot per (row, token) against the
// batched kernels.
//
//   build/release/bench/moex_kernels_bench --benchmark_counters_tabular=true
//   build/release/bench/moex_kernels_bench --benchmark_filter='MemoryRead|MatVecLevel|InCache'
//   build/release/bench/moex_kernels_bench --benchmark_filter='MemoryRead/2|ExpertLayer'
//   build/release/bench/moex_kernels_bench --benchmark_filter=PrefillGemm
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels_cpu/cpu_features.h"
#include "kernels_cpu/ops.h"
#include "kernels_cpu/parallel.h"
#include "kernels_cpu/quant.h"
#include "kernels_cpu/vec_dot.h"
#include "tbb/blocked_range.h"
#include "tbb/global_control.h"

namespace moex::kcpu {
namespace {

constexpr int64_t kBigBytes = int64_t{512} << 20;  // 512 MiB: far beyond any cache

void BM_MemoryRead(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads);
  std::vector<uint64_t> buf(kBigBytes / 8, 1);
  for (auto _ : state) {
    const uint64_t sum = ParallelReduce(
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

// A weight matrix of `cols` = 4096 columns in `type` of at least 256 MiB, far beyond the
// 32 MiB L3 of the project's machine (8192 rows of Q4_K, 18 MiB, would stay in it).
// 1024 distinct rows of N(0, 0.05^2) values are quantised and tiled: quantising 256 MiB
// would take minutes, and repeated rows stream from memory like any others.
struct BenchMatrix {
  int64_t rows = 0;
  std::vector<uint8_t> w;
};

BenchMatrix MakeBenchMatrix(GgmlType type, int64_t cols) {
  const TypeTraits& tt = GetTypeTraits(type);
  const int64_t row_bytes = RowBytes(tt, cols);
  constexpr int64_t kDistinct = 1024;
  std::mt19937_64 rng(1);
  std::normal_distribution<float> d(0, 0.05f);
  std::vector<float> row(cols);
  std::vector<uint8_t> distinct(kDistinct * row_bytes);
  for (int64_t r = 0; r < kDistinct; ++r) {
    for (float& v : row) v = d(rng);
    QuantizeRow(type, row.data(), distinct.data() + r * row_bytes, cols);
  }
  BenchMatrix m;
  m.rows = ((int64_t{256} << 20) / row_bytes + kDistinct - 1) / kDistinct * kDistinct;
  m.w.resize(m.rows * row_bytes);
  for (int64_t r = 0; r < m.rows; r += kDistinct) {
    std::memcpy(m.w.data() + r * row_bytes, distinct.data(), distinct.size());
  }
  return m;
}

// y = W x for one token (decode) or 16 tokens (small prefill), W of at least 256 MiB,
// through MatMul as the
// forward pass calls it (for quantised types, one token takes the vec_dot fast path).
void BM_MatVec(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const int64_t n_tok = state.range(1);
  const int64_t cols = 4096;
  const BenchMatrix m = MakeBenchMatrix(type, cols);
  const int64_t rows = m.rows;
  const std::vector<uint8_t>& w = m.w;
  std::vector<float> x(n_tok * cols, 0.5f), y(n_tok * rows);
  for (auto _ : state) {
    MatMul(type, w.data(), rows, cols, x.data(), n_tok, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(w.size()));
  state.SetLabel(GetTypeTraits(type).name);
}
BENCHMARK(BM_MatVec)
    ->ArgsProduct({{static_cast<int64_t>(GgmlType::kF32), static_cast<int64_t>(GgmlType::kF16),
                    static_cast<int64_t>(GgmlType::kBF16), static_cast<int64_t>(GgmlType::kQ8_0),
                    static_cast<int64_t>(GgmlType::kQ4_0), static_cast<int64_t>(GgmlType::kQ4_K),
                    static_cast<int64_t>(GgmlType::kQ5_K), static_cast<int64_t>(GgmlType::kQ6_K)},
                   {1, 16}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The decode path (x quantised once, one integer vec_dot per row) at a chosen ISA level.
void BM_MatVecLevel(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const int64_t n_tok = state.range(1);
  const auto level = static_cast<IsaLevel>(state.range(2));
  if (!CpuSupports(level)) {
    state.SkipWithError("the CPU lacks this ISA level");
    return;
  }
  const int64_t cols = 4096;
  const BenchMatrix m = MakeBenchMatrix(type, cols);
  const int64_t rows = m.rows;
  const std::vector<uint8_t>& w = m.w;
  std::vector<float> x(n_tok * cols), y(n_tok * rows);
  std::mt19937_64 rng(2);
  std::normal_distribution<float> d(0, 1.0f);
  for (float& v : x) v = d(rng);
  for (auto _ : state) {
    MatMulQuantizedActivations(type, level, w.data(), rows, cols, x.data(), n_tok, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(w.size()));
  state.SetLabel(std::string(GetTypeTraits(type).name) + "/" + IsaLevelName(level));
}
BENCHMARK(BM_MatVecLevel)
    ->ArgsProduct({{static_cast<int64_t>(GgmlType::kQ8_0), static_cast<int64_t>(GgmlType::kQ4_0),
                    static_cast<int64_t>(GgmlType::kQ4_K), static_cast<int64_t>(GgmlType::kQ5_K),
                    static_cast<int64_t>(GgmlType::kQ6_K)},
                   {1, 16},
                   {0, 1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The routed experts of one MoE layer of the scaled Qwen3-30B-A3B shape (8 active of 64,
// gate/up 768 x 2048 Q4_K, down 2048 x 768 Q6_K as in a Q4_K_M file): second argument 0
// runs them one at a time, three MatMuls each with its own parallel region (how
// MoeForward ran before the batched executor), 1 as two MatMulMany regions (gate/up of all
// experts, then their downs). Each iteration takes the next 8 of the 64 experts, so the
// 190 MB of weights stream from memory as in a decode step, not from the 32 MiB L3.
// bytes_per_second counts the weight bytes read; compare with BM_MemoryRead/2 of the
// same run. First argument: tokens per expert (1: decode).
void BM_ExpertLayer(benchmark::State& state) {
  const int64_t n_tok = state.range(0);
  const bool batched = state.range(1) != 0;
  constexpr int64_t kEmbd = 2048, kFf = 768, kExperts = 64, kActive = 8;
  const GgmlType gu_type = GgmlType::kQ4_K, down_type = GgmlType::kQ6_K;
  const int64_t gu_bytes = kFf * RowBytes(GetTypeTraits(gu_type), kEmbd);
  const int64_t down_bytes = kEmbd * RowBytes(GetTypeTraits(down_type), kFf);
  const int64_t expert_bytes = 2 * gu_bytes + down_bytes;
  // Two distinct experts quantised, tiled over the 64 (quantising all takes too long;
  // repeated bytes stream from memory like any others).
  std::vector<uint8_t> w(kExperts * expert_bytes);
  {
    std::mt19937_64 rng(4);
    std::normal_distribution<float> d(0, 0.05f);
    std::vector<float> row(kEmbd);
    auto fill = [&](GgmlType type, int64_t rows, int64_t cols, uint8_t* dst) {
      const int64_t rb = RowBytes(GetTypeTraits(type), cols);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) row[c] = d(rng);
        QuantizeRow(type, row.data(), dst + r * rb, cols);
      }
    };
    for (int64_t e = 0; e < 2; ++e) {
      uint8_t* base = w.data() + e * expert_bytes;
      fill(gu_type, kFf, kEmbd, base);
      fill(gu_type, kFf, kEmbd, base + gu_bytes);
      fill(down_type, kEmbd, kFf, base + 2 * gu_bytes);
    }
    for (int64_t e = 2; e < kExperts; ++e) {
      std::memcpy(w.data() + e * expert_bytes, w.data() + (e % 2) * expert_bytes, expert_bytes);
    }
  }
  std::vector<float> x(n_tok * kEmbd);
  std::mt19937_64 rng(5);
  std::normal_distribution<float> d(0, 1.0f);
  for (float& v : x) v = d(rng);
  std::vector<float> g(kActive * n_tok * kFf), u(g.size()), y(kActive * n_tok * kEmbd);
  std::vector<MatMulTask> tasks;
  int64_t group = 0;
  for (auto _ : state) {
    const int64_t e0 = (group++ % (kExperts / kActive)) * kActive;
    auto gate = [&](int64_t j) { return w.data() + (e0 + j) * expert_bytes; };
    auto up = [&](int64_t j) { return gate(j) + gu_bytes; };
    auto down = [&](int64_t j) { return gate(j) + 2 * gu_bytes; };
    float* gj = g.data();
    if (!batched) {
      for (int64_t j = 0; j < kActive; ++j) {
        float* gp = g.data() + j * n_tok * kFf;
        float* up_out = u.data() + j * n_tok * kFf;
        MatMul(gu_type, gate(j), kFf, kEmbd, x.data(), n_tok, gp);
        MatMul(gu_type, up(j), kFf, kEmbd, x.data(), n_tok, up_out);
        SwiGlu(gp, up_out, n_tok * kFf);
        MatMul(down_type, down(j), kEmbd, kFf, gp, n_tok, y.data() + j * n_tok * kEmbd);
      }
    } else {
      tasks.clear();
      for (int64_t j = 0; j < kActive; ++j) {
        tasks.push_back(
            {gu_type, gate(j), kFf, kEmbd, x.data(), nullptr, n_tok, g.data() + j * n_tok * kFf});
        tasks.push_back(
            {gu_type, up(j), kFf, kEmbd, x.data(), nullptr, n_tok, u.data() + j * n_tok * kFf});
      }
      MatMulMany(tasks);
      SwiGlu(gj, u.data(), kActive * n_tok * kFf);
      tasks.clear();
      for (int64_t j = 0; j < kActive; ++j) {
        tasks.push_back({down_type, down(j), kEmbd, kFf, g.data() + j * n_tok * kFf, nullptr, n_tok,
                         y.data() + j * n_tok * kEmbd});
      }
      MatMulMany(tasks);
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * kActive * expert_bytes);
  state.SetLabel(batched ? "batched (2 regions)" : "per expert (24 regions)");
}
BENCHMARK(BM_ExpertLayer)
    ->ArgsProduct({{1, 4}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Prefill of one expert matrix: y = W x for 32 tokens, W one of a Qwen3-30B-A3B-shaped
// expert's matrices (gate/up 768 x 2048 Q4_K or Q5_K, down 2048 x 768 Q6_K: 0.9-1.2 MB,
// in L2/L3 as an expert's weights are while its tokens run). Third argument: 0 computes
// one vec_dot per (row, token) as MatMul did before the batched kernels (same quantised
// activations, same 32 KiB row blocks over TBB), 1 is MatMul (which takes
// GetVecDotBatch's kernel for >= 2 tokens). Fourth: threads. bytes_per_second counts
// weight bytes, GFLOP/s 2 per weight and token.
void BM_PrefillGemm(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const int64_t n_tok = state.range(1);
  const bool batched = state.range(2) != 0;
  const int threads = static_cast<int>(state.range(3));
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads);
  const int64_t rows = type == GgmlType::kQ6_K ? 2048 : 768;
  const int64_t cols = type == GgmlType::kQ6_K ? 768 : 2048;
  const int64_t rb = RowBytes(GetTypeTraits(type), cols);
  std::vector<uint8_t> w(rows * rb);
  std::mt19937_64 rng(6);
  std::normal_distribution<float> d(0, 0.05f);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (float& v : row) v = d(rng);
    QuantizeRow(type, row.data(), w.data() + r * rb, cols);
  }
  std::vector<float> x(n_tok * cols), y(n_tok * rows);
  std::normal_distribution<float> dx(0, 1.0f);
  for (float& v : x) v = dx(rng);
  const GgmlType act = VecDotActivationType(type);
  const int64_t xb = RowBytes(GetTypeTraits(act), cols);
  std::vector<uint8_t> xq(n_tok * xb);
  const VecDotFn dot = GetVecDot(type);
  const int64_t grain = std::max<int64_t>(1, (int64_t{32} << 10) / rb);
  for (auto _ : state) {
    if (batched) {
      MatMul(type, w.data(), rows, cols, x.data(), n_tok, y.data());
    } else {
      ParallelFor(tbb::blocked_range<int64_t>(0, n_tok, 4),
                  [&](const tbb::blocked_range<int64_t>& r) {
                    for (int64_t t = r.begin(); t < r.end(); ++t) {
                      QuantizeActivation(act, x.data() + t * cols, xq.data() + t * xb, cols);
                    }
                  });
      ParallelFor(tbb::blocked_range<int64_t>(0, rows, grain),
                  [&](const tbb::blocked_range<int64_t>& r) {
                    for (int64_t n = r.begin(); n < r.end(); ++n) {
                      for (int64_t t = 0; t < n_tok; ++t) {
                        y[t * rows + n] = dot(w.data() + n * rb, xq.data() + t * xb, cols);
                      }
                    }
                  });
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(w.size()));
  state.counters["GFLOP/s"] =
      benchmark::Counter(static_cast<double>(2 * rows * cols * n_tok) * 1e-9 * state.iterations(),
                         benchmark::Counter::kIsRate);
  state.SetLabel(std::string(GetTypeTraits(type).name) + (batched ? " batched" : " per token"));
}
BENCHMARK(BM_PrefillGemm)
    ->ArgsProduct({{static_cast<int64_t>(GgmlType::kQ4_K), static_cast<int64_t>(GgmlType::kQ5_K),
                    static_cast<int64_t>(GgmlType::kQ6_K), static_cast<int64_t>(GgmlType::kQ8_0)},
                   {32},
                   {0, 1},
                   {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// One core's arithmetic rate: the vec_dot of one level over a 64 x 4096 matrix that stays
// in L2, single-threaded, in CPU time (so other load on the machine barely moves it). A
// kernel can be memory-bound with all cores busy only if this exceeds the streaming
// bandwidth divided by the core count.
void BM_VecDotInCache(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const auto level = static_cast<IsaLevel>(state.range(1));
  if (!CpuSupports(level)) {
    state.SkipWithError("the CPU lacks this ISA level");
    return;
  }
  const TypeTraits& tt = GetTypeTraits(type);
  const int64_t cols = 4096, rows = 64, row_bytes = RowBytes(tt, cols);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> d(0, 0.05f);
  std::vector<float> row(cols);
  std::vector<uint8_t> w(rows * row_bytes);
  for (int64_t r = 0; r < rows; ++r) {
    for (float& v : row) v = d(rng);
    QuantizeRow(type, row.data(), w.data() + r * row_bytes, cols);
  }
  const GgmlType act = VecDotActivationType(type);
  std::vector<uint8_t> xq(RowBytes(GetTypeTraits(act), cols));
  QuantizeActivation(act, row.data(), xq.data(), cols);
  const VecDotFn dot = GetVecDot(type, level);
  for (auto _ : state) {
    float s = 0;
    for (int64_t r = 0; r < rows; ++r) s += dot(w.data() + r * row_bytes, xq.data(), cols);
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(w.size()));
  state.SetLabel(std::string(tt.name) + "/" + IsaLevelName(level));
}
BENCHMARK(BM_VecDotInCache)
    ->ArgsProduct({{static_cast<int64_t>(GgmlType::kQ8_0), static_cast<int64_t>(GgmlType::kQ4_0),
                    static_cast<int64_t>(GgmlType::kQ4_K), static_cast<int64_t>(GgmlType::kQ5_K),
                    static_cast<int64_t>(GgmlType::kQ6_K)},
                   {0, 1, 2}});

}  // namespace
}  // namespace moex::kcpu

BENCHMARK_MAIN();
