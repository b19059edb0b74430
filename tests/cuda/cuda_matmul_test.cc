// Backend parity of the CUDA matrix kernels (kernels_cuda/cuda_ops.h) against kernels_cpu:
// every weight type, both kernels (GEMV and tiled), odd shapes, NaN-poisoned outputs.
// The reference is the exact product of the weights dequantised by kcpu::DequantizeRow,
// in double: the GPU reads the same bit-identical weights and accumulates in F32.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels_cpu/quant.h"
#include "kernels_cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace moex::kcuda {
namespace {

using kcpu::GgmlType;
using testing::DeviceBuffer;
using testing::FreshSeed;
using testing::HostMatrix;
using testing::kF32Unit;
using testing::RandomFloats;
using testing::RandomMatrix;

const char* Name(GgmlType t) { return kcpu::GetTypeTraits(t).name; }

// Column counts that exercise a type: several blocks, and for the float types counts
// that are not a multiple of the 8-value chunk or of a warp's 256 values.
std::vector<int64_t> ColsFor(GgmlType t) {
  // The longer rows reach the GEMV's four-chunks-per-lane loop (more than 128 chunks of 8)
  // and its tail.
  const int64_t b = kcpu::GetTypeTraits(t).block_elems;
  if (b == 1) return {1, 75, 256, 300, 1500};
  if (b == 32) return {32, 96, 544, 2080};
  return {256, 768, 2816};
}

// Checks y [n_tokens][rows] against the double-precision product. Tolerance: each output
// is a sum of `cols` products accumulated in F32 (lane partial sums, then a 5-level warp
// tree, or one sequential chain in the tiled kernel), so its error is at most
// (cols + 5) * u * sum|w x| (n * u bound); twice that leaves room for the exp-free but
// reassociated order. A NaN (an output never written over the poison) always fails.
void ExpectProduct(const HostMatrix& w, const std::vector<float>& x, int64_t n_tokens,
                   const std::vector<float>& y, const std::string& what) {
  int bad = 0;
  for (int64_t t = 0; t < n_tokens && bad < 5; ++t) {
    for (int64_t r = 0; r < w.rows && bad < 5; ++r) {
      double ref = 0, mag = 0;
      for (int64_t c = 0; c < w.cols; ++c) {
        const double p = static_cast<double>(w.values[r * w.cols + c]) * x[t * w.cols + c];
        ref += p;
        mag += std::fabs(p);
      }
      const double tol = 2.0 * (w.cols + 5) * kF32Unit * mag + 1e-30;
      const float got = y[t * w.rows + r];
      if (!(std::fabs(got - ref) <= tol)) {
        ADD_FAILURE() << what << ": y[" << t << "][" << r << "] = " << got << ", want " << ref
                      << " +- " << tol;
        ++bad;
      }
    }
  }
}

// `offset`: the weights start this many bytes into their buffer; 4 keeps the 2- and
// 4-byte alignment the block fields need but not the 16 of the kernels' wide loads, so
// the narrow loads are checked too.
void RunMatMul(std::mt19937_64& rng, GgmlType type, int64_t rows, int64_t cols, int64_t n_tokens,
               MatMulPath path, int64_t offset = 0) {
  const HostMatrix w = RandomMatrix(rng, type, rows, cols);
  const std::vector<float> x = RandomFloats(rng, n_tokens * cols);
  std::vector<uint8_t> padded(offset, 0);
  padded.insert(padded.end(), w.bytes.begin(), w.bytes.end());
  DeviceBuffer<uint8_t> dw(padded);
  DeviceBuffer<float> dx(x);
  DeviceBuffer<float> dy(n_tokens * rows);
  dy.Poison();
  const std::string what = std::string(Name(type)) + " " + std::to_string(rows) + "x" +
                           std::to_string(cols) + " t=" + std::to_string(n_tokens) +
                           " path=" + std::to_string(static_cast<int>(path)) +
                           " offset=" + std::to_string(offset);
  ASSERT_EQ(
      MatMul(type, dw.get() + offset, rows, cols, dx.get(), n_tokens, dy.get(), nullptr, path), "")
      << what;
  ExpectProduct(w, x, n_tokens, dy.Download(), what);
}

class MatMulTypeTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(MatMulTypeTest, GemvMatchesDequantisedProduct) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  for (int64_t cols : ColsFor(GetParam())) {
    for (int64_t rows : {1, 5, 37, 130}) {
      // 17 runs the GEMV on slices of 8 tokens (8 + 8 + 1).
      for (int64_t t : {1, 2, 3, 8, 17})
        RunMatMul(rng, GetParam(), rows, cols, t, MatMulPath::kGemv);
    }
  }
}

// Selected experts: every selection is the GEMV of its expert and activation row, bit for
// bit; an id outside the stack gives NaN rows.
TEST_P(MatMulTypeTest, SelectedExpertsAreTheirOwnGemv) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  const GgmlType type = GetParam();
  const int64_t n_expert = 5, rows = 37;
  for (int64_t cols : ColsFor(type)) {
    std::vector<HostMatrix> experts;
    std::vector<uint8_t> stack;
    for (int64_t e = 0; e < n_expert; ++e) {
      experts.push_back(RandomMatrix(rng, type, rows, cols));
      stack.insert(stack.end(), experts.back().bytes.begin(), experts.back().bytes.end());
    }
    const int64_t expert_bytes = static_cast<int64_t>(experts[0].bytes.size());
    // Two tokens with three picks each (a repeat included), gate/up style (x_group 3),
    // then one activation row per pick, down style (x_group 1).
    const std::vector<int32_t> ids = {4, 0, 2, 2, 1, 4};
    for (int64_t x_group : {3, 1}) {
      const int64_t n_rows = static_cast<int64_t>(ids.size()) / x_group;
      const std::vector<float> x = RandomFloats(rng, n_rows * cols);
      DeviceBuffer<uint8_t> dw(stack);
      DeviceBuffer<int32_t> dids(ids);
      DeviceBuffer<float> dx(x);
      DeviceBuffer<float> dy(static_cast<int64_t>(ids.size()) * rows);
      dy.Poison();
      ASSERT_EQ(MatMulSelected(type, dw.get(), n_expert, rows, cols, dids.get(),
                               static_cast<int64_t>(ids.size()), dx.get(), x_group, cols, dy.get(),
                               nullptr),
                "");
      const std::vector<float> got = dy.Download();
      for (size_t i = 0; i < ids.size(); ++i) {
        const std::string what = std::string(Name(type)) + " cols=" + std::to_string(cols) +
                                 " group=" + std::to_string(x_group) +
                                 " selection=" + std::to_string(i);
        const int64_t xr = static_cast<int64_t>(i) / x_group;
        const std::vector<float> xi(x.begin() + xr * cols, x.begin() + (xr + 1) * cols);
        DeviceBuffer<float> dxi(xi), dyi(rows);
        dyi.Poison();
        ASSERT_EQ(MatMul(type, dw.get() + ids[i] * expert_bytes, rows, cols, dxi.get(), 1,
                         dyi.get(), nullptr, MatMulPath::kGemv),
                  "");
        const std::vector<float> want = dyi.Download();
        const std::vector<float> mine(got.begin() + i * rows, got.begin() + (i + 1) * rows);
        ExpectProduct(experts[ids[i]], xi, 1, mine, what);
        for (int64_t r = 0; r < rows; ++r) {
          ASSERT_EQ(std::memcmp(&mine[r], &want[r], 4), 0) << what << " row " << r;
        }
      }
    }
    // A bad id: NaN rows for that selection, the others still right.
    const std::vector<int32_t> bad = {1, n_expert};
    const std::vector<float> x = RandomFloats(rng, cols);
    DeviceBuffer<uint8_t> dw(stack);
    DeviceBuffer<int32_t> dids(bad);
    DeviceBuffer<float> dx(x), dy(2 * rows);
    ASSERT_EQ(MatMulSelected(type, dw.get(), n_expert, rows, cols, dids.get(), 2, dx.get(), 2, cols,
                             dy.get(), nullptr),
              "");
    const std::vector<float> got = dy.Download();
    for (int64_t r = 0; r < rows; ++r) ASSERT_TRUE(std::isnan(got[rows + r])) << r;
    ExpectProduct(experts[1], x, 1, std::vector<float>(got.begin(), got.begin() + rows), "bad id");
  }
}

TEST_P(MatMulTypeTest, TiledMatchesDequantisedProduct) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  for (int64_t cols : ColsFor(GetParam())) {
    // Rows and tokens around the 64 x 32 tile edges, and t = 1 (a mostly empty tile).
    for (int64_t rows : {1, 63, 65, 130}) {
      for (int64_t t : {1, 3, 17, 32, 33, 70}) {
        RunMatMul(rng, GetParam(), rows, cols, t, MatMulPath::kTiled);
      }
    }
  }
}

TEST_P(MatMulTypeTest, AutoPathAgreesWithItselfAcrossBatchSizes) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  const int64_t cols = ColsFor(GetParam()).back();
  for (int64_t t : {1, 9, 40}) RunMatMul(rng, GetParam(), 96, cols, t, MatMulPath::kAuto);
}

TEST_P(MatMulTypeTest, UnalignedWeightsGiveTheSameProducts) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  const int64_t cols = ColsFor(GetParam()).back();
  for (MatMulPath path : {MatMulPath::kGemv, MatMulPath::kTiled}) {
    for (int64_t t : {1, 5, 40}) RunMatMul(rng, GetParam(), 37, cols, t, path, /*offset=*/4);
  }
}

// Dequantisation alone is bit-identical to the CPU's (same expressions), so embedding rows
// compare exactly; an id out of range gives a NaN row.
TEST_P(MatMulTypeTest, GetRowsIsBitIdenticalToCpuDequantisation) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  const GgmlType type = GetParam();
  for (int64_t cols : ColsFor(type)) {
    const int64_t rows = 23;
    const HostMatrix w = RandomMatrix(rng, type, rows, cols);
    std::vector<int32_t> ids = {0, 22, 5, 5, 17, -1, 23};
    DeviceBuffer<uint8_t> dw(w.bytes);
    DeviceBuffer<int32_t> did(ids);
    DeviceBuffer<float> out(static_cast<int64_t>(ids.size()) * cols);
    out.Poison();
    ASSERT_EQ(GetRows(type, dw.get(), rows, cols, did.get(), ids.size(), out.get(), nullptr), "");
    const std::vector<float> got = out.Download();
    for (size_t i = 0; i < ids.size(); ++i) {
      for (int64_t c = 0; c < cols; ++c) {
        const float g = got[i * cols + c];
        if (ids[i] < 0 || ids[i] >= rows) {
          ASSERT_TRUE(std::isnan(g)) << "row " << i << " col " << c;
        } else {
          ASSERT_EQ(g, w.values[ids[i] * cols + c]) << Name(type) << " row " << i << " col " << c;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllWeightTypes, MatMulTypeTest, ::testing::ValuesIn(kWeightTypes),
                         [](const ::testing::TestParamInfo<GgmlType>& i) {
                           return std::string(Name(i.param));
                         });

// ---- expert FFN
// ----------------------------------------------------------------------------------

struct FfnCase {
  GgmlType gate_up, down;
};

class ExpertFfnTest : public ::testing::TestWithParam<FfnCase> {};

// Routes n_tokens tokens to top_k of n_expert experts at random (some experts get none),
// runs ExpertFfn, and compares with per-entry double-precision experts added to a random
// starting output (ExpertFfn accumulates).
TEST_P(ExpertFfnTest, MatchesPerTokenExperts) {
  MOEX_SKIP_WITHOUT_CUDA();
  const FfnCase fc = GetParam();
  std::mt19937_64 rng(FreshSeed());
  const int64_t b_gu = kcpu::GetTypeTraits(fc.gate_up).block_elems;
  const int64_t b_dn = kcpu::GetTypeTraits(fc.down).block_elems;
  const int64_t n_embd = std::max<int64_t>(256, b_gu), n_ff = b_dn == 256 ? 512 : 96;
  const int64_t n_expert = 7, top_k = 2;
  for (int64_t n_tokens : {1, 5, 37}) {
    std::vector<HostMatrix> gate, up, down;
    std::vector<uint8_t> gb, ub, db;
    for (int64_t e = 0; e < n_expert; ++e) {
      gate.push_back(RandomMatrix(rng, fc.gate_up, n_ff, n_embd));
      up.push_back(RandomMatrix(rng, fc.gate_up, n_ff, n_embd));
      down.push_back(RandomMatrix(rng, fc.down, n_embd, n_ff));
      gb.insert(gb.end(), gate.back().bytes.begin(), gate.back().bytes.end());
      ub.insert(ub.end(), up.back().bytes.begin(), up.back().bytes.end());
      db.insert(db.end(), down.back().bytes.begin(), down.back().bytes.end());
    }
    const std::vector<float> x = RandomFloats(rng, n_tokens * n_embd, 0.1f);
    const std::vector<float> base = RandomFloats(rng, n_tokens * n_embd);
    // Routing: experts 0..4 only (5 and 6 stay empty), k distinct per token.
    std::vector<std::vector<std::pair<int32_t, float>>> by_expert(n_expert);
    std::uniform_real_distribution<float> wdist(0.1f, 1.0f);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const int32_t e0 = static_cast<int32_t>(rng() % 5);
      const int32_t e1 = (e0 + 1 + static_cast<int32_t>(rng() % 4)) % 5;
      by_expert[e0].push_back({static_cast<int32_t>(t), wdist(rng)});
      by_expert[e1].push_back({static_cast<int32_t>(t), wdist(rng)});
    }
    std::vector<int32_t> offsets = {0}, tokens;
    std::vector<float> weights;
    int64_t max_count = 0;
    for (const auto& list : by_expert) {
      for (const auto& [t, w] : list) {
        tokens.push_back(t);
        weights.push_back(w);
      }
      offsets.push_back(static_cast<int32_t>(tokens.size()));
      max_count = std::max<int64_t>(max_count, list.size());
    }
    ASSERT_EQ(static_cast<int64_t>(tokens.size()), n_tokens * top_k);

    DeviceBuffer<uint8_t> dg(gb), du(ub), dd(db);
    DeviceBuffer<float> dx(x), dout(base), dw(weights);
    DeviceBuffer<int32_t> doff(offsets), dtok(tokens);
    ExpertFfnArgs a;
    a.gate_up_type = fc.gate_up;
    a.down_type = fc.down;
    a.gate = dg.get();
    a.up = du.get();
    a.down = dd.get();
    a.n_expert = n_expert;
    a.n_embd = n_embd;
    a.n_ff = n_ff;
    a.x = dx.get();
    a.n_tokens = n_tokens;
    a.offsets = doff.get();
    a.token_ids = dtok.get();
    a.weights = dw.get();
    a.n_entries = static_cast<int64_t>(tokens.size());
    a.max_entries_per_expert = max_count;
    a.out = dout.get();
    // The largest case runs on a caller-owned (poisoned) scratch, the others allocate.
    DeviceBuffer<uint8_t> ws(n_tokens == 37 ? ExpertFfnWorkspaceBytes(a) : 0);
    if (n_tokens == 37) {
      ws.Poison();
      a.workspace = ws.get();
      a.workspace_bytes = ExpertFfnWorkspaceBytes(a);
    }
    ASSERT_EQ(ExpertFfn(a, nullptr), "");
    const std::vector<float> got = dout.Download();

    // Reference in double, with a bound on the F32 error of each output, built from the
    // n * u bound stage by stage: gate and up carry at most rel_gu = 2 (n_embd + 5) u of
    // their magnitude sums (as in ExpectProduct); the activation silu(g) * u inherits
    // |silu'(g)| <= 1.1 times the gate's error times |u|, plus |silu| times up's error, plus
    // a few u of its own; down adds rel_dn of its magnitude sum and carries the activation
    // errors through |Wd|; the scatter-add of top_k terms onto `base` adds top_k u of their
    // magnitudes. The tolerance is twice the bound.
    const double rel_gu = 2.0 * (n_embd + 5) * kF32Unit, rel_dn = 2.0 * (n_ff + 5) * kF32Unit;
    std::vector<double> ref(base.begin(), base.end()), err(n_tokens * n_embd);
    for (int64_t i = 0; i < n_tokens * n_embd; ++i) err[i] = top_k * kF32Unit * std::fabs(base[i]);
    for (int64_t e = 0; e < n_expert; ++e) {
      for (const auto& [t, wt] : by_expert[e]) {
        std::vector<double> act(n_ff), act_err(n_ff);
        for (int64_t f = 0; f < n_ff; ++f) {
          double g = 0, u = 0, gm = 0, um = 0;
          for (int64_t c = 0; c < n_embd; ++c) {
            const double xv = x[t * n_embd + c];
            g += gate[e].values[f * n_embd + c] * xv;
            u += up[e].values[f * n_embd + c] * xv;
            gm += std::fabs(gate[e].values[f * n_embd + c] * xv);
            um += std::fabs(up[e].values[f * n_embd + c] * xv);
          }
          const double silu = g / (1.0 + std::exp(-g));
          act[f] = silu * u;
          act_err[f] = rel_gu * (1.1 * std::fabs(u) * gm + std::fabs(silu) * um) +
                       8 * kF32Unit * std::fabs(act[f]);
        }
        for (int64_t r = 0; r < n_embd; ++r) {
          double y = 0, ym = 0, ye = 0;
          for (int64_t f = 0; f < n_ff; ++f) {
            const double wd = down[e].values[r * n_ff + f];
            y += wd * act[f];
            ym += std::fabs(wd * act[f]);
            ye += std::fabs(wd) * act_err[f];
          }
          ref[t * n_embd + r] += wt * y;
          err[t * n_embd + r] += wt * (rel_dn * ym + ye) + top_k * kF32Unit * wt * std::fabs(y);
        }
      }
    }
    int bad = 0;
    for (int64_t i = 0; i < n_tokens * n_embd && bad < 5; ++i) {
      const double tol = 2.0 * err[i] + 1e-30;
      if (!(std::fabs(got[i] - ref[i]) <= tol)) {
        ADD_FAILURE() << Name(fc.gate_up) << "/" << Name(fc.down) << " t=" << n_tokens << " out["
                      << i / n_embd << "][" << i % n_embd << "] = " << got[i] << ", want " << ref[i]
                      << " +- " << tol;
        ++bad;
      }
    }
  }
}

std::vector<FfnCase> FfnCases() {
  std::vector<FfnCase> cases;
  for (GgmlType t : kWeightTypes) cases.push_back({t, t});
  cases.push_back({GgmlType::kQ4_K, GgmlType::kQ6_K});  // Q4_K_M's usual pairing
  cases.push_back({GgmlType::kQ8_0, GgmlType::kF16});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(TypePairs, ExpertFfnTest, ::testing::ValuesIn(FfnCases()),
                         [](const ::testing::TestParamInfo<FfnCase>& i) {
                           return std::string(Name(i.param.gate_up)) + "_" + Name(i.param.down);
                         });

// ---- argument checks: no kernel runs, so these need no device --------------------------------

TEST(CudaMatMulArgsTest, ErrorsNameTheKernelAndShape) {
  float dummy = 0;
  std::string err = MatMul(GgmlType::kQ2_K, &dummy, 4, 256, &dummy, 1, &dummy, nullptr);
  EXPECT_NE(err.find("MatMul"), std::string::npos) << err;
  EXPECT_NE(err.find("4x256"), std::string::npos) << err;
  EXPECT_NE(err.find("unsupported"), std::string::npos) << err;
  err = MatMul(GgmlType::kQ4_K, &dummy, 4, 100, &dummy, 1, &dummy, nullptr);
  EXPECT_NE(err.find("multiple of the block size 256"), std::string::npos) << err;
  err = GetRows(GgmlType::kQ8_0, &dummy, 0, 32, nullptr, 1, &dummy, nullptr);
  EXPECT_NE(err.find("GetRows"), std::string::npos) << err;
  ExpertFfnArgs a;
  a.gate_up_type = GgmlType::kQ4_K;
  a.down_type = GgmlType::kQ6_K;
  a.n_expert = 8;
  a.n_embd = 100;
  a.n_ff = 256;
  a.n_entries = 4;
  a.max_entries_per_expert = 2;
  err = ExpertFfn(a, nullptr);
  EXPECT_NE(err.find("ExpertFfn (q4_K/q6_K, n_expert=8, n_embd=100"), std::string::npos) << err;
  EXPECT_NE(err.find("block size"), std::string::npos) << err;
}

}  // namespace
}  // namespace moex::kcuda
