// Backend parity of the CUDA attention kernels (flash-decoding and tiled prefill) against
// kcpu::CausalAttention on the same KV rows dequantised by kcpu::DequantizeRow: every KV
// type, GQA groups, head sizes 32..256, decode and prefill shapes, contexts across the
// decode split size, rows past the stored ones poisoned (NaN) so a read past the causal
// limit shows.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels_cpu/attention.h"
#include "kernels_cpu/quant.h"
#include "kernels_cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace moex::kcuda {
namespace {

using kcpu::GgmlType;
using testing::DeviceBuffer;
using testing::FreshSeed;
using testing::kF32Unit;
using testing::RandomFloats;

struct Shape {
  int64_t n_head, n_head_kv, head_dim;
};
struct Span {
  int64_t n_tokens, pos0;
};

// own_workspace: pass a caller-owned scratch (NaN-poisoned) instead of letting Attention
// allocate one.
void RunAttention(std::mt19937_64& rng, GgmlType type, const Shape& sh, const Span& sp,
                  AttentionPath path, bool own_workspace = false) {
  const int64_t n_rows = sp.pos0 + sp.n_tokens;
  const KvLayout kv{type, sh.n_head_kv, sh.head_dim, n_rows + 7};  // 7 spare, poisoned rows
  const int64_t row_bytes = kcpu::RowBytes(kcpu::GetTypeTraits(type), sh.head_dim);
  const int64_t kv_width = sh.n_head_kv * sh.head_dim, q_width = sh.n_head * sh.head_dim;
  // Device layout: poison everywhere (0xFF: NaN scales and values), then the stored rows.
  std::vector<uint8_t> kb(KvBufferBytes(kv), 0xFF), vb(KvBufferBytes(kv), 0xFF);
  // Dequantised copies in kcpu::CausalAttention's layout [row][n_head_kv * head_dim].
  std::vector<float> kf(n_rows * kv_width), vf(n_rows * kv_width);
  float vmax = 0;
  for (int64_t h = 0; h < sh.n_head_kv; ++h) {
    for (int64_t j = 0; j < n_rows; ++j) {
      const std::vector<float> k = RandomFloats(rng, sh.head_dim);
      const std::vector<float> v = RandomFloats(rng, sh.head_dim);
      uint8_t* kr = kb.data() + (h * kv.capacity + j) * row_bytes;
      uint8_t* vr = vb.data() + (h * kv.capacity + j) * row_bytes;
      kcpu::QuantizeRow(type, k.data(), kr, sh.head_dim);
      kcpu::QuantizeRow(type, v.data(), vr, sh.head_dim);
      kcpu::DequantizeRow(type, kr, kf.data() + j * kv_width + h * sh.head_dim, sh.head_dim);
      kcpu::DequantizeRow(type, vr, vf.data() + j * kv_width + h * sh.head_dim, sh.head_dim);
    }
  }
  for (float x : vf) vmax = std::max(vmax, std::fabs(x));
  const std::vector<float> q = RandomFloats(rng, sp.n_tokens * q_width);
  const float scale = 1.0f / std::sqrt(static_cast<float>(sh.head_dim));

  DeviceBuffer<uint8_t> dk(kb), dv(vb);
  DeviceBuffer<float> dq(q), dout(sp.n_tokens * q_width);
  dout.Poison();
  const std::string what =
      std::string(kcpu::GetTypeTraits(type).name) + " heads " + std::to_string(sh.n_head) + "/" +
      std::to_string(sh.n_head_kv) + " d=" + std::to_string(sh.head_dim) +
      " t=" + std::to_string(sp.n_tokens) + " pos0=" + std::to_string(sp.pos0) +
      " path=" + std::to_string(static_cast<int>(path));
  const int64_t ws_bytes = AttentionWorkspaceBytes(kv, sp.n_tokens, sp.pos0, sh.n_head, path);
  DeviceBuffer<uint8_t> ws(own_workspace ? ws_bytes : 0);
  if (own_workspace) ws.Poison();
  ASSERT_EQ(Attention(kv, dk.get(), dv.get(), dq.get(), sp.n_tokens, sp.pos0, sh.n_head, scale,
                      dout.get(), nullptr, path, own_workspace ? ws.get() : nullptr, ws_bytes),
            "")
      << what;
  const std::vector<float> got = dout.Download();

  std::vector<float> want(sp.n_tokens * q_width);
  kcpu::AttentionShape as{sh.n_head, sh.n_head_kv, sh.head_dim, scale};
  kcpu::CausalAttention(as, q.data(), sp.n_tokens, sp.pos0, kf.data(), vf.data(), kv_width,
                        want.data());
  // Tolerance 2e-4 * max|v|. Both sides compute in F32, in different orders. A score is a
  // head_dim-term dot whose rounding is typically sqrt(head_dim) u of its magnitude sum
  // (about 0.64 sqrt(head_dim) after the 1/sqrt(head_dim) scale), ~1e-6 absolute; a score
  // error e moves each softmax weight by a relative e and the output by at most
  // 2 e max|v|; the weighted sum over <= 704 rows adds typically sqrt(n) u max|v|, ~2e-6.
  // So honest differences stay near 1e-5 max|v| (20x margin), while a wrong row, mask,
  // head or block decode moves outputs by O(0.1 max|v|), and a poisoned row gives NaN.
  const double tol = 2e-4 * vmax;
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i) {
    if (!(std::fabs(got[i] - want[i]) <= tol)) {
      ADD_FAILURE() << what << ": out[" << i / q_width << "][" << i % q_width << "] = " << got[i]
                    << ", want " << want[i] << " +- " << tol;
      ++bad;
    }
  }
}

class AttentionTypeTest : public ::testing::TestWithParam<GgmlType> {};

const std::vector<Shape> kShapes = {{4, 4, 64}, {8, 2, 128}, {6, 1, 256}, {3, 3, 32}};

TEST_P(AttentionTypeTest, DecodeMatchesCpu) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  // One token at the start, within one split, across the 256-row split edge, many splits;
  // and a few causal tokens per call (speculative / small batches).
  for (const Shape& sh : kShapes) {
    for (const Span& sp :
         std::vector<Span>{{1, 0}, {1, 100}, {1, 255}, {1, 256}, {1, 700}, {3, 17}, {4, 300}}) {
      RunAttention(rng, GetParam(), sh, sp, AttentionPath::kDecode);
    }
  }
}

TEST_P(AttentionTypeTest, PrefillMatchesCpu) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  // Fresh prompts (pos0 = 0) around the 16-query and 32-row tile edges, and prompts that
  // continue a cache (pos0 > 0), t = 1 included.
  for (const Shape& sh : kShapes) {
    for (const Span& sp : std::vector<Span>{
             {1, 0}, {3, 0}, {17, 0}, {33, 0}, {70, 0}, {1, 40}, {19, 45}, {40, 300}}) {
      RunAttention(rng, GetParam(), sh, sp, AttentionPath::kPrefill);
    }
  }
}

TEST_P(AttentionTypeTest, AutoPathChoosesAWorkingKernel) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  RunAttention(rng, GetParam(), {8, 4, 128}, {1, 333}, AttentionPath::kAuto);
  RunAttention(rng, GetParam(), {8, 4, 128}, {21, 5}, AttentionPath::kAuto);
}

TEST_P(AttentionTypeTest, DecodeWithACallerWorkspace) {
  MOEX_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng(FreshSeed());
  RunAttention(rng, GetParam(), {8, 2, 128}, {1, 600}, AttentionPath::kDecode, true);
  RunAttention(rng, GetParam(), {8, 2, 128}, {3, 40}, AttentionPath::kDecode, true);
}

INSTANTIATE_TEST_SUITE_P(AllKvTypes, AttentionTypeTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16,
                                           GgmlType::kQ8_0, GgmlType::kQ4_1),
                         [](const ::testing::TestParamInfo<GgmlType>& i) {
                           return std::string(kcpu::GetTypeTraits(i.param).name);
                         });

TEST(CudaAttentionArgsTest, ErrorsNameTheKernelAndShape) {
  float f = 0;
  std::string err = Attention(KvLayout{GgmlType::kF16, 3, 128, 100}, &f, &f, &f, 1, 10, 8, 1.0f, &f,
                              nullptr, AttentionPath::kDecode);
  EXPECT_NE(err.find("DecodeKernel (f16, n_head_kv=3, head_dim=128"), std::string::npos) << err;
  EXPECT_NE(err.find("multiple of n_head_kv"), std::string::npos) << err;
  err = Attention(KvLayout{GgmlType::kQ8_0, 2, 80, 100}, &f, &f, &f, 20, 0, 4, 1.0f, &f, nullptr,
                  AttentionPath::kPrefill);
  EXPECT_NE(err.find("PrefillKernel"), std::string::npos) << err;
  EXPECT_NE(err.find("head_dim must be a multiple of 32"), std::string::npos) << err;
  err = Attention(KvLayout{GgmlType::kF32, 2, 64, 100}, &f, &f, &f, 20, 90, 4, 1.0f, &f, nullptr);
  EXPECT_NE(err.find("beyond the KV capacity"), std::string::npos) << err;
  const KvLayout kv{GgmlType::kF16, 2, 64, 1000};
  EXPECT_EQ(AttentionWorkspaceBytes(kv, 20, 0, 4, AttentionPath::kPrefill), 0);
  // 513 rows: 3 splits of 256, each 2 floats + 64 outputs, for 2 tokens x 4 heads.
  const int64_t need = AttentionWorkspaceBytes(kv, 2, 511, 4, AttentionPath::kDecode);
  EXPECT_EQ(need, 2 * 4 * 3 * (2 + 64) * 4);
  err =
      Attention(kv, &f, &f, &f, 2, 511, 4, 1.0f, &f, nullptr, AttentionPath::kDecode, &f, need - 1);
  EXPECT_NE(err.find("workspace of"), std::string::npos) << err;
}

}  // namespace
}  // namespace moex::kcuda
