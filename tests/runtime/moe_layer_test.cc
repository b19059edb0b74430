// The router and the MoE layer against a per-token naive computation.
#include "experts/moe_layer.h"

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels_cpu/quant.h"

namespace moex {
namespace {

struct Stack {
  std::vector<float> data;
  ExpertStack view;
};

Stack MakeStack(std::mt19937_64& rng, int64_t n, int64_t rows, int64_t cols) {
  Stack s;
  std::normal_distribution<float> d(0, 0.2f);
  s.data.resize(n * rows * cols);
  for (float& x : s.data) x = d(rng);
  s.view = ExpertStack{kcpu::GgmlType::kF32,
                       reinterpret_cast<const uint8_t*>(s.data.data()),
                       n,
                       rows,
                       cols,
                       cols * 4};
  return s;
}

std::vector<float> NaiveFfn(const float* g, const float* u, const float* dn, const float* x,
                            int64_t E, int64_t F) {
  std::vector<float> h(F), y(E, 0.0f);
  for (int64_t f = 0; f < F; ++f) {
    double a = 0, b = 0;
    for (int64_t e = 0; e < E; ++e) {
      a += double{g[f * E + e]} * x[e];
      b += double{u[f * E + e]} * x[e];
    }
    h[f] = static_cast<float>(a / (1 + std::exp(-a)) * b);
  }
  for (int64_t e = 0; e < E; ++e) {
    double s = 0;
    for (int64_t f = 0; f < F; ++f) s += double{dn[e * F + f]} * h[f];
    y[e] = static_cast<float>(s);
  }
  return y;
}

class MoeLayerTest : public ::testing::TestWithParam<bool> {};

TEST_P(MoeLayerTest, EqualsWeightedSumOfSelectedExpertsPerToken) {
  const bool norm_topk = GetParam();
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  const int64_t E = 40, F = 24, NE = 7, K = 3, T = 9;
  Stack router = MakeStack(rng, 1, NE, E), gate = MakeStack(rng, NE, F, E),
        up = MakeStack(rng, NE, F, E), down = MakeStack(rng, NE, E, F);
  MoeWeights w;
  w.router = router.view.Expert(0);
  w.gate = gate.view;
  w.up = up.view;
  w.down = down.view;
  std::normal_distribution<float> d(0, 1);
  std::vector<float> x(T * E);
  for (float& v : x) v = d(rng);

  Routing r;
  Route(w, RouterConfig{K, norm_topk}, x.data(), T, &r);
  std::vector<float> out(T * E, std::nanf(""));
  MoeForward(w, r, x.data(), T, out.data());

  for (int64_t t = 0; t < T; ++t) {
    // Router: softmax over all experts, the K largest, in descending order.
    std::vector<double> p(NE);
    double z = 0;
    for (int64_t e = 0; e < NE; ++e) {
      double s = 0;
      for (int64_t c = 0; c < E; ++c) s += double{router.data[e * E + c]} * x[t * E + c];
      z += (p[e] = std::exp(s));
    }
    for (double& v : p) v /= z;
    std::vector<int> order(NE);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    double sel = 0;
    for (int j = 0; j < K; ++j) sel += p[order[j]];
    std::vector<double> y(E, 0.0);
    for (int j = 0; j < K; ++j) {
      const int e = order[j];
      ASSERT_EQ(r.experts[t * K + j], e) << "token " << t << " rank " << j;
      const double wt = norm_topk ? p[e] / sel : p[e];
      EXPECT_NEAR(r.weights[t * K + j], wt, 1e-5);
      const std::vector<float> ye =
          NaiveFfn(gate.data.data() + e * F * E, up.data.data() + e * F * E,
                   down.data.data() + e * E * F, x.data() + t * E, E, F);
      for (int64_t c = 0; c < E; ++c) y[c] += wt * ye[c];
    }
    for (int64_t c = 0; c < E; ++c) EXPECT_NEAR(out[t * E + c], y[c], 1e-4) << t << "," << c;
  }
}

INSTANTIATE_TEST_SUITE_P(Renormalised, MoeLayerTest, ::testing::Bool());

TEST(MoeLayerTest, SharedExpertIsAddedWithItsSigmoidGate) {
  std::mt19937_64 rng(5);
  const int64_t E = 32, F = 16, NE = 4, T = 3;
  Stack router = MakeStack(rng, 1, NE, E), gate = MakeStack(rng, NE, F, E),
        up = MakeStack(rng, NE, F, E), down = MakeStack(rng, NE, E, F);
  Stack sg = MakeStack(rng, 1, F, E), su = MakeStack(rng, 1, F, E), sd = MakeStack(rng, 1, E, F),
        sgate = MakeStack(rng, 1, 1, E);
  MoeWeights w;
  w.router = router.view.Expert(0);
  w.gate = gate.view;
  w.up = up.view;
  w.down = down.view;
  std::vector<float> x(T * E);
  std::normal_distribution<float> d(0, 1);
  for (float& v : x) v = d(rng);
  Routing r;
  Route(w, RouterConfig{2, false}, x.data(), T, &r);
  std::vector<float> routed(T * E), with_shared(T * E);
  MoeForward(w, r, x.data(), T, routed.data());
  w.shared_gate = sg.view.Expert(0);
  w.shared_up = su.view.Expert(0);
  w.shared_down = sd.view.Expert(0);
  w.shared_gate_inp = sgate.view.Expert(0);
  MoeForward(w, r, x.data(), T, with_shared.data());
  for (int64_t t = 0; t < T; ++t) {
    double logit = 0;
    for (int64_t c = 0; c < E; ++c) logit += double{sgate.data[c]} * x[t * E + c];
    const double s = 1 / (1 + std::exp(-logit));
    const std::vector<float> ys =
        NaiveFfn(sg.data.data(), su.data.data(), sd.data.data(), x.data() + t * E, E, F);
    for (int64_t c = 0; c < E; ++c) {
      EXPECT_NEAR(with_shared[t * E + c], routed[t * E + c] + s * ys[c], 1e-4);
    }
  }
}

}  // namespace
}  // namespace moex
