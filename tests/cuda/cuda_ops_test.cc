// Backend parity of the small CUDA operators (kernels_cuda/cuda_ops.h) against kernels_cpu
// (RmsNorm, Rope, SwiGlu, QuantizeRow) and plain loops (router, combine): fresh seeds, odd
// sizes, NaN-poisoned outputs.
#include "kernels_cuda/cuda_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels_cpu/ops.h"
#include "kernels_cpu/quant.h"
#include "tests/cuda/cuda_test_util.h"

namespace moex::kcuda {
namespace {

using kcpu::GgmlType;
using testing::DeviceBuffer;
using testing::FreshSeed;
using testing::kF32Unit;
using testing::RandomFloats;

TEST(CudaOpsTest, RmsNormMatchesCpu) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  for (auto [rows, n] :
       std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 17}, {5, 2048}, {2, 4097}}) {
    for (bool with_w : {false, true}) {
      for (bool in_place : {false, true}) {
        const std::vector<float> x = RandomFloats(rng, rows * n, 3.0f);
        const std::vector<float> w = RandomFloats(rng, n);
        DeviceBuffer<float> dx(x), dw(w), dout(rows * n);
        dout.Poison();
        float* out = in_place ? dx.get() : dout.get();
        ASSERT_EQ(RmsNorm(dx.get(), with_w ? dw.get() : nullptr, rows, n, 1e-6f, out, nullptr), "");
        const std::vector<float> got = in_place ? dx.Download() : dout.Download();
        std::vector<float> want(rows * n);
        for (int64_t r = 0; r < rows; ++r) {
          kcpu::RmsNorm(x.data() + r * n, with_w ? w.data() : nullptr, n, 1e-6f,
                        want.data() + r * n);
        }
        // The GPU sums the squares in F32 (the CPU in double): chains of n / 256 per
        // thread, then 5 + 3 tree levels, so the mean is within (n / 256 + 10) u (26 u at
        // n = 4097), halved by the square root, plus ~4 u for the division, root and two
        // products: 32 u of |out| bounds it.
        for (int64_t i = 0; i < rows * n; ++i) {
          ASSERT_NEAR(got[i], want[i], 32 * kF32Unit * std::fabs(want[i]) + 1e-30)
              << "rows=" << rows << " n=" << n << " i=" << i << " w=" << with_w;
        }
      }
    }
  }
}

TEST(CudaOpsTest, RopeMatchesCpuNormalAndNeox) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  struct Case {
    int64_t n_tokens, n_heads, head_dim, n_rot, pos0;
  };
  for (const Case& c : std::vector<Case>{
           {1, 1, 2, 2, 0}, {3, 4, 64, 64, 7}, {17, 3, 128, 64, 1000}, {2, 5, 256, 256, 40000}}) {
    for (bool neox : {false, true}) {
      const int64_t width = c.n_heads * c.head_dim;
      const std::vector<float> x = RandomFloats(rng, c.n_tokens * width);
      DeviceBuffer<float> dx(x);
      ASSERT_EQ(
          Rope(dx.get(), c.n_tokens, c.n_heads, c.head_dim, c.n_rot, c.pos0, 1e6f, neox, nullptr),
          "");
      const std::vector<float> got = dx.Download();
      std::vector<float> want = x;
      for (int64_t t = 0; t < c.n_tokens; ++t) {
        kcpu::Rope(want.data() + t * width, c.n_heads, c.head_dim, c.n_rot, c.pos0 + t, 1e6f, neox);
      }
      // The angles are the CPU's floats bit for bit (frequencies from the host); CUDA's
      // sincosf is within 2 ulp of the exact value (CUDA Programming Guide, accuracy
      // table) and glibc's within 1, so each rotated value is within ~4 u of
      // (|x0| + |x1|) of the CPU's: 8 u allows for the two products' own rounding.
      for (int64_t i = 0; i < c.n_tokens * width; ++i) {
        const int64_t d = i % c.head_dim;
        const int64_t pair = neox ? (d < c.n_rot / 2 ? d + c.n_rot / 2 : d - c.n_rot / 2)
                                  : (d % 2 == 0 ? d + 1 : d - 1);
        const double mag = std::fabs(x[i]) + (d < c.n_rot ? std::fabs(x[i - d + pair]) : 0.0);
        ASSERT_NEAR(got[i], want[i], 8 * kF32Unit * mag + 1e-30)
            << "pos0=" << c.pos0 << " head_dim=" << c.head_dim << " neox=" << neox << " i=" << i;
      }
    }
  }
}

// Scalar reference of experts/moe_layer.cc's Route on given logits.
void RouteRef(const float* logits, int64_t n_expert, int64_t k, bool norm, std::vector<float>* p,
              std::vector<int32_t>* ids, std::vector<float>* w) {
  p->assign(logits, logits + n_expert);
  kcpu::Softmax(p->data(), n_expert);
  std::vector<int32_t> order(n_expert);
  std::iota(order.begin(), order.end(), 0);
  const std::vector<float>& pr = *p;
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return pr[a] > pr[b] || (pr[a] == pr[b] && a < b);
  });
  float sum = 0;
  for (int64_t j = 0; j < k; ++j) sum += pr[order[j]];
  ids->assign(order.begin(), order.begin() + k);
  w->resize(k);
  for (int64_t j = 0; j < k; ++j) (*w)[j] = norm ? pr[order[j]] / sum : pr[order[j]];
}

TEST(CudaOpsTest, RouterTopKMatchesMoeLayerRouting) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  struct Case {
    int64_t n_tokens, n_expert, k;
  };
  for (const Case& c :
       std::vector<Case>{{1, 8, 2}, {3, 60, 4}, {17, 128, 8}, {5, 1000, 32}, {2, 3, 3}}) {
    for (bool norm : {false, true}) {
      // Distinct logits at least 0.01 apart (a shuffled ramp plus small noise), so the
      // GPU's and the CPU's few-ulp differences in the probabilities cannot swap a pick.
      std::vector<float> logits(c.n_tokens * c.n_expert);
      for (int64_t t = 0; t < c.n_tokens; ++t) {
        std::vector<int> perm(c.n_expert);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        for (int64_t e = 0; e < c.n_expert; ++e) {
          logits[t * c.n_expert + e] = 8.0f * perm[e] / c.n_expert - 4.0f +
                                       0.002f * std::uniform_real_distribution<float>(0, 1)(rng);
        }
      }
      DeviceBuffer<float> dl(logits), dp(c.n_tokens * c.n_expert), dw(c.n_tokens * c.k);
      DeviceBuffer<int32_t> de(c.n_tokens * c.k);
      dp.Poison();
      dw.Poison();
      de.Poison();
      ASSERT_EQ(RouterTopK(dl.get(), c.n_tokens, c.n_expert, c.k, norm, dp.get(), de.get(),
                           dw.get(), nullptr),
                "");
      const std::vector<float> probs = dp.Download(), w = dw.Download();
      const std::vector<int32_t> ids = de.Download();
      for (int64_t t = 0; t < c.n_tokens; ++t) {
        std::vector<float> p_ref, w_ref;
        std::vector<int32_t> id_ref;
        RouteRef(logits.data() + t * c.n_expert, c.n_expert, c.k, norm, &p_ref, &id_ref, &w_ref);
        // Softmax: expf within 2 ulp, sums of <= 1000 terms in F32 (CPU: double): 1e-5
        // relative is ~150 u, above the n u bound of a 32-lane tree of 32-term sums.
        for (int64_t e = 0; e < c.n_expert; ++e) {
          ASSERT_NEAR(probs[t * c.n_expert + e], p_ref[e], 1e-5 * p_ref[e] + 1e-30)
              << "t=" << t << " e=" << e;
        }
        for (int64_t j = 0; j < c.k; ++j) {
          ASSERT_EQ(ids[t * c.k + j], id_ref[j]) << "t=" << t << " pick " << j;
          ASSERT_NEAR(w[t * c.k + j], w_ref[j], 2e-5 * w_ref[j]) << "t=" << t << " pick " << j;
        }
      }
    }
  }
}

TEST(CudaOpsTest, RouterTiesGoToTheLowerExpertId) {
  MOEX_SKIP_WITHOUT_CUDA();
  const std::vector<float> logits(2 * 70, 0.5f);  // all equal
  DeviceBuffer<float> dl(logits), dw(2 * 5);
  DeviceBuffer<int32_t> de(2 * 5);
  ASSERT_EQ(RouterTopK(dl.get(), 2, 70, 5, true, nullptr, de.get(), dw.get(), nullptr), "");
  const std::vector<int32_t> ids = de.Download();
  const std::vector<float> w = dw.Download();
  for (int t = 0; t < 2; ++t) {
    for (int j = 0; j < 5; ++j) {
      EXPECT_EQ(ids[t * 5 + j], j);
      EXPECT_NEAR(w[t * 5 + j], 0.2f, 1e-6f);
    }
  }
}

TEST(CudaOpsTest, SwiGluMatchesCpu) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  for (int64_t n : {1, 31, 1000, 70001}) {
    const std::vector<float> g = RandomFloats(rng, n, 4.0f), u = RandomFloats(rng, n);
    DeviceBuffer<float> dg(g), du(u);
    ASSERT_EQ(SwiGlu(dg.get(), du.get(), n, nullptr), "");
    const std::vector<float> got = dg.Download();
    std::vector<float> want = g;
    kcpu::SwiGlu(want.data(), u.data(), n);
    // expf within 2 ulp on both sides, then a division and a product: 8 u of the value.
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(got[i], want[i], 8 * kF32Unit * std::fabs(want[i]) + 1e-30) << "i=" << i;
    }
  }
}

TEST(CudaOpsTest, AddRowsAddsRowsBiasesAndGatedRows) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  for (auto [n_rows, n] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 300}, {17, 2049}}) {
    for (int mode = 0; mode < 3; ++mode) {  // rows, a bias (stride 0), sigmoid-gated rows
      const int64_t stride = mode == 1 ? 0 : n;
      const std::vector<float> y = RandomFloats(rng, n_rows * n);
      const std::vector<float> x = RandomFloats(rng, mode == 1 ? n : n_rows * n);
      const std::vector<float> logits = RandomFloats(rng, n_rows, 3.0f);
      DeviceBuffer<float> dy(y), dx(x), dl(logits);
      ASSERT_EQ(
          AddRows(dy.get(), dx.get(), n_rows, n, stride, mode == 2 ? dl.get() : nullptr, nullptr),
          "");
      const std::vector<float> got = dy.Download();
      for (int64_t r = 0; r < n_rows; ++r) {
        const float g = mode == 2 ? 1.0f / (1.0f + std::exp(-logits[r])) : 1.0f;
        for (int64_t c = 0; c < n; ++c) {
          const float want = y[r * n + c] + g * x[r * stride + c];
          // expf within 2 ulp, then a division, a product and a sum.
          ASSERT_NEAR(
              got[r * n + c], want,
              8 * kF32Unit * (std::fabs(y[r * n + c]) + std::fabs(x[r * stride + c])) + 1e-30)
              << "mode " << mode << " r=" << r << " c=" << c;
        }
      }
    }
  }
  float* null = nullptr;
  EXPECT_NE(AddRows(null, null, 1, 1, 1, nullptr, nullptr), "");
  EXPECT_NE(AddRows(null, null, 70000, 1, 1, nullptr, nullptr), "");
}

TEST(CudaOpsTest, CombineExpertsIsTheWeightedSumInPickOrder) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  for (auto [n_tokens, k, n] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {3, 2, 300}, {17, 8, 2048}}) {
    for (bool accumulate : {false, true}) {
      const std::vector<float> y = RandomFloats(rng, n_tokens * k * n);
      const std::vector<float> w = RandomFloats(rng, n_tokens * k);
      const std::vector<float> base = RandomFloats(rng, n_tokens * n);
      DeviceBuffer<float> dy(y), dw(w), dout(base);
      if (!accumulate) dout.Poison();
      ASSERT_EQ(CombineExperts(dy.get(), dw.get(), n_tokens, k, n, accumulate, dout.get(), nullptr),
                "");
      const std::vector<float> got = dout.Download();
      for (int64_t t = 0; t < n_tokens; ++t) {
        for (int64_t c = 0; c < n; ++c) {
          double ref = accumulate ? base[t * n + c] : 0.0;
          double mag = std::fabs(ref);
          for (int64_t j = 0; j < k; ++j) {
            ref += static_cast<double>(w[t * k + j]) * y[(t * k + j) * n + c];
            mag += std::fabs(static_cast<double>(w[t * k + j]) * y[(t * k + j) * n + c]);
          }
          // k + 1 F32 additions (n u bound), each product rounded once: (k + 2) u.
          ASSERT_NEAR(got[t * n + c], ref, (k + 2) * kF32Unit * mag + 1e-30)
              << "t=" << t << " c=" << c;
        }
      }
    }
  }
}

// Quantised KV rows compare with kcpu::QuantizeRow: F32/F16/BF16 and Q8_0 bit for bit;
// Q4_1's scale and minimum bit for bit, and its codes equal except where the host
// compiler fused (x - m) * id + 0.5 into an FMA and the GPU's rounding of it landed on
// the other side of .5: at most one code step, and rarely.
TEST(CudaOpsTest, KvStoreMatchesCpuQuantisers) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  for (GgmlType type :
       {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0, GgmlType::kQ4_1}) {
    const KvLayout kv{type, 3, 96, 20};
    const int64_t n_tokens = 5, pos0 = 11, width = kv.n_head_kv * kv.head_dim;
    const int64_t row_bytes = kcpu::RowBytes(kcpu::GetTypeTraits(type), kv.head_dim);
    ASSERT_EQ(KvBufferBytes(kv), kv.n_head_kv * kv.capacity * row_bytes);
    const std::vector<float> k = RandomFloats(rng, n_tokens * width);
    const std::vector<float> v = RandomFloats(rng, n_tokens * width);
    DeviceBuffer<float> dk(k), dv(v);
    DeviceBuffer<uint8_t> kc(KvBufferBytes(kv)), vc(KvBufferBytes(kv));
    kc.Poison();
    vc.Poison();
    ASSERT_EQ(KvStore(kv, dk.get(), dv.get(), n_tokens, pos0, kc.get(), vc.get(), nullptr), "");
    for (int which = 0; which < 2; ++which) {
      const std::vector<uint8_t> got = (which ? vc : kc).Download();
      const std::vector<float>& src = which ? v : k;
      for (int64_t h = 0; h < kv.n_head_kv; ++h) {
        for (int64_t j = 0; j < kv.capacity; ++j) {
          const uint8_t* row = got.data() + (h * kv.capacity + j) * row_bytes;
          if (j < pos0 || j >= pos0 + n_tokens) {  // untouched rows keep the poison
            for (int64_t b = 0; b < row_bytes; ++b) ASSERT_EQ(row[b], 0xFF) << "row " << j;
            continue;
          }
          std::vector<uint8_t> want(row_bytes);
          kcpu::QuantizeRow(type, src.data() + (j - pos0) * width + h * kv.head_dim, want.data(),
                            kv.head_dim);
          if (type != GgmlType::kQ4_1) {
            ASSERT_EQ(std::memcmp(row, want.data(), row_bytes), 0)
                << kcpu::GetTypeTraits(type).name << " head " << h << " row " << j;
            continue;
          }
          std::vector<float> a(kv.head_dim), b(kv.head_dim);
          kcpu::DequantizeRow(type, row, a.data(), kv.head_dim);
          kcpu::DequantizeRow(type, want.data(), b.data(), kv.head_dim);
          for (int64_t blk = 0; blk < kv.head_dim / 32; ++blk) {
            ASSERT_EQ(std::memcmp(row + blk * 20, want.data() + blk * 20, 4), 0) << "scales";
            const float d = kcpu::HalfToFloat(
                static_cast<uint16_t>(want[blk * 20] | (want[blk * 20 + 1] << 8)));
            for (int i = 0; i < 32; ++i) {
              ASSERT_LE(std::fabs(a[blk * 32 + i] - b[blk * 32 + i]), d * 1.0001f);
            }
          }
        }
      }
    }
  }
}

// ---- argument checks: no kernel runs, so these need no device --------------------------------

TEST(CudaOpsArgsTest, ErrorsNameTheKernelAndShape) {
  float f = 0;
  int32_t i = 0;
  std::string err = Rope(&f, 2, 4, 64, 63, 0, 1e4f, false, nullptr);
  EXPECT_NE(err.find("RopeKernel (2x4x64x63)"), std::string::npos) << err;
  err = RouterTopK(&f, 1, 2000, 4, true, nullptr, &i, &f, nullptr);
  EXPECT_NE(err.find("RouterKernel (1x2000x4)"), std::string::npos) << err;
  err = RouterTopK(&f, 1, 8, 9, true, nullptr, &i, &f, nullptr);
  EXPECT_NE(err.find("top_k"), std::string::npos) << err;
  err = RmsNorm(&f, nullptr, 1, 0, 1e-6f, &f, nullptr);
  EXPECT_NE(err.find("RmsNormKernel"), std::string::npos) << err;
  err = KvStore(KvLayout{GgmlType::kQ4_0, 2, 64, 10}, &f, &f, 1, 0, &f, &f, nullptr);
  EXPECT_NE(err.find("unsupported KV type"), std::string::npos) << err;
  err = KvStore(KvLayout{GgmlType::kF16, 2, 64, 10}, &f, &f, 4, 7, &f, &f, nullptr);
  EXPECT_NE(err.find("beyond the KV capacity"), std::string::npos) << err;
  // Nothing to do is not an error.
  EXPECT_EQ(SwiGlu(nullptr, nullptr, 0, nullptr), "");
}

}  // namespace
}  // namespace moex::kcuda
