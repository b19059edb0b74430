// The batched (several tokens per weight row) vec_dot kernels of vec_dot.h against the
// one-token kernel of the same type and level, bit for bit: prefill results must not
// depend on how tokens are grouped (decode equals prefill, golden logits unchanged).
// Random blocks from fresh printed seeds, odd block and token counts, realistic and
// random-byte activations, extreme codes; then MatMul / MatMulMany (which dispatch to the
// batched kernels for >= 2 tokens) against one vec_dot per (row, token), with row counts
// that are not multiples of any block, row indirection, and NaN-poisoned outputs.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels_cpu/cpu_features.h"
#include "kernels_cpu/ops.h"
#include "kernels_cpu/quant.h"
#include "kernels_cpu/vec_dot.h"
#include "tests/kernels_cpu/kernel_test_util.h"

namespace moex::kcpu {
namespace {

using ::moex::kcpu::testing::FreshSeed;
using ::moex::kcpu::testing::kIntegerTypes;
using ::moex::kcpu::testing::Levels;
using ::moex::kcpu::testing::RandomFloats;
using ::moex::kcpu::testing::RandomRows;
using ::moex::kcpu::testing::ScaleOffsets;

bool SameBits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// `tokens` activation rows of n values in `act`: quantised from random floats (real
// activations, with an outlier per row), or, when raw, random bytes throughout (codes of
// -128, bsums that do not match the codes: the kernels must agree whatever the bytes).
std::vector<uint8_t> RandomActivations(GgmlType act, int64_t tokens, int64_t n, bool raw,
                                       std::mt19937_64& rng) {
  const int64_t xb = RowBytes(GetTypeTraits(act), n);
  std::vector<uint8_t> xq(tokens * xb);
  if (raw) {
    std::uniform_int_distribution<int> byte(0, 255);
    for (uint8_t& b : xq) b = static_cast<uint8_t>(byte(rng));
    // Q8_K's d is an fp32 at the start of each 292-byte block: keep it finite.
    std::uniform_real_distribution<float> d(-2.0f, 2.0f);
    const TypeTraits& at = GetTypeTraits(act);
    for (int64_t b = 0; b < tokens * (n / at.block_elems); ++b) {
      if (act == GgmlType::kQ8_K) {
        const float v = d(rng);
        std::memcpy(xq.data() + b * at.block_bytes, &v, 4);
      } else {
        const uint16_t h = FloatToHalf(d(rng));
        std::memcpy(xq.data() + b * at.block_bytes, &h, 2);
      }
    }
    return xq;
  }
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<float> xf = RandomFloats(n, 1.0f, rng);
    xf[rng() % n] *= 40.0f;
    QuantizeActivation(act, xf.data(), xq.data() + t * xb, n);
  }
  return xq;
}

// A batched kernel's scratch must be 32-byte aligned.
void* Align32(float* p) {
  return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(p) + 31) & ~uintptr_t{31});
}

// Every integer type: those without a batched kernel must say so (nullptr) rather than
// return a kernel of another type.
TEST(VecDotBatchTest, AvailableExactlyWhereExpected) {
  for (GgmlType t : kIntegerTypes) {
    for (IsaLevel level : Levels()) {
      const bool want =
          level == IsaLevel::kAvx512 && (t == GgmlType::kQ4_K || t == GgmlType::kQ5_K ||
                                         t == GgmlType::kQ6_K || t == GgmlType::kQ8_0);
      EXPECT_EQ(GetVecDotBatch(t, level) != nullptr, want)
          << GetTypeTraits(t).name << " " << IsaLevelName(level);
    }
  }
  EXPECT_EQ(GetVecDotBatch(GgmlType::kF32), nullptr);
  EXPECT_EQ(GetVecDotBatch(GgmlType::kF16), nullptr);
  EXPECT_EQ(GetVecDotBatch(GgmlType::kQ4_K), GetVecDotBatch(GgmlType::kQ4_K, BestIsaLevel()));
}

// One row against 1..17 tokens: each output equals the one-token kernel bit for bit, and
// nothing past out[n_x - 1] is written.
TEST(VecDotBatchTest, EqualsOneTokenKernelBitForBit) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  int checked = 0;
  for (GgmlType wt : kIntegerTypes) {
    for (IsaLevel level : Levels()) {
      const VecDotBatchFn batch = GetVecDotBatch(wt, level);
      if (batch == nullptr) continue;
      const VecDotFn one = GetVecDot(wt, level);
      const GgmlType act = VecDotActivationType(wt);
      for (int64_t nb : {1, 3, 7, 9, 17}) {
        const int64_t n = nb * (act == GgmlType::kQ8_K ? 256 : 32);
        for (float ws : {1e-3f, 0.05f, 3e4f}) {
          for (bool raw : {false, true}) {
            for (int nx = 1; nx <= 17; ++nx) {
              SCOPED_TRACE(::testing::Message()
                           << GetTypeTraits(wt).name << " " << IsaLevelName(level) << " n=" << n
                           << " w_scale=" << ws << " raw_x=" << raw << " tokens=" << nx);
              // Three rows a call, outputs strided with a poisoned gap after each token's.
              constexpr int64_t kRows = 3, kStride = kRows + 2;
              const std::vector<uint8_t> w = RandomRows(wt, kRows, n, ws, rng);
              const int64_t wb = RowBytes(GetTypeTraits(wt), n);
              const std::vector<uint8_t> xq = RandomActivations(act, nx, n, raw, rng);
              const int64_t xb = RowBytes(GetTypeTraits(act), n);
              // Tokens in shuffled order, as a MoE expert's rows arrive.
              std::vector<const void*> xs(nx);
              for (int j = 0; j < nx; ++j) xs[j] = xq.data() + ((j * 7) % nx) * xb;
              std::vector<float> out(nx * kStride, std::numeric_limits<float>::quiet_NaN());
              std::vector<float> scratch(VecDotBatchScratchBytes(wt, n) / 4 + 8);
              batch(w.data(), wb, kRows, xs.data(), nx, n, out.data(), kStride,
                    Align32(scratch.data()));
              for (int j = 0; j < nx; ++j) {
                for (int64_t r = 0; r < kStride; ++r) {
                  const float got = out[j * kStride + r];
                  if (r >= kRows) {
                    EXPECT_TRUE(std::isnan(got)) << "token " << j << " wrote past row " << kRows;
                    continue;
                  }
                  const float want = one(w.data() + r * wb, xs[j], n);
                  ASSERT_TRUE(SameBits(got, want)) << "token " << j << " row " << r << ": batch "
                                                   << got << " one-token " << want;
                }
              }
              ++checked;
            }
          }
        }
      }
    }
  }
  if (checked == 0) GTEST_SKIP() << "no batched kernel on this CPU";
}

// All-set / all-clear / alternating codes with the largest activation codes: no
// saturation in the shared decode either.
TEST(VecDotBatchTest, ExtremeCodesBitForBit) {
  for (GgmlType wt : kIntegerTypes) {
    for (IsaLevel level : Levels()) {
      const VecDotBatchFn batch = GetVecDotBatch(wt, level);
      if (batch == nullptr) continue;
      const GgmlType act = VecDotActivationType(wt);
      const int64_t n = 256 * 3;
      const int64_t xb = RowBytes(GetTypeTraits(act), n);
      for (uint8_t fill : {uint8_t{0x00}, uint8_t{0xFF}, uint8_t{0x80}, uint8_t{0x7F}}) {
        std::vector<uint8_t> w(RowBytes(GetTypeTraits(wt), n), fill);
        const TypeTraits& tt = GetTypeTraits(wt);
        for (int64_t b = 0; b < n / tt.block_elems; ++b) {
          for (int off : ScaleOffsets(wt)) {
            const uint16_t h = FloatToHalf(0.01f);
            std::memcpy(w.data() + b * tt.block_bytes + off, &h, 2);
          }
        }
        std::vector<uint8_t> xq(5 * xb);
        for (int t = 0; t < 5; ++t) {
          const std::vector<float> xf(n, t % 2 ? -1.0f : 1.0f + t);
          QuantizeActivation(act, xf.data(), xq.data() + t * xb, n);
        }
        const void* xs[5];
        for (int t = 0; t < 5; ++t) xs[t] = xq.data() + t * xb;
        float out[5];
        std::vector<float> scratch(VecDotBatchScratchBytes(wt, n) / 4 + 8);
        batch(w.data(), static_cast<int64_t>(w.size()), 1, xs, 5, n, out, 1,
              Align32(scratch.data()));
        for (int t = 0; t < 5; ++t) {
          EXPECT_TRUE(SameBits(out[t], GetVecDot(wt, level)(w.data(), xs[t], n)))
              << GetTypeTraits(wt).name << " fill=" << int{fill} << " token " << t;
        }
      }
    }
  }
}

// MatMul and MatMulMany (the prefill dispatch) against one vec_dot per (row, token) of the
// same quantised activations: rows that are not multiples of the 4-token groups nor of a
// task's row block, 2..17 tokens, tokens through a row index list, outputs poisoned with
// NaN so that a skipped one shows.
TEST(VecDotBatchTest, MatMulManyEqualsOneVecDotPerOutput) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  for (GgmlType wt : {GgmlType::kQ4_K, GgmlType::kQ6_K, GgmlType::kQ5_K, GgmlType::kQ8_0}) {
    const GgmlType act = VecDotActivationType(wt);
    const VecDotFn one = GetVecDot(wt);
    for (int64_t rows : {1, 37, 261}) {
      for (int64_t cols : {256, 768, 2304}) {
        const int64_t rb = RowBytes(GetTypeTraits(wt), cols);
        const int64_t xb = RowBytes(GetTypeTraits(act), cols);
        for (int64_t tokens : {2, 3, 5, 8, 13, 17}) {
          SCOPED_TRACE(::testing::Message() << GetTypeTraits(wt).name << " rows=" << rows
                                            << " cols=" << cols << " tokens=" << tokens);
          const std::vector<uint8_t> w = RandomRows(wt, rows, cols, 0.05f, rng);
          // The layer input has more rows than the task reads; the task takes a shuffled
          // subset (a MoE expert's tokens).
          const int64_t x_rows_total = tokens + 3;
          const std::vector<float> x = RandomFloats(x_rows_total * cols, 1.0f, rng);
          std::vector<int32_t> pick(tokens);
          for (int64_t t = 0; t < tokens; ++t) {
            pick[t] = static_cast<int32_t>((t * 5 + 2) % x_rows_total);
          }
          std::vector<uint8_t> xq(x_rows_total * xb);
          for (int64_t r = 0; r < x_rows_total; ++r) {
            QuantizeActivation(act, x.data() + r * cols, xq.data() + r * xb, cols);
          }
          const float nan = std::numeric_limits<float>::quiet_NaN();
          std::vector<float> y_direct(tokens * rows, nan), y_many(tokens * rows, nan),
              y_second(tokens * rows, nan);
          MatMul(wt, w.data(), rows, cols, x.data(), tokens, y_direct.data());
          // Two tasks on the same x in one region (shared activation quantisation), one
          // through the row index list.
          const MatMulTask tasks[2] = {
              {wt, w.data(), rows, cols, x.data(), pick.data(), tokens, y_many.data()},
              {wt, w.data(), rows, cols, x.data(), nullptr, tokens, y_second.data()}};
          MatMulMany(tasks);
          for (int64_t t = 0; t < tokens; ++t) {
            for (int64_t r = 0; r < rows; ++r) {
              const uint8_t* wr = w.data() + r * rb;
              const float want = one(wr, xq.data() + t * xb, cols);
              const float want_pick = one(wr, xq.data() + pick[t] * xb, cols);
              ASSERT_TRUE(SameBits(y_direct[t * rows + r], want))
                  << "MatMul row " << r << " token " << t << ": " << y_direct[t * rows + r]
                  << " vs " << want;
              ASSERT_TRUE(SameBits(y_second[t * rows + r], want))
                  << "MatMulMany row " << r << " token " << t;
              ASSERT_TRUE(SameBits(y_many[t * rows + r], want_pick))
                  << "MatMulMany (row list) row " << r << " token " << t;
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace moex::kcpu
