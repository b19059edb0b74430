// The CPU MoE executor (MatMulMany, the batched MoeForward): bit-identical to running the
// experts one at a time with the per-output formula of the old MatMul, whatever order a
// dispatcher runs them in; and heap allocations on the decode path, counted by a
// replacement of the global operator new (no LD_PRELOAD, so it runs under ctest).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache/kv_cache.h"
#include "experts/moe_layer.h"
#include "gtest/gtest.h"
#include "kernels_cpu/ops.h"
#include "kernels_cpu/quant.h"
#include "kernels_cpu/vec_dot.h"
#include "runtime/arch.h"
#include "runtime/core/gguf.h"
#include "runtime/forward.h"
#include "runtime/model_weights.h"
#include "tests/test_util.h"

namespace {
// Counted from every thread (TBB workers included) while g_counting is set. The
// replacement is process-wide, but it only counts: the other tests of this executable see
// malloc/free behind operator new as before.
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_news{0};

void* CountedAlloc(std::size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}

void* CountedAlignedAlloc(std::size_t n, std::align_val_t al) {
  if (g_counting.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
  const std::size_t a = static_cast<std::size_t>(al);
  // aligned_alloc wants a size that is a multiple of the alignment.
  if (void* p = std::aligned_alloc(a, (n + a - 1) / a * a + (n == 0 ? a : 0))) return p;
  throw std::bad_alloc();
}
}  // namespace

void* operator new(std::size_t n) { return CountedAlloc(n); }
void* operator new[](std::size_t n) { return CountedAlloc(n); }
void* operator new(std::size_t n, std::align_val_t al) { return CountedAlignedAlloc(n, al); }
void* operator new[](std::size_t n, std::align_val_t al) { return CountedAlignedAlloc(n, al); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
// The nothrow forms too (std::stable_sort's temporary buffer uses them): a form left to the
// default would pair its allocator with the free() above (ASan: alloc-dealloc-mismatch).
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return CountedAlloc(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void* operator new(std::size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  try {
    return CountedAlignedAlloc(n, al);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, std::align_val_t al, const std::nothrow_t& t) noexcept {
  return operator new(n, al, t);
}
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

namespace moex {
namespace {

// Allocations made while `fn` runs.
template <typename Fn>
int64_t CountNews(Fn&& fn) {
  g_news.store(0);
  g_counting.store(true);
  fn();
  g_counting.store(false);
  return g_news.load();
}

using kcpu::GgmlType;

// The per-output formula of MatMul before the batched executor, written out: each x row
// quantised to the vec_dot's activation blocks, one integer vec_dot per output; F16/BF16
// widened and dotted with x; F32 dotted in place; other rows dequantised, then dotted.
void RefMatMul(GgmlType type, const uint8_t* w, int64_t rows, int64_t cols, const float* x,
               int64_t n_tokens, float* y) {
  const int64_t row_bytes = kcpu::RowBytes(kcpu::GetTypeTraits(type), cols);
  const GgmlType act = kcpu::VecDotActivationType(type);
  if (act != GgmlType::kF32 && cols % kcpu::GetTypeTraits(act).block_elems == 0) {
    const int64_t xb = kcpu::RowBytes(kcpu::GetTypeTraits(act), cols);
    std::vector<uint8_t> xq(n_tokens * xb);
    for (int64_t t = 0; t < n_tokens; ++t) {
      kcpu::QuantizeActivation(act, x + t * cols, xq.data() + t * xb, cols);
    }
    const kcpu::VecDotFn dot = kcpu::GetVecDot(type);
    for (int64_t n = 0; n < rows; ++n) {
      for (int64_t t = 0; t < n_tokens; ++t) {
        y[t * rows + n] = dot(w + n * row_bytes, xq.data() + t * xb, cols);
      }
    }
    return;
  }
  if (const kcpu::FloatDotFn fdot = kcpu::GetFloatDot(type)) {
    for (int64_t n = 0; n < rows; ++n) {
      for (int64_t t = 0; t < n_tokens; ++t)
        y[t * rows + n] = fdot(w + n * row_bytes, x + t * cols, cols);
    }
    return;
  }
  std::vector<float> row(cols);
  for (int64_t n = 0; n < rows; ++n) {
    kcpu::DequantizeRow(type, w + n * row_bytes, row.data(), cols);
    for (int64_t t = 0; t < n_tokens; ++t)
      y[t * rows + n] = kcpu::Dot(row.data(), x + t * cols, cols);
  }
}

void RefMatMul(const WeightMatrix& m, const float* x, int64_t n_tokens, float* y) {
  RefMatMul(m.type, m.data, m.rows, m.cols, x, n_tokens, y);
}

void RefDenseFfn(const WeightMatrix& g, const WeightMatrix& u, const WeightMatrix& d,
                 const float* x, int64_t n, float* out) {
  std::vector<float> a(n * g.rows), b(n * g.rows);
  RefMatMul(g, x, n, a.data());
  RefMatMul(u, x, n, b.data());
  kcpu::SwiGlu(a.data(), b.data(), n * g.rows);
  RefMatMul(d, a.data(), n, out);
}

// MoeForward as it was before the batched executor: experts one at a time in id order,
// each on a gathered copy of its tokens, combined in expert order.
void RefMoeForward(const MoeWeights& w, const Routing& r, const float* x, int64_t n_tokens,
                   float* out) {
  const int64_t E = w.gate.cols, NE = w.gate.n, k = r.k;
  std::vector<std::vector<std::pair<int64_t, float>>> by_expert(NE);
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t j = 0; j < k; ++j)
      by_expert[r.experts[t * k + j]].push_back({t, r.weights[t * k + j]});
  }
  std::fill(out, out + n_tokens * E, 0.0f);
  for (int64_t e = 0; e < NE; ++e) {
    const auto& toks = by_expert[e];
    if (toks.empty()) continue;
    const int64_t m = static_cast<int64_t>(toks.size());
    std::vector<float> xin(m * E), y(m * E);
    for (int64_t i = 0; i < m; ++i) std::copy_n(x + toks[i].first * E, E, xin.data() + i * E);
    RefDenseFfn(w.gate.Expert(e), w.up.Expert(e), w.down.Expert(e), xin.data(), m, y.data());
    for (int64_t i = 0; i < m; ++i)
      kcpu::Axpy(toks[i].second, y.data() + i * E, out + toks[i].first * E, E);
  }
  if (w.shared_gate.valid()) {
    std::vector<float> y(n_tokens * E), logit(n_tokens, 0.0f);
    RefDenseFfn(w.shared_gate, w.shared_up, w.shared_down, x, n_tokens, y.data());
    if (w.shared_gate_inp.valid()) RefMatMul(w.shared_gate_inp, x, n_tokens, logit.data());
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float s = w.shared_gate_inp.valid() ? 1.0f / (1.0f + std::exp(-logit[t])) : 1.0f;
      kcpu::Axpy(s, y.data() + t * E, out + t * E, E);
    }
  }
}

// Bit patterns, so that NaN poisoning left behind fails and -0 vs +0 counts.
bool BitsEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Random matrices in a block type, quantised from N(0, 0.3) values.
struct Weights {
  std::vector<uint8_t> bytes;
  GgmlType type;
  int64_t n, rows, cols, row_bytes;
  ExpertStack Stack() const { return ExpertStack{type, bytes.data(), n, rows, cols, row_bytes}; }
  WeightMatrix Matrix() const { return Stack().Expert(0); }
};

Weights MakeWeights(std::mt19937_64& rng, GgmlType type, int64_t n, int64_t rows, int64_t cols) {
  Weights w{{}, type, n, rows, cols, kcpu::RowBytes(kcpu::GetTypeTraits(type), cols)};
  w.bytes.resize(n * rows * w.row_bytes);
  std::normal_distribution<float> d(0, 0.3f);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < n * rows; ++r) {
    for (float& v : row) v = d(rng);
    kcpu::QuantizeRow(type, row.data(), w.bytes.data() + r * w.row_bytes, cols);
  }
  return w;
}

std::vector<float> RandomVector(std::mt19937_64& rng, int64_t n) {
  return testing::RandomNormal(rng, static_cast<size_t>(n));
}

// Types of a layer: gate/up, down (a Q4_K_M file mixes Q4_K and Q6_K).
struct LayerTypes {
  GgmlType gate_up, down;
  int64_t embd, ff;  // odd where the block size allows
};

const LayerTypes kLayerTypes[] = {
    {GgmlType::kF32, GgmlType::kF32, 37, 23},     {GgmlType::kF16, GgmlType::kBF16, 45, 19},
    {GgmlType::kQ8_0, GgmlType::kQ8_0, 96, 160},  {GgmlType::kQ4_0, GgmlType::kQ8_0, 64, 96},
    {GgmlType::kQ4_K, GgmlType::kQ6_K, 256, 256}, {GgmlType::kQ5_K, GgmlType::kQ4_K, 512, 256},
};

struct Layer {
  Weights router, gate, up, down, sg, su, sd, sgi;
  MoeWeights w;
};

Layer MakeLayer(std::mt19937_64& rng, const LayerTypes& lt, int64_t n_expert, bool shared) {
  Layer l;
  l.router = MakeWeights(rng, GgmlType::kF32, 1, n_expert, lt.embd);
  l.gate = MakeWeights(rng, lt.gate_up, n_expert, lt.ff, lt.embd);
  l.up = MakeWeights(rng, lt.gate_up, n_expert, lt.ff, lt.embd);
  l.down = MakeWeights(rng, lt.down, n_expert, lt.embd, lt.ff);
  l.w.router = l.router.Matrix();
  l.w.gate = l.gate.Stack();
  l.w.up = l.up.Stack();
  l.w.down = l.down.Stack();
  if (shared) {
    l.sg = MakeWeights(rng, lt.gate_up, 1, lt.ff, lt.embd);
    l.su = MakeWeights(rng, lt.gate_up, 1, lt.ff, lt.embd);
    l.sd = MakeWeights(rng, lt.down, 1, lt.embd, lt.ff);
    l.sgi = MakeWeights(rng, GgmlType::kF32, 1, 1, lt.embd);
    l.w.shared_gate = l.sg.Matrix();
    l.w.shared_up = l.su.Matrix();
    l.w.shared_down = l.sd.Matrix();
    l.w.shared_gate_inp = l.sgi.Matrix();
  }
  return l;
}

TEST(MatMulManyTest, EqualsThePerOutputFormulaBitForBit) {
  const uint64_t seed = std::random_device{}();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  for (const LayerTypes& lt : kLayerTypes) {
    SCOPED_TRACE(kcpu::GetTypeTraits(lt.gate_up).name);
    const int64_t T = 7;
    const std::vector<float> x = RandomVector(rng, T * lt.embd);
    // Tasks reading x through different row lists (shared quantisation), one reading it
    // directly, and one of another width (x2): every combination MoeForward makes.
    const Weights a = MakeWeights(rng, lt.gate_up, 1, 33, lt.embd);
    const Weights b = MakeWeights(rng, lt.gate_up, 1, 5, lt.embd);
    const Weights c = MakeWeights(rng, lt.down, 1, 17, lt.ff);
    const std::vector<float> x2 = RandomVector(rng, 3 * lt.ff);
    const std::vector<int32_t> rows_a = {6, 0, 3}, rows_b = {2, 2, 5, 1, 0};
    std::vector<float> ya(3 * 33, NAN), yb(5 * 5, NAN), yx(T * 33, NAN), yc(3 * 17, NAN);
    const kcpu::MatMulTask tasks[] = {
        {a.type, a.bytes.data(), 33, lt.embd, x.data(), rows_a.data(), 3, ya.data()},
        {b.type, b.bytes.data(), 5, lt.embd, x.data(), rows_b.data(), 5, yb.data()},
        {a.type, a.bytes.data(), 33, lt.embd, x.data(), nullptr, T, yx.data()},
        {c.type, c.bytes.data(), 17, lt.ff, x2.data(), nullptr, 3, yc.data()},
    };
    kcpu::MatMulMany(tasks);
    auto gathered = [&](const std::vector<int32_t>& rows) {
      std::vector<float> g;
      for (int32_t r : rows)
        g.insert(g.end(), x.begin() + r * lt.embd, x.begin() + (r + 1) * lt.embd);
      return g;
    };
    std::vector<float> ra(ya.size()), rb(yb.size()), rx(yx.size()), rc(yc.size());
    RefMatMul(a.type, a.bytes.data(), 33, lt.embd, gathered(rows_a).data(), 3, ra.data());
    RefMatMul(b.type, b.bytes.data(), 5, lt.embd, gathered(rows_b).data(), 5, rb.data());
    RefMatMul(a.type, a.bytes.data(), 33, lt.embd, x.data(), T, rx.data());
    RefMatMul(c.type, c.bytes.data(), 17, lt.ff, x2.data(), 3, rc.data());
    EXPECT_TRUE(BitsEqual(ya, ra));
    EXPECT_TRUE(BitsEqual(yb, rb));
    EXPECT_TRUE(BitsEqual(yx, rx));
    EXPECT_TRUE(BitsEqual(yc, rc));
    // And MatMul, now one task of the same executor.
    std::vector<float> y1(T * 33, NAN);
    kcpu::MatMul(a.type, a.bytes.data(), 33, lt.embd, x.data(), T, y1.data());
    EXPECT_TRUE(BitsEqual(y1, rx));
  }
}

class MoeExecutorTest : public ::testing::TestWithParam<int> {};

TEST_P(MoeExecutorTest, BatchedExecutorEqualsPerExpertOrderBitForBit) {
  const LayerTypes& lt = kLayerTypes[GetParam()];
  const uint64_t seed = std::random_device{}();
  std::printf("seed %llu (%s/%s)\n", static_cast<unsigned long long>(seed),
              kcpu::GetTypeTraits(lt.gate_up).name, kcpu::GetTypeTraits(lt.down).name);
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  for (const bool shared : {false, true}) {
    const int64_t NE = 11, K = 3;
    Layer l = MakeLayer(rng, lt, NE, shared);
    MoeScratch scratch;  // reused across shapes, as the forward pass does
    for (const int64_t T : {1, 2, 13, 1, 40}) {
      SCOPED_TRACE(::testing::Message() << "shared " << shared << " tokens " << T);
      const std::vector<float> x = RandomVector(rng, T * lt.embd);
      Routing r;
      Route(l.w, RouterConfig{K, true}, x.data(), T, &r);
      std::vector<float> want(T * lt.embd), got(T * lt.embd, NAN), got2(T * lt.embd, NAN);
      RefMoeForward(l.w, r, x.data(), T, want.data());
      ASSERT_TRUE(MoeForward(l.w, r, x.data(), T, got.data(), nullptr, &scratch).ok());
      EXPECT_TRUE(BitsEqual(got, want));
      MoeForward(l.w, r, x.data(), T, got2.data());  // without scratch
      EXPECT_TRUE(BitsEqual(got2, want));
      if (shared) {
        std::vector<float> dense(T * lt.embd, NAN), dense_ref(T * lt.embd);
        DenseFfn(l.w.shared_gate, l.w.shared_up, l.w.shared_down, x.data(), T, dense.data(),
                 &scratch);
        RefDenseFfn(l.w.shared_gate, l.w.shared_up, l.w.shared_down, x.data(), T, dense_ref.data());
        EXPECT_TRUE(BitsEqual(dense, dense_ref));
      }
    }
  }
}

TEST_P(MoeExecutorTest, ShuffledDispatchGivesIdenticalOutput) {
  const LayerTypes& lt = kLayerTypes[GetParam()];
  const uint64_t seed = std::random_device{}();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  const int64_t NE = 9, K = 4, T = 6;
  Layer l = MakeLayer(rng, lt, NE, /*shared=*/GetParam() % 2 == 1);
  const std::vector<float> x = RandomVector(rng, T * lt.embd);
  Routing r;
  Route(l.w, RouterConfig{K, false}, x.data(), T, &r);
  std::vector<float> want(T * lt.embd);
  MoeForward(l.w, r, x.data(), T, want.data());
  MoeScratch scratch;
  for (int rep = 0; rep < 4; ++rep) {
    std::vector<int32_t> seen;
    const ExpertDispatch shuffled = [&](const std::vector<int32_t>& active, const ExpertRun& run) {
      std::vector<int32_t> order = active;
      std::shuffle(order.begin(), order.end(), rng);
      for (int32_t e : order) {
        seen.push_back(e);
        if (absl::Status st = run(e, rng() % 2 == 0); !st.ok()) return st;
      }
      return absl::OkStatus();
    };
    std::vector<float> got(T * lt.embd, NAN);
    ASSERT_TRUE(MoeForward(l.w, r, x.data(), T, got.data(), shuffled, &scratch).ok());
    EXPECT_TRUE(BitsEqual(got, want)) << "order " << ::testing::PrintToString(seen);
  }
}

INSTANTIATE_TEST_SUITE_P(Types, MoeExecutorTest, ::testing::Range(0, 6));

TEST(MoeExecutorTest, DispatchErrors) {
  std::mt19937_64 rng(11);
  Layer l = MakeLayer(rng, kLayerTypes[0], 6, false);
  const int64_t T = 3, E = kLayerTypes[0].embd;
  const std::vector<float> x = RandomVector(rng, T * E);
  Routing r;
  Route(l.w, RouterConfig{2, true}, x.data(), T, &r);
  std::vector<float> out(T * E);
  // Skipping an active expert.
  absl::Status st = MoeForward(l.w, r, x.data(), T, out.data(),
                               [](const std::vector<int32_t>& active, const ExpertRun& run) {
                                 for (size_t i = 1; i < active.size(); ++i) {
                                   if (absl::Status s = run(active[i], false); !s.ok()) return s;
                                 }
                                 return absl::OkStatus();
                               });
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  EXPECT_NE(st.message().find("did not run"), std::string::npos) << st;
  // Running one that has no tokens: the dispatcher sees the error and passes it on.
  std::vector<int32_t> inactive;
  st = MoeForward(l.w, r, x.data(), T, out.data(),
                  [&](const std::vector<int32_t>& active, const ExpertRun& run) {
                    for (int32_t e = 0; e < 6; ++e) {
                      if (std::find(active.begin(), active.end(), e) == active.end())
                        return run(e, true);
                    }
                    return absl::OkStatus();
                  });
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  // The dispatcher's own error comes back as it is.
  st = MoeForward(l.w, r, x.data(), T, out.data(),
                  [](const std::vector<int32_t>&, const ExpertRun&) {
                    return absl::UnavailableError("device lost");
                  });
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
}

// Once its scratch has grown, the MoE layer (router, experts, shared expert) and the dense
// FFN allocate nothing, for a decode step and for a batch no larger than one seen before.
TEST(MoeExecutorTest, NoAllocationsOnceScratchHasGrown) {
  std::mt19937_64 rng(3);
  const LayerTypes& lt = kLayerTypes[4];  // Q4_K / Q6_K
  Layer l = MakeLayer(rng, lt, 16, /*shared=*/true);
  const std::vector<float> x = RandomVector(rng, 9 * lt.embd);
  std::vector<float> out(9 * lt.embd);
  Routing r;
  MoeScratch scratch;
  for (const int64_t T : {9, 1}) {
    Route(l.w, RouterConfig{4, true}, x.data(), T, &r);
    ASSERT_TRUE(MoeForward(l.w, r, x.data(), T, out.data(), nullptr, &scratch).ok());
    DenseFfn(l.w.shared_gate, l.w.shared_up, l.w.shared_down, x.data(), T, out.data(), &scratch);
  }
  for (const int64_t T : {1, 9, 4}) {
    SCOPED_TRACE(T);
    EXPECT_EQ(CountNews([&] { Route(l.w, RouterConfig{4, true}, x.data(), T, &r); }), 0);
    EXPECT_EQ(CountNews([&] {
                ASSERT_TRUE(MoeForward(l.w, r, x.data(), T, out.data(), nullptr, &scratch).ok());
              }),
              0);
    EXPECT_EQ(CountNews([&] {
                DenseFfn(l.w.shared_gate, l.w.shared_up, l.w.shared_down, x.data(), T, out.data(),
                         &scratch);
              }),
              0);
  }
}

// KvCache::Attend of a decode step allocates nothing once its scratch has grown to the
// context it reads (the full policy, every stored type).
TEST(MoeExecutorTest, AttendAllocatesNothingInDecode) {
  for (const GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kQ8_0}) {
    SCOPED_TRACE(kcpu::GetTypeTraits(type).name);
    const KvCache::Options o{
        .n_layer = 2, .n_ctx = 64, .n_head_kv = 2, .head_dim = 64, .type = type, .policy = {}};
    auto kv = KvCache::Create(o);
    ASSERT_TRUE(kv.ok()) << kv.status();
    std::mt19937_64 rng(9);
    const int64_t n_head = 8, kv_dim = o.n_head_kv * o.head_dim, q_dim = n_head * o.head_dim;
    const std::vector<float> k = RandomVector(rng, 40 * kv_dim), v = RandomVector(rng, 40 * kv_dim),
                             q = RandomVector(rng, 40 * q_dim);
    std::vector<float> out(40 * q_dim);
    // A prefill of 20, then decode steps; the first decode steps grow the scratch.
    for (int64_t l = 0; l < o.n_layer; ++l) {
      EXPECT_TRUE((*kv)->Append(l, 0, 20, k.data(), v.data()).ok());
      (*kv)->Attend(l, q.data(), 20, 0, n_head, 0.125f, out.data());
    }
    (*kv)->Advance(20);
    // The scratch is per thread: a TBB worker that first takes a head's task at some later
    // step grows its own once (which step depends on scheduling, e.g. slower under ASan).
    // So: at most a few first-touch allocations per thread over the whole decode, never a
    // steady allocation per step.
    int64_t news = 0;
    for (int64_t pos = 20; pos < 40; ++pos) {
      for (int64_t l = 0; l < o.n_layer; ++l) {
        ASSERT_TRUE(
            (*kv)->Append(l, pos, 1, k.data() + pos * kv_dim, v.data() + pos * kv_dim).ok());
        news += CountNews(
            [&] { (*kv)->Attend(l, q.data() + pos * q_dim, 1, pos, n_head, 0.125f, out.data()); });
      }
      (*kv)->Advance(1);
    }
    const int64_t threads = std::thread::hardware_concurrency();
    EXPECT_LE(news, 3 * threads) << "over 20 decode steps x " << o.n_layer << " layers";
  }
}

struct LoadedModel {
  std::unique_ptr<GgufFile> file;
  ModelWeights weights;
};

std::unique_ptr<LoadedModel> Load(const std::string& path) {
  auto m = std::make_unique<LoadedModel>();
  auto file = GgufFile::Open(path);
  if (!file.ok()) return nullptr;
  m->file = std::move(*file);
  auto hp = ReadHParams(*m->file);
  if (!hp.ok()) return nullptr;
  auto w = BindWeights(*m->file, *hp);
  if (!w.ok()) return nullptr;
  m->weights = std::move(*w);
  return m;
}

KvCache::Options KvShape(const HParams& hp, int64_t ctx) {
  KvCache::Options ko;
  ko.n_layer = hp.n_layer;
  ko.n_ctx = ctx;
  ko.n_head_kv = hp.n_head_kv;
  ko.head_dim = hp.head_dim;
  return ko;
}

// Decodes with Forward::Eval (the path `moex run` and `moex bench` take) and counts the
// heap allocations per decoded token once the scratch has grown.
// Allocations per decoded token of the model at `path` (printed), or -1 when it cannot
// be loaded.
double DecodeAllocationsPerToken(const std::string& path) {
  std::unique_ptr<LoadedModel> m = Load(path);
  if (m == nullptr) return -1;
  const HParams& hp = m->weights.hp;
  KvCache::Options ko = KvShape(hp, 256);
  auto kv = KvCache::Create(ko);
  if (!kv.ok()) return -1;
  Forward fwd(&m->weights, kv->get());
  std::vector<float> logits;
  std::vector<int32_t> prompt(24);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(1 + 7 * i % 50);
  if (!fwd.Eval(prompt, false, &logits).ok()) return -1;
  int32_t tok = 3;
  for (int i = 0; i < 8; ++i) {
    if (!fwd.Eval({&tok, 1}, false, &logits).ok()) return -1;
  }
  constexpr int kTokens = 32;
  bool ok = true;
  const int64_t news = CountNews([&] {
    for (int i = 0; i < kTokens; ++i) ok = ok && fwd.Eval({&tok, 1}, false, &logits).ok();
  });
  if (!ok) return -1;
  std::printf("%s: %.2f heap allocations per decoded token (%lld over %d tokens, %lld layers)\n",
              path.c_str(), static_cast<double>(news) / kTokens, static_cast<long long>(news),
              kTokens, static_cast<long long>(hp.n_layer));
  return static_cast<double>(news) / kTokens;
}

class DecodeAllocationsTest : public ::testing::TestWithParam<const char*> {};

TEST_P(DecodeAllocationsTest, PerDecodedToken) {
  const std::string dir = moex::testing::TestDataDir();
  if (dir.empty()) GTEST_SKIP() << "no ../shared/testdata";
  const double per_token = DecodeAllocationsPerToken(dir + "/" + GetParam());
  ASSERT_GE(per_token, 0) << GetParam() << " did not load or decode";
  // What is left is the KV cache growing past position 32 in these 32 steps: per KV head
  // a new page and its entry arrays doubling (84 allocations for the 12 heads of each of
  // these models, 2.6 a token); before the scratch these models made 44-688 per token, so
  // a per-layer or per-expert allocation would show.
  EXPECT_LT(per_token, 4.0);
}

// A model of one's choice (the scaled Qwen3-30B-A3B of docs/PERFORMANCE.md), by
// MOEX_ALLOC_MODEL=path; skipped without it.
TEST(DecodeAllocationsEnvTest, ModelFromEnvironment) {
  const char* path = std::getenv("MOEX_ALLOC_MODEL");
  if (path == nullptr) GTEST_SKIP() << "MOEX_ALLOC_MODEL not set";
  ASSERT_GE(DecodeAllocationsPerToken(path), 0) << path;
}

INSTANTIATE_TEST_SUITE_P(Models, DecodeAllocationsTest,
                         ::testing::Values("tiny-moe/tiny-moe-q8_0.gguf",
                                           "tiny-moe/tiny-moe-f32.gguf",
                                           "models/vis-qwen2moe-q8_0.gguf",
                                           "models/vis-qwen3moe-q4_k_m.gguf",
                                           "models/vis-llama-f16.gguf"));

// A step whose KV pages run out fails with kResourceExhausted and leaves the cache as it
// was: every layer's positions end where they ended before the step (the layers that had
// stored the step's keys give them back), and a shorter step then runs.
TEST(ForwardTest, KvOutOfMemoryLeavesTheCacheAsItWas) {
  const std::string dir = moex::testing::TestDataDir();
  if (dir.empty()) GTEST_SKIP() << "no ../shared/testdata";
  std::unique_ptr<LoadedModel> m = Load(dir + "/tiny-moe/tiny-moe-f32.gguf");
  ASSERT_NE(m, nullptr);
  const HParams& hp = m->weights.hp;
  KvCache::Options ko = KvShape(hp, 256);
  const int64_t page = 32 * 2 * hp.head_dim * 4;  // 32 positions of f32 keys and values
  // Each head's first page, and half the heads' second: the step past 32 positions fails
  // part way through the layers.
  ko.max_bytes = hp.n_layer * hp.n_head_kv * page * 3 / 2;
  auto kv = KvCache::Create(ko);
  ASSERT_TRUE(kv.ok()) << kv.status();
  Forward fwd(&m->weights, kv->get());
  std::vector<float> logits;
  std::vector<int32_t> prompt(24);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(1 + 5 * i % 60);
  ASSERT_TRUE(fwd.Eval(prompt, false, &logits).ok());
  const absl::Status st = fwd.Eval(std::vector<int32_t>(40, 7), false, &logits);
  ASSERT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_EQ((*kv)->size(), 24);
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    for (int64_t h = 0; h < hp.n_head_kv; ++h) {
      const std::vector<int64_t> kept = (*kv)->KeptPositions(l, h);
      ASSERT_EQ(kept.size(), 24u) << "layer " << l << " head " << h;
      EXPECT_EQ(kept.back(), 23);
    }
  }
  ASSERT_TRUE(fwd.Eval(std::vector<int32_t>(8, 7), false, &logits).ok());
  EXPECT_EQ((*kv)->size(), 32);
}

}  // namespace
}  // namespace moex
