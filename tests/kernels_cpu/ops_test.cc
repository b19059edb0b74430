// The reference operators against plain, obviously-correct formulations, on random data
// with fresh seeds, odd sizes and poisoned outputs.
#include "kernels_cpu/ops.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels_cpu/attention.h"
#include "kernels_cpu/quant.h"

namespace moex::kcpu {
namespace {

uint64_t FreshSeed() {
  const uint64_t s = std::random_device{}();
  ::testing::Test::RecordProperty("seed", std::to_string(s));
  return s;
}

std::vector<float> Random(std::mt19937_64& rng, int64_t n, float sd = 1.0f) {
  std::normal_distribution<float> d(0, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class MatMulTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(MatMulTest, EqualsDequantisedNaiveProduct) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  const TypeTraits& tt = GetTypeTraits(GetParam());
  const int64_t cols = tt.block_elems == 256 ? 512 : 96;  // several blocks per row
  const int64_t rows = 37, n_tok = 5;                     // odd on purpose
  const std::vector<float> wf = Random(rng, rows * cols, 0.1f);
  std::vector<uint8_t> wq(rows * RowBytes(tt, cols));
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeRow(tt.type, wf.data() + r * cols, wq.data() + r * RowBytes(tt, cols), cols);
  }
  std::vector<float> wd(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(tt.type, wq.data() + r * RowBytes(tt, cols), wd.data() + r * cols, cols);
  }
  const std::vector<float> x = Random(rng, n_tok * cols);
  std::vector<float> y(n_tok * rows, kNaN);
  MatMul(tt.type, wq.data(), rows, cols, x.data(), n_tok, y.data());
  for (int64_t t = 0; t < n_tok; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0;
      for (int64_t k = 0; k < cols; ++k) ref += double{wd[r * cols + k]} * x[t * cols + k];
      EXPECT_NEAR(y[t * rows + r], ref, 1e-4 * (1 + std::abs(ref))) << "t=" << t << " r=" << r;
    }
  }
}

// Quantised weights take MatMul's integer path (x rounded to 8 bits): vec_dot_test.cc
// checks them against this same product with the bound that rounding allows.
INSTANTIATE_TEST_SUITE_P(Types, MatMulTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16),
                         [](const auto& info) { return GetTypeTraits(info.param).name; });

TEST(RmsNormTest, UnitRootMeanSquareTimesWeight) {
  std::mt19937_64 rng(FreshSeed());
  const int64_t n = 129;
  const std::vector<float> x = Random(rng, n), w = Random(rng, n);
  std::vector<float> y(n, kNaN);
  RmsNorm(x.data(), w.data(), n, 1e-6f, y.data());
  double ss = 0;
  for (float v : x) ss += double{v} * v;
  const double inv = 1.0 / std::sqrt(ss / n + 1e-6);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y[i], x[i] * inv * w[i], 1e-5);
}

TEST(RopeTest, RotatesPairsByPositionAngle) {
  std::mt19937_64 rng(FreshSeed());
  const int64_t heads = 3, hd = 16, n_rot = 12, pos = 7;
  const float base = 10000.0f;
  for (bool neox : {false, true}) {
    std::vector<float> x = Random(rng, heads * hd), y = x;
    Rope(y.data(), heads, hd, n_rot, pos, base, neox);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < n_rot / 2; ++i) {
        const int64_t a = h * hd + (neox ? i : 2 * i),
                      b = h * hd + (neox ? i + n_rot / 2 : 2 * i + 1);
        const double th = pos * std::pow(double{base}, -2.0 * i / n_rot);
        EXPECT_NEAR(y[a], x[a] * std::cos(th) - x[b] * std::sin(th), 1e-4);
        EXPECT_NEAR(y[b], x[a] * std::sin(th) + x[b] * std::cos(th), 1e-4);
      }
      for (int64_t d = n_rot; d < hd; ++d) EXPECT_EQ(y[h * hd + d], x[h * hd + d]);
    }
  }
}

TEST(RopeTest, PositionZeroIsIdentity) {
  std::mt19937_64 rng(FreshSeed());
  std::vector<float> x = Random(rng, 64), y = x;
  Rope(y.data(), 2, 32, 32, 0, 10000.0f, true);
  EXPECT_EQ(x, y);
}

TEST(SoftmaxTest, SumsToOneAndKeepsOrderEvenForHugeLogits) {
  std::vector<float> x = {1000.0f, 999.0f, -5.0f, 1000.0f};
  Softmax(x.data(), 4);
  EXPECT_NEAR(x[0] + x[1] + x[2] + x[3], 1.0f, 1e-6);
  EXPECT_FLOAT_EQ(x[0], x[3]);
  EXPECT_GT(x[1], x[2]);
  EXPECT_NEAR(x[0] / x[1], std::exp(1.0f), 1e-4);
}

TEST(AttentionTest, EqualsNaiveCausalGqa) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  AttentionShape s{6, 2, 8, 1.0f / std::sqrt(8.0f)};
  const int64_t pos0 = 3, n = 4, kv_stride = s.n_head_kv * s.head_dim + 3;  // padded rows
  const std::vector<float> q = Random(rng, n * s.n_head * s.head_dim);
  const std::vector<float> k = Random(rng, (pos0 + n) * kv_stride);
  const std::vector<float> v = Random(rng, (pos0 + n) * kv_stride);
  std::vector<float> out(n * s.n_head * s.head_dim, kNaN);
  CausalAttention(s, q.data(), n, pos0, k.data(), v.data(), kv_stride, out.data());
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < s.n_head; ++h) {
      const int64_t kvh = h / (s.n_head / s.n_head_kv);
      std::vector<double> sc(pos0 + t + 1);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j <= pos0 + t; ++j) {
        double d = 0;
        for (int64_t c = 0; c < s.head_dim; ++c) {
          d += double{q[(t * s.n_head + h) * s.head_dim + c]} *
               k[j * kv_stride + kvh * s.head_dim + c];
        }
        sc[j] = d * s.scale;
        mx = std::max(mx, sc[j]);
      }
      for (double& e : sc) sum += (e = std::exp(e - mx));
      for (int64_t c = 0; c < s.head_dim; ++c) {
        double o = 0;
        for (int64_t j = 0; j <= pos0 + t; ++j)
          o += sc[j] / sum * v[j * kv_stride + kvh * s.head_dim + c];
        EXPECT_NEAR(out[(t * s.n_head + h) * s.head_dim + c], o, 1e-5);
      }
    }
  }
}

}  // namespace
}  // namespace moex::kcpu
