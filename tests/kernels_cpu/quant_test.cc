// Tests of the ggml block formats: traits, half/bfloat16 conversions, dequantisation of
// hand-built blocks, and quantise -> dequantise round trips.
//
// The hand-built blocks pin the bit layout: every block is assembled byte by byte here
// from logical codes (d, scales, per-value codes) with the packing rules of
// ggml-common.h restated independently, and most tests add literal byte spot checks
// whose expected values were worked out by hand from ggml's dequantize_row_*. Scales
// are powers of two so that every expected float is exact and compared with ==.
#include "kernels_cpu/quant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

namespace moex::kcpu {
namespace {

using Bytes = std::vector<uint8_t>;

void PutU16(Bytes* b, size_t off, uint16_t v) {
  (*b)[off] = static_cast<uint8_t>(v & 0xFF);
  (*b)[off + 1] = static_cast<uint8_t>(v >> 8);
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Dequantises into a NaN-poisoned buffer so a value the decoder forgets to write fails.
std::vector<float> Dequant(GgmlType type, const Bytes& src, int64_t n) {
  EXPECT_EQ(static_cast<int64_t>(src.size()), RowBytes(GetTypeTraits(type), n));
  std::vector<float> y(n, std::numeric_limits<float>::quiet_NaN());
  DequantizeRow(type, src.data(), y.data(), n);
  return y;
}

void ExpectAllEq(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], want[i]) << "value " << i;
  }
}

// fp16 bit patterns of the exact scales used below.
constexpr uint16_t kHalf0_125 = 0x3000;
constexpr uint16_t kHalf0_25 = 0x3400;
constexpr uint16_t kHalf0_5 = 0x3800;
constexpr uint16_t kHalf1 = 0x3C00;
constexpr uint16_t kHalfMinus1 = 0xBC00;
constexpr uint16_t kHalfMinus2 = 0xC000;

// ---- traits ---------------------------------------------------------------------------

TEST(QuantTraitsTest, BlockSizesMatchGgml) {
  struct Want {
    GgmlType type;
    const char* name;
    int64_t elems, bytes;
  };
  const Want wants[] = {
      {GgmlType::kF32, "f32", 1, 4},       {GgmlType::kF16, "f16", 1, 2},
      {GgmlType::kBF16, "bf16", 1, 2},     {GgmlType::kQ4_0, "q4_0", 32, 18},
      {GgmlType::kQ4_1, "q4_1", 32, 20},   {GgmlType::kQ5_0, "q5_0", 32, 22},
      {GgmlType::kQ5_1, "q5_1", 32, 24},   {GgmlType::kQ8_0, "q8_0", 32, 34},
      {GgmlType::kQ8_1, "q8_1", 32, 36},   {GgmlType::kQ2_K, "q2_K", 256, 84},
      {GgmlType::kQ3_K, "q3_K", 256, 110}, {GgmlType::kQ4_K, "q4_K", 256, 144},
      {GgmlType::kQ5_K, "q5_K", 256, 176}, {GgmlType::kQ6_K, "q6_K", 256, 210},
      {GgmlType::kQ8_K, "q8_K", 256, 292},
  };
  for (const Want& w : wants) {
    SCOPED_TRACE(w.name);
    const TypeTraits& t = GetTypeTraits(w.type);
    EXPECT_EQ(t.type, w.type);
    EXPECT_STREQ(t.name, w.name);
    EXPECT_EQ(t.block_elems, w.elems);
    EXPECT_EQ(t.block_bytes, w.bytes);
    EXPECT_EQ(RowBytes(t, 3 * w.elems), 3 * w.bytes);
    EXPECT_EQ(FindTypeTraits(static_cast<uint32_t>(w.type)), &t);
    EXPECT_EQ(FindTypeTraitsByName(w.name), &t);
  }
  EXPECT_EQ(RowBytes(GetTypeTraits(GgmlType::kQ4_K), 4096), 16 * 144);
  EXPECT_EQ(FindTypeTraitsByName("Q4_k"), &GetTypeTraits(GgmlType::kQ4_K));
  EXPECT_EQ(FindTypeTraitsByName("q4"), nullptr);
  EXPECT_EQ(FindTypeTraits(4), nullptr);  // ggml's removed Q4_2
  EXPECT_EQ(FindTypeTraits(999), nullptr);
}

TEST(QuantTraitsTest, CapabilityFlags) {
  for (GgmlType t : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ4_0,
                     GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0,
                     GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K, GgmlType::kQ8_K}) {
    EXPECT_TRUE(GetTypeTraits(t).can_dequantize) << GetTypeTraits(t).name;
    EXPECT_TRUE(GetTypeTraits(t).can_quantize) << GetTypeTraits(t).name;
  }
  EXPECT_TRUE(GetTypeTraits(GgmlType::kQ2_K).can_dequantize);
  EXPECT_TRUE(GetTypeTraits(GgmlType::kQ3_K).can_dequantize);
  EXPECT_FALSE(GetTypeTraits(GgmlType::kQ2_K).can_quantize);
  EXPECT_FALSE(GetTypeTraits(GgmlType::kQ3_K).can_quantize);
  EXPECT_FALSE(GetTypeTraits(GgmlType::kQ8_1).can_dequantize);
}

// ---- half and bfloat16 ------------------------------------------------------------------

TEST(HalfTest, ExactValues) {
  struct Pair {
    uint16_t h;
    float f;
  };
  const Pair pairs[] = {
      {0x0000, 0.0f},
      {0x3C00, 1.0f},
      {0xC000, -2.0f},
      {0x3800, 0.5f},
      {0x3555, 0.333251953125f},
      {0x7BFF, 65504.0f},
      {0xFBFF, -65504.0f},
      {0x0400, 0x1p-14f},
      {0x0001, 0x1p-24f},
      {0x03FF, 0x3FFp-24f},
      {0x8001, -0x1p-24f},
      {0x3C01, 1.0f + 0x1p-10f},
  };
  for (const Pair& p : pairs) {
    EXPECT_EQ(HalfToFloat(p.h), p.f) << std::hex << p.h;
    EXPECT_EQ(FloatToHalf(p.f), p.h) << p.f;
  }
  EXPECT_EQ(Bits(HalfToFloat(0x8000)), 0x80000000u);  // negative zero keeps its sign
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(HalfToFloat(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(FloatToHalf(1e10f), 0x7C00);
  EXPECT_EQ(FloatToHalf(1e-10f), 0x0000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::denorm_min()), 0x0000);
}

TEST(HalfTest, RoundsToNearestEven) {
  // Ties between representable halves go to the even mantissa.
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f), 0x3C00);             // 1 | 1+2^-10: down
  EXPECT_EQ(FloatToHalf(1.0f + 3 * 0x1p-11f), 0x3C02);         // 1+2^-10 | 1+2^-9: up
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);  // just above a tie
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7BFF);                    // below the 65520 tie
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);                    // tie with "65536": inf
  EXPECT_EQ(FloatToHalf(0x1p-25f), 0x0000);                    // tie 0 | 2^-24: to 0
  EXPECT_EQ(FloatToHalf(0x1p-25f * 1.0000001f), 0x0001);
  EXPECT_EQ(FloatToHalf(3 * 0x1p-25f), 0x0002);  // tie 1 | 2 ulps: to 2
  EXPECT_EQ(FloatToHalf(0x7FFp-25f), 0x0400);    // top subnormal tie -> normal
  EXPECT_EQ(FloatToHalf(-(1.0f + 3 * 0x1p-11f)), 0xBC02);
}

TEST(HalfTest, ExhaustiveAgainstMidpoints) {
  // Every finite half round-trips, and floats next to each midpoint between neighbouring
  // halves round to the nearer one (the midpoint itself to the even one).
  for (uint32_t h = 0; h < 0x7C00; ++h) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const uint16_t hs = static_cast<uint16_t>(h | sign);
      ASSERT_EQ(FloatToHalf(HalfToFloat(hs)), hs) << std::hex << hs;
    }
    const float a = HalfToFloat(static_cast<uint16_t>(h));
    const float b = h + 1 < 0x7C00 ? HalfToFloat(static_cast<uint16_t>(h + 1)) : 65536.0f;
    const float mid = (a + b) / 2;  // exact: needs one more bit than a half has
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, 0.0f)), h);
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, 1e9f)), h + 1);
    ASSERT_EQ(FloatToHalf(mid), (h & 1) ? h + 1 : h) << std::hex << h;
  }
}

TEST(HalfTest, NanPreserved) {
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7E00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7C01)));  // signalling pattern is still NaN
  EXPECT_TRUE(std::isnan(HalfToFloat(0xFFFF)));
  EXPECT_EQ(Bits(HalfToFloat(0x7E00)), 0x7FC00000u);
  for (uint32_t f : {0x7FC00000u, 0x7F800001u, 0xFFC00000u, 0x7F802000u}) {
    const uint16_t h = FloatToHalf(FromBits(f));
    EXPECT_EQ(h & 0x7C00, 0x7C00) << std::hex << f;
    EXPECT_NE(h & 0x03FF, 0) << std::hex << f;  // payload not lost into infinity
    EXPECT_EQ(h >> 15, f >> 31);
  }
}

TEST(Bf16Test, ExactValuesAndRounding) {
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0xC040), -3.0f);
  EXPECT_EQ(Bf16ToFloat(0x7F80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(Bf16ToFloat(0x0001), FromBits(0x00010000));  // subnormal
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(-3.0f), 0xC040);
  EXPECT_EQ(FloatToBf16(FromBits(0x3F808000)), 0x3F80);  // tie, even below
  EXPECT_EQ(FloatToBf16(FromBits(0x3F818000)), 0x3F82);  // tie, even above
  EXPECT_EQ(FloatToBf16(FromBits(0x3F808001)), 0x3F81);  // above the tie
  EXPECT_EQ(FloatToBf16(FromBits(0x3F807FFF)), 0x3F80);  // below the tie
  EXPECT_EQ(FloatToBf16(FromBits(0x00008000)), 0x0000);  // subnormal tie to even
  EXPECT_EQ(FloatToBf16(FromBits(0x00018000)), 0x0002);
  EXPECT_EQ(FloatToBf16(FromBits(0x00008001)), 0x0001);               // subnormals are kept
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds to inf
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
}

TEST(Bf16Test, NanBecomesQuiet) {
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7FC0)));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7F81)));
  // A signalling NaN whose payload sits only in the low half must not become inf.
  EXPECT_EQ(FloatToBf16(FromBits(0x7F800001)), 0x7FC0);
  EXPECT_EQ(FloatToBf16(FromBits(0xFF800001)), 0xFFC0);
  EXPECT_EQ(FloatToBf16(FromBits(0x7FC00000)), 0x7FC0);
  EXPECT_EQ(FloatToBf16(FromBits(0x7FFFFFFF)), 0x7FFF);  // no rounding carry into sign
}

TEST(Bf16Test, RandomAgainstDoubleRounding) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (int i = 0; i < 100000; ++i) {
    const uint32_t u = rng() % 0x7F7F0000u;  // finite, positive, not rounding to inf
    const float f = FromBits(u);
    const uint16_t b = FloatToBf16(f);
    const double lo = Bf16ToFloat(b);
    const double err = std::fabs(lo - static_cast<double>(f));
    // Nearest: no neighbour is strictly closer.
    const double up = Bf16ToFloat(static_cast<uint16_t>(b + 1));
    const double down = Bf16ToFloat(static_cast<uint16_t>(b - 1));
    ASSERT_LE(err, std::fabs(up - f)) << std::hex << u;
    if (b > 0) {
      ASSERT_LE(err, std::fabs(down - f)) << std::hex << u;
    }
  }
}

// ---- dequantisation of hand-built blocks ---------------------------------------------

TEST(DequantizeTest, F32F16Bf16) {
  const std::vector<float> f = {1.5f, -0.0f, 3e38f, -7.25f};
  Bytes raw(16);
  std::memcpy(raw.data(), f.data(), 16);
  ExpectAllEq(Dequant(GgmlType::kF32, raw, 4), f);

  Bytes h(10);
  const uint16_t halves[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00};
  for (int i = 0; i < 5; ++i) PutU16(&h, 2 * i, halves[i]);
  ExpectAllEq(Dequant(GgmlType::kF16, h, 5),
              {1.0f, -2.0f, 65504.0f, 0x1p-24f, std::numeric_limits<float>::infinity()});

  Bytes b(6);
  PutU16(&b, 0, 0x3F80);
  PutU16(&b, 2, 0xC040);
  PutU16(&b, 4, 0x4049);
  ExpectAllEq(Dequant(GgmlType::kBF16, b, 3), {1.0f, -3.0f, FromBits(0x40490000)});
}

// Q4_0: fp16 d, then 16 bytes; byte j has value j in the low nibble, value j + 16 in
// the high nibble; value = (q - 8) * d.
TEST(DequantizeTest, Q4_0) {
  Bytes raw(2 * 18, 0);
  std::vector<float> want(64);
  const uint16_t ds[2] = {kHalf0_5, kHalfMinus2};
  const float df[2] = {0.5f, -2.0f};
  for (int blk = 0; blk < 2; ++blk) {
    PutU16(&raw, 18 * blk, ds[blk]);
    for (int j = 0; j < 16; ++j) {
      const int lo = (j + blk) % 16, hi = (15 - j + 3 * blk) % 16;
      raw[18 * blk + 2 + j] = static_cast<uint8_t>(lo | (hi << 4));
      want[32 * blk + j] = static_cast<float>(lo - 8) * df[blk];
      want[32 * blk + j + 16] = static_cast<float>(hi - 8) * df[blk];
    }
  }
  const std::vector<float> y = Dequant(GgmlType::kQ4_0, raw, 64);
  ExpectAllEq(y, want);
  // Spot checks worked out by hand: byte 2 of block 0 is 0xD2 -> q 2 and 13.
  EXPECT_EQ(raw[2 + 2], 0xD2);
  EXPECT_EQ(y[2], -3.0f);
  EXPECT_EQ(y[18], 2.5f);
}

TEST(DequantizeTest, Q4_1) {
  Bytes raw(20, 0);
  PutU16(&raw, 0, kHalf0_5);
  PutU16(&raw, 2, kHalfMinus1);
  std::vector<float> want(32);
  for (int j = 0; j < 16; ++j) {
    const int lo = (5 * j) % 16, hi = (7 * j + 3) % 16;
    raw[4 + j] = static_cast<uint8_t>(lo | (hi << 4));
    want[j] = static_cast<float>(lo) * 0.5f - 1.0f;
    want[j + 16] = static_cast<float>(hi) * 0.5f - 1.0f;
  }
  const std::vector<float> y = Dequant(GgmlType::kQ4_1, raw, 32);
  ExpectAllEq(y, want);
  EXPECT_EQ(raw[4 + 1], 0xA5);  // j = 1: lo 5, hi 10
  EXPECT_EQ(y[1], 1.5f);
  EXPECT_EQ(y[17], 4.0f);
}

// Q5_0/Q5_1: qh (4 bytes, little-endian) after d (and m); bit j is the fifth bit of
// value j.
Bytes BuildQ5(bool with_min, const int* q, uint16_t d, uint16_t m) {
  const size_t off = with_min ? 4 : 2;
  Bytes raw(off + 4 + 16, 0);
  PutU16(&raw, 0, d);
  if (with_min) PutU16(&raw, 2, m);
  for (int j = 0; j < 32; ++j) {
    if (q[j] & 16) raw[off + j / 8] |= static_cast<uint8_t>(1 << (j % 8));
  }
  for (int j = 0; j < 16; ++j) {
    raw[off + 4 + j] = static_cast<uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
  }
  return raw;
}

TEST(DequantizeTest, Q5_0) {
  int q[32];
  std::vector<float> want(32);
  for (int j = 0; j < 32; ++j) {
    q[j] = (11 * j + 7) % 32;
    want[j] = static_cast<float>(q[j] - 16) * 0.25f;
  }
  const Bytes raw = BuildQ5(false, q, kHalf0_25, 0);
  const std::vector<float> y = Dequant(GgmlType::kQ5_0, raw, 32);
  ExpectAllEq(y, want);
  // By hand: q[0] = 7 (bit 0 of qh clear), q[1] = 18 (bit 1 set), q[16] = 23 (bit 16 set).
  EXPECT_EQ(raw[2] & 0x03, 0x02);
  EXPECT_EQ(raw[4] & 0x01, 0x01);
  EXPECT_EQ(y[0], -2.25f);
  EXPECT_EQ(y[1], 0.5f);
  EXPECT_EQ(y[16], 1.75f);
}

TEST(DequantizeTest, Q5_1) {
  int q[32];
  std::vector<float> want(32);
  for (int j = 0; j < 32; ++j) {
    q[j] = (13 * j + 30) % 32;
    want[j] = static_cast<float>(q[j]) * 0.125f + 1.0f;
  }
  const Bytes raw = BuildQ5(true, q, kHalf0_125, kHalf1);
  ExpectAllEq(Dequant(GgmlType::kQ5_1, raw, 32), want);
  // A single high bit at value 31 moves exactly that value by 16 * d.
  Bytes flipped = raw;
  flipped[4 + 3] ^= 0x80;
  std::vector<float> want2 = want;
  want2[31] += (q[31] & 16) ? -2.0f : 2.0f;
  ExpectAllEq(Dequant(GgmlType::kQ5_1, flipped, 32), want2);
}

TEST(DequantizeTest, Q8_0) {
  Bytes raw(3 * 34, 0);
  std::vector<float> want(96);
  const uint16_t ds[3] = {kHalf0_125, kHalfMinus1, 0x0001};
  const float df[3] = {0.125f, -1.0f, 0x1p-24f};
  for (int blk = 0; blk < 3; ++blk) {
    PutU16(&raw, 34 * blk, ds[blk]);
    for (int j = 0; j < 32; ++j) {
      const int q = (37 * j + 11 * blk) % 256 - 128;
      raw[34 * blk + 2 + j] = static_cast<uint8_t>(static_cast<int8_t>(q));
      want[32 * blk + j] = static_cast<float>(q) * df[blk];
    }
  }
  ExpectAllEq(Dequant(GgmlType::kQ8_0, raw, 96), want);
}

// Position of the 2-bit code of value v (0..255) in Q2_K/Q3_K qs: 128 values per 32
// bytes; within those, value 32 * p + l (l < 32) sits in byte l at bit shift 2 * p.
void Q2Pos(int v, int* byte, int* shift) {
  const int half = v / 128, r = v % 128;
  *byte = 32 * half + r % 32;
  *shift = 2 * (r / 32);
}

TEST(DequantizeTest, Q2_K) {
  // Layout: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.
  Bytes raw(84, 0);
  int code[256];
  for (int g = 0; g < 16; ++g) raw[g] = static_cast<uint8_t>((g % 16) | (((g * 7) % 16) << 4));
  for (int v = 0; v < 256; ++v) {
    code[v] = (v * 5 + v / 16) % 4;
    int byte, shift;
    Q2Pos(v, &byte, &shift);
    raw[16 + byte] |= static_cast<uint8_t>(code[v] << shift);
  }
  PutU16(&raw, 80, kHalf0_5);
  PutU16(&raw, 82, kHalf0_25);
  std::vector<float> want(256);
  for (int v = 0; v < 256; ++v) {
    const int g = v / 16;
    want[v] = 0.5f * static_cast<float>(raw[g] & 15) * static_cast<float>(code[v]) -
              0.25f * static_cast<float>(raw[g] >> 4);
  }
  ExpectAllEq(Dequant(GgmlType::kQ2_K, raw, 256), want);

  // By hand: only qs[0] = 0xE4 set, scale bytes 0x21 for groups 0, 2, 4, 6, 8.
  Bytes one(84, 0);
  for (int g : {0, 2, 4, 6, 8}) one[g] = 0x21;  // scale 1, min 2
  one[16] = 0xE4;                               // values 0, 32, 64, 96 get codes 0..3
  PutU16(&one, 80, kHalf1);
  PutU16(&one, 82, kHalf0_5);
  const std::vector<float> y = Dequant(GgmlType::kQ2_K, one, 256);
  EXPECT_EQ(y[0], -1.0f);
  EXPECT_EQ(y[32], 0.0f);
  EXPECT_EQ(y[64], 1.0f);
  EXPECT_EQ(y[96], 2.0f);
  EXPECT_EQ(y[1], -1.0f);    // group 0, code 0
  EXPECT_EQ(y[16], 0.0f);    // group 1: scale and min zero
  EXPECT_EQ(y[128], -1.0f);  // group 8, code 0
}

TEST(DequantizeTest, Q3_K) {
  // Layout: hmask[32], qs[64], scales[12], d. A value is (2-bit code) - 4 unless its
  // hmask bit is set; hmask bit for value v: byte v % 32, bit v / 32.
  Bytes raw(110, 0);
  int scale[16], code[256];
  for (int g = 0; g < 16; ++g) {
    scale[g] = (g * 23 + 5) % 64;  // stored biased; decoded scale is scale - 32
    raw[96 + g % 8] |= static_cast<uint8_t>((scale[g] & 15) << (g < 8 ? 0 : 4));
    raw[96 + 8 + g % 4] |= static_cast<uint8_t>((scale[g] >> 4) << (2 * (g / 4)));
  }
  for (int v = 0; v < 256; ++v) {
    code[v] = (v * 3 + v / 7) % 8;  // 3-bit code c; value c - 4
    int byte, shift;
    Q2Pos(v, &byte, &shift);
    raw[32 + byte] |= static_cast<uint8_t>((code[v] & 3) << shift);
    if (code[v] & 4) raw[v % 32] |= static_cast<uint8_t>(1 << (v / 32));
  }
  PutU16(&raw, 108, kHalf0_5);
  std::vector<float> want(256);
  for (int v = 0; v < 256; ++v) {
    want[v] = 0.5f * static_cast<float>(scale[v / 16] - 32) * static_cast<float>(code[v] - 4);
  }
  ExpectAllEq(Dequant(GgmlType::kQ3_K, raw, 256), want);

  // By hand: scales byte 0 = 0x21 (scale 0 low 1, scale 8 low 2), byte 8 = 0x1B (top
  // bits: scale 0 -> 3, scale 4 -> 2, scale 8 -> 1, scale 12 -> 0). So scale 0 = 49 - 32
  // = 17, scale 8 = 18 - 32 = -14, scale 4 = 32 - 32 = 0, scale 12 = -32.
  Bytes one(110, 0);
  one[96] = 0x21;
  one[104] = 0x1B;
  one[32 + 0] = 0x03;   // value 0: code 3
  one[32 + 32] = 0x01;  // value 128: code 1
  one[0] = 0x01;        // value 0: hmask set, no -4
  one[1] = 0x00;        // value 1: code 0, no hmask: -4
  PutU16(&one, 108, kHalf1);
  const std::vector<float> y = Dequant(GgmlType::kQ3_K, one, 256);
  EXPECT_EQ(y[0], 51.0f);     // 17 * 3
  EXPECT_EQ(y[1], -68.0f);    // 17 * -4
  EXPECT_EQ(y[128], 42.0f);   // -14 * (1 - 4)
  EXPECT_EQ(y[64], -0.0f);    // scale 4 is zero
  EXPECT_EQ(y[192], 128.0f);  // -32 * -4
}

// Q4_K/Q5_K scale packing: 6-bit scales sc[8] and mins m[8] in 12 bytes.
void PackK4Scales(const int* sc, const int* m, uint8_t* out) {
  std::memset(out, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      out[j] |= static_cast<uint8_t>(sc[j]);
      out[j + 4] |= static_cast<uint8_t>(m[j]);
    } else {
      out[j + 4] = static_cast<uint8_t>((sc[j] & 15) | ((m[j] & 15) << 4));
      out[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      out[j] |= static_cast<uint8_t>((m[j] >> 4) << 6);
    }
  }
}

TEST(DequantizeTest, Q4_K) {
  // Layout: d, dmin, scales[12], qs[128]; sub-block s (32 values) uses the low nibble
  // of qs[32 * (s / 2) + l] for even s, the high nibble for odd s.
  Bytes raw(2 * 144, 0);
  std::vector<float> want(512);
  for (int blk = 0; blk < 2; ++blk) {
    uint8_t* b = raw.data() + 144 * blk;
    int sc[8], m[8];
    for (int s = 0; s < 8; ++s) {
      sc[s] = (s * 19 + 40 * blk + 3) % 64;
      m[s] = (s * 29 + 7 + blk) % 64;
    }
    PutU16(&raw, 144 * blk, blk ? kHalf0_25 : kHalf0_5);
    PutU16(&raw, 144 * blk + 2, kHalf0_125);
    PackK4Scales(sc, m, b + 4);
    const float d = blk ? 0.25f : 0.5f;
    for (int v = 0; v < 256; ++v) {
      const int s = v / 32, l = v % 32, q = (v * 7 + blk) % 16;
      b[16 + 32 * (s / 2) + l] |= static_cast<uint8_t>(q << (4 * (s % 2)));
      want[256 * blk + v] =
          d * static_cast<float>(sc[s]) * static_cast<float>(q) - 0.125f * static_cast<float>(m[s]);
    }
  }
  ExpectAllEq(Dequant(GgmlType::kQ4_K, raw, 512), want);

  // By hand: scales[0] = 0xC1 (sc0 = 1, top bits of sc4 = 3), scales[4] = 0x82 (m0 = 2,
  // top bits of m4 = 2), scales[8] = 0x54 (sc4 = 4 | 48 = 52, m4 = 5 | 32 = 37).
  Bytes one(144, 0);
  PutU16(&one, 0, kHalf1);
  PutU16(&one, 2, kHalf0_5);
  one[4 + 0] = 0xC1;
  one[4 + 4] = 0x82;
  one[4 + 8] = 0x54;
  one[16 + 0] = 0x3F;   // value 0 (sub-block 0): 15; value 32 (sub-block 1): 3
  one[16 + 64] = 0x02;  // value 128 (sub-block 4): 2
  const std::vector<float> y = Dequant(GgmlType::kQ4_K, one, 256);
  EXPECT_EQ(y[0], 14.0f);  // 1 * 15 - 0.5 * 2
  EXPECT_EQ(y[1], -1.0f);
  EXPECT_EQ(y[32], 0.0f);    // sub-block 1: scale 0, min 0
  EXPECT_EQ(y[128], 85.5f);  // 52 * 2 - 0.5 * 37
  EXPECT_EQ(y[129], -18.5f);
}

TEST(DequantizeTest, Q5_K) {
  // Layout: d, dmin, scales[12], qh[32], qs[128]; fifth bit of value 32 s + l is bit s
  // of qh[l].
  Bytes raw(176, 0);
  int sc[8], m[8];
  for (int s = 0; s < 8; ++s) {
    sc[s] = (s * 37 + 1) % 64;
    m[s] = (s * 11 + 60) % 64;
  }
  PutU16(&raw, 0, kHalf0_25);
  PutU16(&raw, 2, kHalf0_5);
  PackK4Scales(sc, m, raw.data() + 4);
  std::vector<float> want(256);
  for (int v = 0; v < 256; ++v) {
    const int s = v / 32, l = v % 32, q = (v * 13 + 5) % 32;
    raw[48 + 32 * (s / 2) + l] |= static_cast<uint8_t>((q & 15) << (4 * (s % 2)));
    if (q & 16) raw[16 + l] |= static_cast<uint8_t>(1 << s);
    want[v] =
        0.25f * static_cast<float>(sc[s]) * static_cast<float>(q) - 0.5f * static_cast<float>(m[s]);
  }
  ExpectAllEq(Dequant(GgmlType::kQ5_K, raw, 256), want);

  // By hand: sc0 = 2, m0 = 1; qh[3] = 0x81 sets the fifth bit of values 3 and 227.
  Bytes one(176, 0);
  PutU16(&one, 0, kHalf1);
  PutU16(&one, 2, kHalf1);
  one[4 + 0] = 2;
  one[4 + 4] = 1;
  one[4 + 3] = 3;      // sc3 = 3 (values 96..127)
  one[4 + 11] = 0x01;  // sc7 = 1 (values 224..255)
  one[16 + 3] = 0x81;
  one[48 + 3] = 0x04;       // value 3: low nibble 4
  one[48 + 96 + 3] = 0x70;  // value 227 (sub-block 7 = high nibble of bytes 96..127): 7
  const std::vector<float> y = Dequant(GgmlType::kQ5_K, one, 256);
  EXPECT_EQ(y[3], 39.0f);  // 2 * (4 + 16) - 1
  EXPECT_EQ(y[2], -1.0f);
  EXPECT_EQ(y[227], 23.0f);  // 1 * (7 + 16)
  EXPECT_EQ(y[99], 0.0f);    // sub-block 3, code 0
}

TEST(DequantizeTest, Q6_K) {
  // Layout: ql[128], qh[64], scales[16] (int8), d. Value 128 h + 32 k + l: low nibble
  // in ql[64 h + 32 (k % 2) + l] (high nibble when k >= 2), top bits in qh[32 h + l] at
  // shift 2 k, scale index v / 16; value = d * scale * (q - 32).
  Bytes raw(210, 0);
  int scale[16];
  for (int g = 0; g < 16; ++g) {
    scale[g] = (g * 41 + 3) % 256 - 128;
    raw[192 + g] = static_cast<uint8_t>(static_cast<int8_t>(scale[g]));
  }
  std::vector<float> want(256);
  for (int v = 0; v < 256; ++v) {
    const int h = v / 128, k = (v % 128) / 32, l = v % 32, q = (v * 29 + 3) % 64;
    raw[64 * h + 32 * (k % 2) + l] |= static_cast<uint8_t>((q & 15) << (4 * (k / 2)));
    raw[128 + 32 * h + l] |= static_cast<uint8_t>((q >> 4) << (2 * k));
    want[v] = 0.5f * static_cast<float>(scale[v / 16]) * static_cast<float>(q - 32);
  }
  PutU16(&raw, 208, kHalf0_5);
  ExpectAllEq(Dequant(GgmlType::kQ6_K, raw, 256), want);

  // By hand: ql[0] = 0x21, qh[0] = 0xE4 -> value 0: 1 | 0 << 4 = 1, value 64: 2 | 2 << 4
  // = 34, value 32: 0 | 1 << 4 = 16, value 96: 0 | 3 << 4 = 48.
  Bytes one(210, 0);
  one[0] = 0x21;
  one[128] = 0xE4;
  one[192 + 0] = 1;
  one[192 + 2] = static_cast<uint8_t>(-2);
  one[192 + 4] = 3;
  one[192 + 6] = 4;
  PutU16(&one, 208, kHalf1);
  const std::vector<float> y = Dequant(GgmlType::kQ6_K, one, 256);
  EXPECT_EQ(y[0], -31.0f);
  EXPECT_EQ(y[32], 32.0f);  // -2 * (16 - 32)
  EXPECT_EQ(y[64], 6.0f);   // 3 * 2
  EXPECT_EQ(y[96], 64.0f);  // 4 * 16
  EXPECT_EQ(y[16], -0.0f);  // scale 1 is zero
}

TEST(DequantizeTest, Q8_K) {
  // Layout: float d, int8 qs[256], int16 bsums[16] (unused for dequantisation).
  Bytes raw(292, 0xEE);
  const float d = -0.375f;
  std::memcpy(raw.data(), &d, 4);
  std::vector<float> want(256);
  for (int v = 0; v < 256; ++v) {
    const int q = (v * 57 + 1) % 255 - 127;
    raw[4 + v] = static_cast<uint8_t>(static_cast<int8_t>(q));
    want[v] = d * static_cast<float>(q);
  }
  ExpectAllEq(Dequant(GgmlType::kQ8_K, raw, 256), want);
}

// ---- quantisers ---------------------------------------------------------------------------

Bytes Quant(GgmlType type, const std::vector<float>& x) {
  // Poisoned: a byte the quantiser forgets to write is caught by the round trip or by
  // the byte checks below.
  Bytes q(RowBytes(GetTypeTraits(type), static_cast<int64_t>(x.size())), 0xA5);
  QuantizeRow(type, x.data(), q.data(), static_cast<int64_t>(x.size()));
  return q;
}

TEST(QuantizeTest, Q4_0UsesReferenceRounding) {
  // Largest magnitude -4 -> d = 0.5; x * (1 / d) + 8.5 truncated.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16) * 0.25f;
  x[0] = -4.0f;
  const Bytes q = Quant(GgmlType::kQ4_0, x);
  EXPECT_EQ(q[0] | (q[1] << 8), kHalf0_5);
  for (int j = 0; j < 16; ++j) {
    // (j - 16) / 2 + 8.5 and j / 2 + 8.5, truncated; halves round up.
    const int lo = j == 0 ? 0 : static_cast<int>(static_cast<float>(j - 16) * 0.5f + 8.5f);
    const int hi = std::min(15, static_cast<int>(static_cast<float>(j) * 0.5f + 8.5f));
    EXPECT_EQ(q[2 + j], lo | (hi << 4)) << j;
  }
}

TEST(QuantizeTest, Q8_0UsesReferenceRounding) {
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;  // d = 1
  x[1] = 2.5f;    // roundf: away from zero
  x[2] = -2.5f;
  x[3] = 0.49f;
  const Bytes q = Quant(GgmlType::kQ8_0, x);
  EXPECT_EQ(q[0] | (q[1] << 8), kHalf1);
  EXPECT_EQ(static_cast<int8_t>(q[2]), 127);
  EXPECT_EQ(static_cast<int8_t>(q[3]), 3);
  EXPECT_EQ(static_cast<int8_t>(q[4]), -3);
  EXPECT_EQ(static_cast<int8_t>(q[5]), 0);
}

TEST(QuantizeTest, Q8_KBsumsAndScale) {
  std::mt19937 rng(7);
  std::normal_distribution<float> g;
  std::vector<float> x(512);
  for (float& v : x) v = g(rng);
  x[300] = 10.0f;  // largest magnitude, positive: maps to -127 with negative d
  const Bytes q = Quant(GgmlType::kQ8_K, x);
  for (int blk = 0; blk < 2; ++blk) {
    const uint8_t* b = q.data() + 292 * blk;
    for (int grp = 0; grp < 16; ++grp) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += static_cast<int8_t>(b[4 + 16 * grp + l]);
      int16_t stored;
      std::memcpy(&stored, b + 4 + 256 + 2 * grp, 2);
      EXPECT_EQ(stored, sum);
    }
  }
  EXPECT_EQ(static_cast<int8_t>(q[292 + 4 + 300 - 256]), -127);
  float d;
  std::memcpy(&d, q.data() + 292, 4);
  EXPECT_FLOAT_EQ(d, -10.0f / 127.0f);
}

TEST(QuantizeTest, ZerosStayZero) {
  for (GgmlType t :
       {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0,
        GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K, GgmlType::kQ8_K}) {
    SCOPED_TRACE(GetTypeTraits(t).name);
    const std::vector<float> x(512, 0.0f);
    const std::vector<float> y = Dequant(t, Quant(t, x), 512);
    for (float v : y) ASSERT_EQ(v, 0.0f);
  }
}

// RMS error relative to the data's standard deviation (not its RMS, which an offset
// would inflate and so hide errors in the min/offset handling).
double RelRmsError(const std::vector<float>& x, const std::vector<float>& y) {
  double mean = 0;
  for (float v : x) mean += v;
  mean /= static_cast<double>(x.size());
  double err = 0, ref = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    err += (static_cast<double>(y[i]) - x[i]) * (static_cast<double>(y[i]) - x[i]);
    ref += (x[i] - mean) * (x[i] - mean);
  }
  return std::sqrt(err / ref);
}

struct RoundTripCase {
  GgmlType type;
  double max_rel_rms;
  double mean;  // data offset; exercises the min/offset paths of the asymmetric formats
};

void PrintTo(const RoundTripCase& c, std::ostream* os) {
  *os << GetTypeTraits(c.type).name << " mean " << c.mean;
}

class RoundTripTest : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(RoundTripTest, GaussianRows) {
  const RoundTripCase& c = GetParam();
  const TypeTraits& t = GetTypeTraits(c.type);
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << t.name << " seed " << seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss(static_cast<float>(c.mean), 1.0f);
  // An odd number of blocks, and a scale far from 1 so no format leans on unit data.
  const int64_t blocks = t.block_elems == 1 ? 1001 : (t.block_elems == 32 ? 77 : 9);
  const int64_t n = blocks * t.block_elems;
  std::vector<float> x(n);
  for (float& v : x) v = gauss(rng) * 0.02f;
  const Bytes q = Quant(c.type, x);
  const std::vector<float> y = Dequant(c.type, q, n);
  for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(y[i])) << i;
  const double rel = RelRmsError(x, y);
  std::printf("[ round trip ] %-5s mean %+.0f: relative RMS error %.5f (bound %.3f)\n", t.name,
              c.mean, rel, c.max_rel_rms);
  EXPECT_LT(rel, c.max_rel_rms);
  // Quantising the decoded values again must be (nearly) lossless: codes are stable.
  const std::vector<float> y2 = Dequant(c.type, Quant(c.type, y), n);
  EXPECT_LT(RelRmsError(y, y2), c.max_rel_rms / 2);
}

INSTANTIATE_TEST_SUITE_P(
    AllQuantisers, RoundTripTest,
    ::testing::Values(
        RoundTripCase{GgmlType::kF32, 1e-30, 0}, RoundTripCase{GgmlType::kF16, 5e-4, 0},
        RoundTripCase{GgmlType::kBF16, 4e-3, 0}, RoundTripCase{GgmlType::kQ4_0, 0.12, 0},
        RoundTripCase{GgmlType::kQ4_1, 0.12, 0}, RoundTripCase{GgmlType::kQ4_1, 0.12, -3},
        RoundTripCase{GgmlType::kQ5_0, 0.06, 0}, RoundTripCase{GgmlType::kQ5_1, 0.06, 0},
        RoundTripCase{GgmlType::kQ5_1, 0.06, -3}, RoundTripCase{GgmlType::kQ8_0, 0.01, 0},
        RoundTripCase{GgmlType::kQ4_K, 0.12, 0}, RoundTripCase{GgmlType::kQ4_K, 0.12, -3},
        RoundTripCase{GgmlType::kQ5_K, 0.06, 0}, RoundTripCase{GgmlType::kQ5_K, 0.06, -3},
        RoundTripCase{GgmlType::kQ6_K, 0.03, 0}, RoundTripCase{GgmlType::kQ8_K, 0.01, 0}),
    [](const ::testing::TestParamInfo<RoundTripCase>& info) {
      return std::string(GetTypeTraits(info.param.type).name) +
             (info.param.mean < 0 ? "_shifted" : "");
    });

}  // namespace
}  // namespace moex::kcpu
