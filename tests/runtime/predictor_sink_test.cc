// PredictorMeter's guess sink (what `moex trace --predict` records): every cross-layer
// guess, once, for the right layer and distance, equal to the guess the meter scores.
#include <cmath>
#include <map>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "predictor/expert_predictor.h"

namespace moex {
namespace {

TEST(PredictorSinkTest, HandsOutEveryGuessOnce) {
  const int64_t E = 16, NE = 8, K = 2, L = 4, T = 3, D = 2;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd(0, 1);
  // A different router per layer, so a guess for the wrong layer would show.
  std::vector<std::vector<float>> routers(L, std::vector<float>(NE * E));
  std::vector<float> ones(E, 1.0f);
  std::vector<PredictorLayer> layers;
  for (auto& r : routers) {
    for (float& x : r) x = nd(rng);
    layers.push_back({WeightMatrix{kcpu::GgmlType::kF32, reinterpret_cast<const uint8_t*>(r.data()),
                                   NE, E, E * 4},
                      ones.data()});
  }
  PredictorMeter m(layers, E, NE, K, 1e-6f, D);
  std::map<std::tuple<int, int, int64_t>, std::vector<int32_t>> got;  // (p, d, layer)
  m.set_guess_sink([&](int p, int d, int64_t layer, int64_t n, const int32_t* ids) {
    EXPECT_EQ(n, T);
    auto [it, fresh] = got.emplace(std::make_tuple(p, d, layer), std::vector<int32_t>());
    EXPECT_TRUE(fresh) << "guess for layer " << layer << " at distance " << d << " twice";
    it->second.assign(ids, ids + n * K);
  });
  std::vector<std::vector<float>> h(L, std::vector<float>(T * E));
  for (auto& v : h) {
    for (float& x : v) x = nd(rng);
  }
  std::vector<int32_t> truth(T * K, 0);
  for (int64_t t = 0; t < T; ++t) truth[t * K + 1] = 1;
  for (int64_t l = 0; l < L; ++l) m.OnLayer(l, T, h[l].data(), h[l].data(), truth.data());
  // Guesses for layers d..L-1 at each distance, from both gate predictors.
  EXPECT_EQ(got.size(), 2u * ((L - 1) + (L - 2)));
  for (int d = 1; d <= D; ++d) {
    for (int64_t l = d; l < L; ++l) {
      std::vector<int32_t> want;
      GateTopK(layers[l].router, h[l - d].data(), T, K, &want);
      EXPECT_EQ(got[std::make_tuple(0, d, l)], want) << "layer " << l << " d " << d;
      EXPECT_EQ(got[std::make_tuple(1, d, l)].size(), static_cast<size_t>(T * K));
    }
  }
}

}  // namespace
}  // namespace moex
