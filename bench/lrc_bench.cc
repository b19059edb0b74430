// `moex lrc`'s stack passes, per token of one layer: SCH's lazy stack at each segment
// length, in its portable coding and in the AVX-512 one where the CPU has it, and the four
// policies' Mattson stacks. Routing of one 4096-token sequence, 128 experts, top-8,
// drawn like tools/synth_trace.py's (a skewed popularity per layer, a "topic" per 64 tokens
// favouring a few experts, Gumbel top-k), so the stacks see realistic depths.
//
//   build/release/bench/moex_lrc_bench --benchmark_repetitions=5 \
//     --benchmark_report_aggregates_only=true
// items_per_second is tokens a second: 1e6 / it is the cost in µs a token.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels_cpu/cpu_features.h"
#include "runtime/trace/lrc_internal.h"

namespace moex {
namespace {

constexpr int kE = 128, kK = 8, kT = 4096;

struct Routing {
  std::vector<uint16_t> ids;
  std::vector<float> weights;
};

const Routing& Layer() {
  static const Routing r = [] {
    Routing out;
    std::mt19937_64 rng(5);
    std::normal_distribution<double> base_d(0, 1.0), topic_d(0, 1.5);
    std::uniform_real_distribution<double> u(1e-12, 1.0);
    std::vector<double> base(kE), topic(kE), logit(kE);
    for (double& b : base) b = base_d(rng);
    std::vector<int> order(kE);
    for (int t = 0; t < kT; ++t) {
      if (t % 64 == 0) {
        for (double& x : topic) x = topic_d(rng);
      }
      for (int e = 0; e < kE; ++e) logit[e] = base[e] + topic[e] - std::log(-std::log(u(rng)));
      for (int e = 0; e < kE; ++e) order[e] = e;
      std::partial_sort(order.begin(), order.begin() + kK, order.end(),
                        [&](int a, int b) { return logit[a] > logit[b]; });
      for (int j = 0; j < kK; ++j) {
        out.ids.push_back(static_cast<uint16_t>(order[j]));
        out.weights.push_back(static_cast<float>(1.0 / (1.0 + std::exp(-logit[order[j]]))));
      }
    }
    return out;
  }();
  return r;
}

bool HaveAvx512() { return kcpu::CpuSupports(kcpu::IsaLevel::kAvx512); }

// args: m, coding (0 portable, 1 AVX-512)
void BM_Sch(benchmark::State& state) {
  const int m = static_cast<int>(state.range(0));
  const bool avx512 = state.range(1) == 1;
  if (avx512 && !HaveAvx512()) {
    state.SkipWithError("no AVX-512 here");
    return;
  }
  const Routing& r = Layer();
  std::vector<uint64_t> stat(kE);
  for (auto _ : state) {
    std::fill(stat.begin(), stat.end(), 0);
    if (avx512) {
      lrc::AddSchRanksAvx512(r.ids.data(), kT, kK, kE, m, stat.data());
    } else {
      lrc::AddSchRanksLinked(r.ids.data(), kT, kK, kE, m, stat.data());
    }
    benchmark::DoNotOptimize(stat.data());
  }
  state.SetItemsProcessed(state.iterations() * kT);
}
BENCHMARK(BM_Sch)->ArgsProduct({{4, 16, 64, 256}, {0, 1}})->ArgNames({"m", "avx512"});

// arg: policy (lru, lfu, score, belady)
void BM_Policy(benchmark::State& state) {
  const Policy p = static_cast<Policy>(state.range(0));
  state.SetLabel(kPolicyNames[static_cast<int>(p)]);
  const Routing& r = Layer();
  std::vector<uint64_t> stat(kE);
  for (auto _ : state) {
    std::fill(stat.begin(), stat.end(), 0);
    lrc::AddPolicyDepths(p, r.ids.data(), r.weights.data(), nullptr, kT, kK, kE, stat.data());
    benchmark::DoNotOptimize(stat.data());
  }
  state.SetItemsProcessed(state.iterations() * kT);
}
BENCHMARK(BM_Policy)->DenseRange(0, kNumPolicies - 1)->ArgName("policy");

}  // namespace
}  // namespace moex

BENCHMARK_MAIN();
