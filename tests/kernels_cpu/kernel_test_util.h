// Random inputs shared by the integer-kernel tests (vec_dot_test, vec_dot_batch_test):
// fresh seeds, random block bytes with finite scales, the ISA levels this CPU has.
#ifndef MOEX_TESTS_KERNELS_CPU_KERNEL_TEST_UTIL_H_
#define MOEX_TESTS_KERNELS_CPU_KERNEL_TEST_UTIL_H_

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels_cpu/cpu_features.h"
#include "kernels_cpu/quant.h"

namespace moex::kcpu::testing {

// A new seed per run, printed and recorded so a failure can be repeated.
inline uint64_t FreshSeed() {
  const uint64_t s = std::random_device{}();
  ::testing::Test::RecordProperty("seed", std::to_string(s));
  std::printf("seed %llu\n", static_cast<unsigned long long>(s));
  return s;
}

// Every weight type with an integer vec_dot.
inline constexpr GgmlType kIntegerTypes[] = {
    GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0,
    GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

// Byte offsets of a block's fp16 scale fields (d, then dmin/m where the format has one).
inline std::vector<int> ScaleOffsets(GgmlType t) {
  switch (t) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ8_0:
      return {0};
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_1:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
      return {0, 2};
    case GgmlType::kQ2_K:
      return {80, 82};
    case GgmlType::kQ3_K:
      return {108};
    case GgmlType::kQ6_K:
      return {208};
    default:
      return {};
  }
}

// `rows` rows of n values in random blocks: random code and sub-scale bytes (every
// pattern, so Q2_K/Q3_K, which moex cannot quantise, are covered), fp16 scales of
// magnitude about `scale` with a random sign.
inline std::vector<uint8_t> RandomRows(GgmlType t, int64_t rows, int64_t n, float scale,
                                       std::mt19937_64& rng) {
  const TypeTraits& tt = GetTypeTraits(t);
  std::vector<uint8_t> w(rows * RowBytes(tt, n));
  std::uniform_int_distribution<int> byte(0, 255);
  for (uint8_t& b : w) b = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> u(0.25f, 1.0f);
  for (int64_t b = 0; b < rows * (n / tt.block_elems); ++b) {
    for (int off : ScaleOffsets(t)) {
      const float v = scale * u(rng);
      const uint16_t h = FloatToHalf(byte(rng) & 1 ? -v : v);
      std::memcpy(w.data() + b * tt.block_bytes + off, &h, 2);
    }
  }
  return w;
}

inline std::vector<float> RandomFloats(int64_t n, float sd, std::mt19937_64& rng) {
  std::normal_distribution<float> d(0, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// The ISA levels this CPU can run (the others are named on stdout as skipped).
inline std::vector<IsaLevel> Levels() {
  std::vector<IsaLevel> v;
  for (IsaLevel l : {IsaLevel::kScalar, IsaLevel::kAvx2, IsaLevel::kAvx512}) {
    if (CpuSupports(l)) {
      v.push_back(l);
    } else {
      std::printf("skipping level %s: the CPU lacks it\n", IsaLevelName(l));
    }
  }
  return v;
}

}  // namespace moex::kcpu::testing

#endif  // MOEX_TESTS_KERNELS_CPU_KERNEL_TEST_UTIL_H_
