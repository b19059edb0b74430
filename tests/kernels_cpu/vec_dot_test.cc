// The integer vec_dots (vec_dot.h) at every ISA level the CPU has, against the scalar
// reference and against the float formula (both rows dequantised, dot in double); the
// vectorised activation quantisers against QuantizeRow; MatMul's decode path against the
// dequantise-then-dot path, within the error the 8-bit activation adds. Random block
// bytes (so Q2_K/Q3_K, which moex cannot quantise, are covered too), fresh seeds,
// odd numbers of blocks, extreme scales, NaN-poisoned outputs.
#include "kernels_cpu/vec_dot.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels_cpu/cpu_features.h"
#include "kernels_cpu/ops.h"
#include "kernels_cpu/quant.h"
#include "tests/kernels_cpu/kernel_test_util.h"

namespace moex::kcpu {
namespace {

using ::moex::kcpu::testing::FreshSeed;
using ::moex::kcpu::testing::kIntegerTypes;
using ::moex::kcpu::testing::Levels;
using ::moex::kcpu::testing::RandomFloats;
using ::moex::kcpu::testing::RandomRows;
using ::moex::kcpu::testing::ScaleOffsets;

struct FloatRef {
  double dot = 0;  // sum of dequantised w * dequantised x
  double abs = 0;  // sum of |w * x|: the scale of the float rounding error
};

FloatRef Dequantised(GgmlType wt, const uint8_t* w, GgmlType xt, const uint8_t* x, int64_t n) {
  std::vector<float> wf(n), xf(n);
  DequantizeRow(wt, w, wf.data(), n);
  DequantizeRow(xt, x, xf.data(), n);
  FloatRef r;
  for (int64_t i = 0; i < n; ++i) {
    r.dot += double{wf[i]} * xf[i];
    r.abs += std::abs(double{wf[i]} * xf[i]);
  }
  return r;
}

class VecDotTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(VecDotTest, EveryLevelMatchesScalarAndFloatReference) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  const GgmlType wt = GetParam();
  const GgmlType xt = VecDotActivationType(wt);
  ASSERT_NE(xt, GgmlType::kF32);
  const int64_t blk =
      GetTypeTraits(xt).block_elems == 256 || GetTypeTraits(wt).block_elems == 256 ? 256 : 32;
  const VecDotFn ref = GetVecDot(wt, IsaLevel::kScalar);
  ASSERT_NE(ref, nullptr);
  // Odd block counts (1, 3, 7, 17) and scales from tiny to huge on both sides.
  const int64_t blocks[] = {1, 3, 7, 17};
  const float w_scales[] = {1e-3f, 0.05f, 1.0f, 3e4f};
  // Q8_0 keeps its d in fp16 (at most 65504, so |x| below ~8e6); Q8_K's d is fp32.
  const std::vector<float> x_sds = xt == GgmlType::kQ8_K ? std::vector<float>{1e-20f, 1.0f, 1e20f}
                                                         : std::vector<float>{1e-3f, 1.0f, 1e4f};
  for (int64_t nb : blocks) {
    const int64_t n = nb * blk;
    for (float ws : w_scales) {
      for (float xs : x_sds) {
        const std::vector<uint8_t> w = RandomRows(wt, 1, n, ws, rng);
        std::vector<float> xf = RandomFloats(n, xs, rng);
        xf[rng() % n] *= 50.0f;  // an outlier: most codes of its block become small
        std::vector<uint8_t> xq(RowBytes(GetTypeTraits(xt), n));
        QuantizeRow(xt, xf.data(), xq.data(), n);
        const FloatRef fr = Dequantised(wt, w.data(), xt, xq.data(), n);
        const float r = ref(w.data(), xq.data(), n);
        const double tol = 2e-5 * fr.abs + 1e-30;
        SCOPED_TRACE(::testing::Message() << GetTypeTraits(wt).name << " n=" << n
                                          << " w_scale=" << ws << " x_sd=" << xs);
        ASSERT_TRUE(std::isfinite(r));
        EXPECT_NEAR(r, fr.dot, tol) << "scalar reference vs float formula";
        for (IsaLevel level : Levels()) {
          const float v = GetVecDot(wt, level)(w.data(), xq.data(), n);
          EXPECT_NEAR(v, r, tol) << IsaLevelName(level) << " vs scalar reference";
          EXPECT_NEAR(v, fr.dot, tol) << IsaLevelName(level) << " vs float formula";
        }
      }
    }
  }
}

// Codes at the ends of their ranges (all bits set or clear) with the largest activation
// codes: the integer paths must neither saturate nor overflow.
TEST_P(VecDotTest, ExtremeCodesDoNotSaturate) {
  const GgmlType wt = GetParam();
  const GgmlType xt = VecDotActivationType(wt);
  const int64_t n = 256 * 3;
  for (uint8_t fill : {uint8_t{0x00}, uint8_t{0xFF}, uint8_t{0x80}, uint8_t{0x7F}}) {
    std::vector<uint8_t> w(RowBytes(GetTypeTraits(wt), n), fill);
    const TypeTraits& tt = GetTypeTraits(wt);
    for (int64_t b = 0; b < n / tt.block_elems; ++b) {
      for (int off : ScaleOffsets(wt)) {
        const uint16_t h = FloatToHalf(0.01f);
        std::memcpy(w.data() + b * tt.block_bytes + off, &h, 2);
      }
    }
    for (float sign : {1.0f, -1.0f}) {
      std::vector<float> xf(n, sign);
      std::vector<uint8_t> xq(RowBytes(GetTypeTraits(xt), n));
      QuantizeRow(xt, xf.data(), xq.data(), n);
      const FloatRef fr = Dequantised(wt, w.data(), xt, xq.data(), n);
      for (IsaLevel level : Levels()) {
        const float v = GetVecDot(wt, level)(w.data(), xq.data(), n);
        EXPECT_NEAR(v, fr.dot, 2e-5 * fr.abs + 1e-30)
            << IsaLevelName(level) << " fill=" << int{fill} << " sign=" << sign;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, VecDotTest, ::testing::ValuesIn(kIntegerTypes),
                         [](const ::testing::TestParamInfo<GgmlType>& i) {
                           return std::string(GetTypeTraits(i.param).name);
                         });

// F16/BF16 rows times F32 x at each SIMD level against a double-precision sum of the
// exactly widened weights; lengths that are not multiples of the vector widths.
TEST(FloatDotTest, HalfAndBf16MatchDoubleReference) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  for (GgmlType t : {GgmlType::kF16, GgmlType::kBF16}) {
    for (int64_t n : {1, 7, 15, 17, 63, 64, 65, 100, 1001}) {
      const std::vector<float> wf = RandomFloats(n, 0.1f, rng);
      const std::vector<float> x = RandomFloats(n, 1.0f, rng);
      std::vector<uint16_t> w(n);
      for (int64_t i = 0; i < n; ++i) {
        w[i] = t == GgmlType::kF16 ? FloatToHalf(wf[i]) : FloatToBf16(wf[i]);
      }
      double ref = 0, mag = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double wi = t == GgmlType::kF16 ? HalfToFloat(w[i]) : Bf16ToFloat(w[i]);
        ref += wi * x[i];
        mag += std::abs(wi * x[i]);
      }
      for (IsaLevel level : Levels()) {
        const FloatDotFn f = GetFloatDot(t, level);
        if (f == nullptr) continue;  // scalar: MatMul dequantises rows instead
        EXPECT_NEAR(f(w.data(), x.data(), n), ref, 1e-6 * mag + 1e-30)
            << GetTypeTraits(t).name << " n=" << n << " " << IsaLevelName(level);
      }
    }
  }
}

TEST(QuantizeActivationTest, SameBytesAsQuantizeRow) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  for (GgmlType t : {GgmlType::kQ8_K, GgmlType::kQ8_0}) {
    for (int64_t nb : {1, 5, 9}) {
      const int64_t n = nb * 256;
      for (float sd : {1e-30f, 1e-3f, 1.0f, 1e30f}) {
        std::vector<float> x = RandomFloats(n, sd, rng);
        // Special blocks: all zero, all equal (ties of the largest magnitude), halves.
        std::fill(x.begin(), x.begin() + 256, 0.0f);
        if (nb > 1) std::fill(x.begin() + 256, x.begin() + 512, -sd);
        if (nb > 2) {
          for (int j = 0; j < 256; ++j) x[512 + j] = 0.5f * static_cast<float>(j - 127);
        }
        const int64_t bytes = RowBytes(GetTypeTraits(t), n);
        std::vector<uint8_t> a(bytes, 0xAB), b(bytes, 0xCD);
        QuantizeRow(t, x.data(), a.data(), n);
        QuantizeActivation(t, x.data(), b.data(), n);
        EXPECT_EQ(a, b) << GetTypeTraits(t).name << " n=" << n << " sd=" << sd;
      }
    }
  }
}

// MatMul on quantised weights (x quantised once per token, integer vec_dots) against the exact
// product of the dequantised weights and the float x, one token (decode) and batches. The
// only extra error is x's 8-bit
// rounding: at most half a code step per value (plus the fp16 rounding of Q8_0's d), so
// |error| <= sum_i |w_i| * step_i * 0.57 bounds it.
class MatMulDecodeTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(MatMulDecodeTest, WithinActivationRoundingOfFloatProduct) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  const GgmlType wt = GetParam();
  const TypeTraits& tt = GetTypeTraits(wt);
  const int64_t xblk = GetTypeTraits(VecDotActivationType(wt)).block_elems;
  const int64_t cols = tt.block_elems == 256 ? 256 * 5 : 32 * 13;
  const int64_t rows = 41;
  const std::vector<uint8_t> w = [&] {
    std::vector<uint8_t> all;
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<uint8_t> row = RandomRows(wt, 1, cols, 0.01f, rng);
      all.insert(all.end(), row.begin(), row.end());
    }
    return all;
  }();
  std::vector<float> wd(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(wt, w.data() + r * RowBytes(tt, cols), wd.data() + r * cols, cols);
  }
  for (int64_t n_tok : {1, 2, 3, 4, 5, 9}) {
    const std::vector<float> x = RandomFloats(n_tok * cols, 1.0f, rng);
    std::vector<float> y(n_tok * rows, std::numeric_limits<float>::quiet_NaN());
    MatMul(wt, w.data(), rows, cols, x.data(), n_tok, y.data());
    for (int64_t t = 0; t < n_tok; ++t) {
      const float* xt = x.data() + t * cols;
      for (int64_t r = 0; r < rows; ++r) {
        double ref = 0, bound = 0, mag = 0;
        for (int64_t b = 0; b < cols / xblk; ++b) {
          float amax = 0;
          for (int64_t j = 0; j < xblk; ++j) amax = std::max(amax, std::abs(xt[b * xblk + j]));
          const double step = amax / 127.0;
          for (int64_t j = b * xblk; j < (b + 1) * xblk; ++j) {
            ref += double{wd[r * cols + j]} * xt[j];
            mag += std::abs(double{wd[r * cols + j]} * xt[j]);
            bound += std::abs(double{wd[r * cols + j]}) * step * 0.57;
          }
        }
        ASSERT_TRUE(std::isfinite(y[t * rows + r])) << "t=" << t << " r=" << r;
        EXPECT_NEAR(y[t * rows + r], ref, bound + 2e-5 * mag) << "t=" << t << " r=" << r;
      }
    }
  }
}

// Each token's outputs do not depend on the batch it came in (decode must equal prefill):
// the same x rows through MatMul one token at a time and all at once, bit for bit.
TEST_P(MatMulDecodeTest, BatchInvariant) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  const GgmlType wt = GetParam();
  const TypeTraits& tt = GetTypeTraits(wt);
  const int64_t cols = tt.block_elems == 256 ? 256 * 3 : 32 * 7;
  const int64_t rows = 19, n_tok = 11;
  std::vector<uint8_t> w;
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<uint8_t> row = RandomRows(wt, 1, cols, 0.01f, rng);
    w.insert(w.end(), row.begin(), row.end());
  }
  const std::vector<float> x = RandomFloats(n_tok * cols, 1.0f, rng);
  std::vector<float> all(n_tok * rows, std::numeric_limits<float>::quiet_NaN());
  MatMul(wt, w.data(), rows, cols, x.data(), n_tok, all.data());
  for (int64_t t = 0; t < n_tok; ++t) {
    std::vector<float> one(rows, std::numeric_limits<float>::quiet_NaN());
    MatMul(wt, w.data(), rows, cols, x.data() + t * cols, 1, one.data());
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_EQ(one[r], all[t * rows + r]) << "t=" << t << " r=" << r;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatMulDecodeTest, ::testing::ValuesIn(kIntegerTypes),
                         [](const ::testing::TestParamInfo<GgmlType>& i) {
                           return std::string(GetTypeTraits(i.param).name);
                         });

}  // namespace
}  // namespace moex::kcpu
