#include "runtime/gpu_forward.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "experts/hybrid_moe.h"
#include "runtime/core/status_macros.h"

#ifdef MOEX_HAVE_CUDA
#include "kernels_cuda/cuda_ops.h"
#include "kernels_cuda/cuda_runtime_wrap.h"
#include "runtime/device/device.h"
#endif

namespace moex {

#ifndef MOEX_HAVE_CUDA

// A build without the CUDA toolkit: every entry point says so.
struct GpuForward::Impl {
  std::vector<bool> on_gpu;
  std::vector<int64_t> none;
};
GpuForward::GpuForward(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuForward::~GpuForward() = default;
absl::StatusOr<std::unique_ptr<GpuForward>> GpuForward::Create(const ModelWeights&,
                                                               const GpuForwardOptions&) {
  return absl::UnavailableError("--device cuda: moex was built without CUDA (MOEX_CUDA=OFF)");
}
absl::Status GpuForward::Eval(std::span<const int32_t>, int64_t, bool, std::vector<float>*,
                              const RoutingObserver&) {
  return absl::UnavailableError("moex was built without CUDA");
}
std::string GpuForward::device_name() const { return ""; }
std::string GpuForward::moe_policy() const { return ""; }
const std::vector<bool>& GpuForward::expert_layers_on_gpu() const { return impl_->on_gpu; }
int64_t GpuForward::kv_bytes() const { return 0; }
int64_t GpuForward::device_bytes() const { return 0; }
const std::vector<int64_t>& GpuForward::layer_gpu_experts() const { return impl_->none; }
const std::vector<int64_t>& GpuForward::layer_cpu_experts() const { return impl_->none; }
int64_t GpuForward::steps() const { return 0; }
int64_t GpuForward::tokens() const { return 0; }

#else  // MOEX_HAVE_CUDA

namespace {

using kcpu::GgmlType;

// Tokens per pass through the layers: bounds the scratch buffers (a longer batch runs as
// several passes, as the KV cache sees them one after the other anyway).
constexpr int64_t kMaxBatch = 512;
// Logit rows per head product (a vocabulary of 150k floats is 600 KB a row).
constexpr int64_t kLogitRows = 16;
// Device memory left to the driver (and to kernels that take scratch from cudaMallocAsync)
// when the expert budget is "what fits".
constexpr int64_t kReserveBytes = int64_t{512} << 20;

// A kernels_cuda call's "" or error as a Status.
absl::Status Cuda(const std::string& err) {
  if (err.empty()) return absl::OkStatus();
  return absl::InternalError(err);
}
#define MOEX_CUDA(expr) MOEX_RETURN_IF_ERROR(Cuda(expr))

// A weight matrix in device memory.
struct DMat {
  GgmlType type = GgmlType::kF32;
  const uint8_t* d = nullptr;
  int64_t rows = 0, cols = 0, row_bytes = 0;
  bool valid() const { return d != nullptr; }
};

// A stack of n experts' matrices, back to back as in the file.
struct DStack {
  GgmlType type = GgmlType::kF32;
  const uint8_t* d = nullptr;
  int64_t rows = 0, cols = 0, expert_bytes = 0;
};

struct GLayer {
  const float *attn_norm = nullptr, *ffn_norm = nullptr, *q_norm = nullptr, *k_norm = nullptr;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;
  DMat wq, wk, wv, wo;
  DMat ffn_gate, ffn_up, ffn_down;  // dense layers
  DMat router, sh_gate, sh_up, sh_down, sh_gate_inp;
  bool experts_on_gpu = false;
  DStack gate, up, down;  // routed experts, when on the GPU
  MoeWeights cpu_moe;     // routed experts only (the shared expert runs on the GPU)
  void *k_cache = nullptr, *v_cache = nullptr;
};

double VecBytes(const std::vector<float>& v) { return static_cast<double>(v.size() * 4); }

}  // namespace

struct GpuForward::Impl {
  const ModelWeights* w = nullptr;
  std::unique_ptr<Device> dev;
  StreamId sid = 0;
  void* stream = nullptr;  // the native stream of `sid` (the device keeps it alive)
  kcuda::KvLayout kv;
  std::vector<GLayer> layers;
  DMat tok_embd, output;
  const float* output_norm = nullptr;
  std::vector<bool> on_gpu;
  std::vector<int64_t> gpu_runs, cpu_runs;
  int64_t kv_bytes = 0;
  int64_t steps = 0, tokens = 0;
  std::string policy;  // the placement's name

  // Device scratch, for kMaxBatch tokens.
  float *x = nullptr, *cur = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *attn = nullptr;
  float *ffn = nullptr, *rlogits = nullptr, *probs = nullptr, *rweights = nullptr;
  float *g = nullptr, *u = nullptr, *y = nullptr, *slogit = nullptr, *logits = nullptr;
  float* entry_w = nullptr;
  int32_t *ids = nullptr, *experts = nullptr, *offsets = nullptr, *entry_tok = nullptr;
  void* work = nullptr;  // attention and grouped-expert scratch
  int64_t work_bytes = 0;

  // Host mirrors.
  Routing routing;
  std::vector<float> h_cur, h_x, h_ffn;
  std::vector<int32_t> h_offsets, h_entry_tok, h_cursor;
  std::vector<float> h_entry_w;
  MoeScratch moe_scratch;

  absl::StatusOr<void*> Alloc(int64_t bytes, const std::string& what) {
    MOEX_ASSIGN_OR_RETURN(DeviceAlloc a, dev->Allocate(std::max<int64_t>(bytes, 16), what));
    return a.ptr;
  }
  absl::StatusOr<float*> AllocF(int64_t n, const std::string& what) {
    MOEX_ASSIGN_OR_RETURN(void* p, Alloc(n * 4, what));
    return static_cast<float*>(p);
  }
  // The sources (the mapped file, the model's norm and bias vectors) outlive the copies:
  // Create synchronises once, after the last.
  absl::Status Upload(void* dst, const void* src, int64_t bytes) {
    return dev->CopyToDevice(sid, dst, src, bytes);
  }
  absl::StatusOr<DMat> UploadMat(const WeightMatrix& m, const std::string& what) {
    DMat d;
    if (!m.valid()) return d;
    if (!kcuda::IsSupportedWeightType(m.type)) {
      return absl::UnimplementedError(
          absl::StrCat(what, ": type ", kcpu::GetTypeTraits(m.type).name, " has no CUDA kernel"));
    }
    MOEX_ASSIGN_OR_RETURN(void* p, Alloc(m.bytes(), what));
    MOEX_RETURN_IF_ERROR(Upload(p, m.data, m.bytes()));
    d = DMat{m.type, static_cast<const uint8_t*>(p), m.rows, m.cols, m.row_bytes};
    return d;
  }
  absl::StatusOr<DStack> UploadStack(const ExpertStack& s, const std::string& what) {
    if (!kcuda::IsSupportedWeightType(s.type)) {
      return absl::UnimplementedError(
          absl::StrCat(what, ": type ", kcpu::GetTypeTraits(s.type).name, " has no CUDA kernel"));
    }
    const int64_t bytes = s.n * s.expert_bytes();
    MOEX_ASSIGN_OR_RETURN(void* p, Alloc(bytes, what));
    MOEX_RETURN_IF_ERROR(Upload(p, s.data, bytes));
    return DStack{s.type, static_cast<const uint8_t*>(p), s.rows, s.cols, s.expert_bytes()};
  }
  absl::StatusOr<const float*> UploadVec(const std::vector<float>& v, const std::string& what) {
    if (v.empty()) return nullptr;
    MOEX_ASSIGN_OR_RETURN(void* p, Alloc(static_cast<int64_t>(v.size() * 4), what));
    MOEX_RETURN_IF_ERROR(Upload(p, v.data(), static_cast<int64_t>(v.size() * 4)));
    return static_cast<const float*>(p);
  }

  absl::Status MatMul(const DMat& m, const float* in, int64_t n, float* out) {
    return Cuda(kcuda::MatMul(m.type, m.d, m.rows, m.cols, in, n, out, stream));
  }
  absl::Status Sync() { return dev->Synchronize().status(); }
  absl::Status ToHost(void* dst, const void* src, int64_t bytes) {
    return dev->CopyToHost(sid, dst, src, bytes);
  }

  absl::Status Pass(std::span<const int32_t> tokens, int64_t pos0, int64_t first_logit,
                    std::vector<float>* logits, int64_t logit_row0, const RoutingObserver& obs);
  absl::Status Attention(const GLayer& l, int64_t n, int64_t pos0);
  absl::Status Moe(int64_t il, GLayer& l, int64_t n, int64_t pos0, const RoutingObserver& obs);
  absl::Status SharedExpert(const GLayer& l, int64_t n);
};

GpuForward::GpuForward(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuForward::~GpuForward() = default;

absl::StatusOr<std::unique_ptr<GpuForward>> GpuForward::Create(const ModelWeights& w,
                                                               const GpuForwardOptions& o) {
  const HParams& hp = w.hp;
  kcuda::KvLayout kv{o.kv_type, hp.n_head_kv, hp.head_dim, o.context};
  if (!kcuda::IsSupportedKvType(o.kv_type)) {
    return absl::UnimplementedError(absl::StrCat("--device cuda: KV type ",
                                                 kcpu::GetTypeTraits(o.kv_type).name,
                                                 " (use f32, f16, bf16, q8 or q4)"));
  }
  if (o.context <= 0) return absl::InvalidArgumentError("--device cuda: context must be > 0");
  if (hp.head_dim % 32 != 0 || hp.head_dim > 256) {
    return absl::UnimplementedError(
        absl::StrCat("--device cuda: head_dim ", hp.head_dim,
                     " (the GPU attention takes multiples of 32 up to 256)"));
  }
  MOEX_ASSIGN_OR_RETURN(MoePolicy policy, ParseMoePolicy(o.moe_policy));
  if (policy == MoePolicy::kLruOnDemand) {
    return absl::UnimplementedError(
        "--device cuda --moe-policy lru-ondemand: a real GPU runs static-layers, gpu-only or "
        "cpu-only for now (the dynamic policies run on sim:PROFILE)");
  }

  auto impl = std::make_unique<Impl>();
  Impl& g = *impl;
  g.w = &w;
  g.kv = kv;
  if (policy == MoePolicy::kHybrid) policy = MoePolicy::kStaticLayers;  // not dynamic yet
  g.policy = MoePolicyName(policy);
  MOEX_ASSIGN_OR_RETURN(g.dev, CreateCudaDevice(o.device_index, 0));
  MOEX_ASSIGN_OR_RETURN(g.sid, g.dev->CreateStream());
  MOEX_RETURN_IF_ERROR(g.dev->Launch(g.sid, WorkCost{}, [&](void* ns) {
    g.stream = ns;
    return absl::OkStatus();
  }));

  // ---- the memory plan: dense part, KV, scratch; then whole layers of experts.
  const int64_t E = hp.n_embd, Q = hp.q_dim(), KV = hp.kv_dim(), B = kMaxBatch;
  const int64_t n_exp = std::max<int64_t>(hp.n_expert, 1),
                K = std::max<int64_t>(hp.n_expert_used, 1);
  const int64_t ff = std::max({hp.n_ff, hp.n_ff_exp, hp.n_ff_shexp, int64_t{1}});
  double dense = static_cast<double>(w.tok_embd.bytes()) + VecBytes(w.output_norm) +
                 (w.output.data == w.tok_embd.data ? 0 : static_cast<double>(w.output.bytes()));
  double expert_layer_bytes = 0;
  for (const LayerWeights& l : w.layers) {
    dense += VecBytes(l.attn_norm) + VecBytes(l.ffn_norm) + VecBytes(l.q_norm) +
             VecBytes(l.k_norm) + VecBytes(l.bq) + VecBytes(l.bk) + VecBytes(l.bv) +
             static_cast<double>(DenseMatrixBytes(l));
    if (l.moe.gate.valid()) {
      expert_layer_bytes = std::max<double>(
          expert_layer_bytes,
          static_cast<double>(l.moe.gate.n * (l.moe.gate.expert_bytes() + l.moe.up.expert_bytes() +
                                              l.moe.down.expert_bytes())));
    }
  }
  g.kv_bytes = hp.n_layer * 2 * kcuda::KvBufferBytes(kv);
  // Attention's split-KV scratch at the longest context, and the grouped expert kernel's.
  int64_t work = 0;
  for (int64_t n = 1; n <= std::min<int64_t>(4, o.context); ++n) {
    work = std::max(work, kcuda::AttentionWorkspaceBytes(kv, n, o.context - n, hp.n_head));
  }
  work = std::max<int64_t>(work, B * K * ff * 4);
  const double scratch = 4.0 * (B * (3.0 * E + 2.0 * Q + 2.0 * KV + 2.0 * n_exp + 2.0 * K + 1) +
                                3.0 * B * K * ff + B * K * E + kLogitRows * hp.n_vocab) +
                         4.0 * (B + B * K + n_exp + 1 + B * K) + work;
  const MemoryInfo mem = g.dev->memory();
  const double fixed = dense + static_cast<double>(g.kv_bytes) + scratch;
  if (fixed > static_cast<double>(mem.budget_bytes)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "--device cuda: %s has %.2f GiB free; the dense weights (%.2f GiB), the KV cache of "
        "%lld positions (%.2f GiB) and the scratch buffers (%.2f GiB) need %.2f GiB; a smaller "
        "--ctx or --kv-type q8 needs less",
        g.dev->name(), mem.budget_bytes / 1073741824.0, dense / 1073741824.0,
        static_cast<long long>(o.context), g.kv_bytes / 1073741824.0, scratch / 1073741824.0,
        fixed / 1073741824.0));
  }
  int64_t moe_layers = 0;
  for (const LayerWeights& l : w.layers) moe_layers += l.moe.gate.valid() ? 1 : 0;
  int64_t gpu_layers = 0;
  if (moe_layers > 0) {
    const double left = static_cast<double>(mem.budget_bytes) - fixed - kReserveBytes;
    const double slot_bytes = expert_layer_bytes / static_cast<double>(n_exp);
    MOEX_ASSIGN_OR_RETURN(
        const int64_t slots,
        ResolveSlotBudget(policy, o.gpu_mem, moe_layers * n_exp, slot_bytes, std::max(0.0, left)));
    gpu_layers = std::min<int64_t>(slots / n_exp, moe_layers);
    if (static_cast<double>(gpu_layers) * expert_layer_bytes > std::max(0.0, left)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "--device cuda: %lld layers of experts (%.2f GiB) do not fit beside the dense part "
          "(%.2f GiB left of %.2f GiB)",
          static_cast<long long>(gpu_layers), gpu_layers * expert_layer_bytes / 1073741824.0,
          std::max(0.0, left) / 1073741824.0, mem.budget_bytes / 1073741824.0));
    }
  }

  // ---- uploads
  MOEX_ASSIGN_OR_RETURN(g.tok_embd, g.UploadMat(w.tok_embd, "token_embd.weight"));
  g.output = g.tok_embd;
  if (w.output.data != w.tok_embd.data) {
    MOEX_ASSIGN_OR_RETURN(g.output, g.UploadMat(w.output, "output.weight"));
  }
  MOEX_ASSIGN_OR_RETURN(g.output_norm, g.UploadVec(w.output_norm, "output_norm.weight"));
  g.layers.resize(hp.n_layer);
  g.on_gpu.assign(hp.n_layer, false);
  g.gpu_runs.assign(hp.n_layer, 0);
  g.cpu_runs.assign(hp.n_layer, 0);
  int64_t moe_seen = 0;
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    const LayerWeights& l = w.layers[il];
    GLayer& d = g.layers[il];
    const std::string b = absl::StrCat("blk.", il, ".");
    MOEX_ASSIGN_OR_RETURN(d.attn_norm, g.UploadVec(l.attn_norm, b + "attn_norm"));
    MOEX_ASSIGN_OR_RETURN(d.ffn_norm, g.UploadVec(l.ffn_norm, b + "ffn_norm"));
    MOEX_ASSIGN_OR_RETURN(d.q_norm, g.UploadVec(l.q_norm, b + "attn_q_norm"));
    MOEX_ASSIGN_OR_RETURN(d.k_norm, g.UploadVec(l.k_norm, b + "attn_k_norm"));
    MOEX_ASSIGN_OR_RETURN(d.bq, g.UploadVec(l.bq, b + "attn_q.bias"));
    MOEX_ASSIGN_OR_RETURN(d.bk, g.UploadVec(l.bk, b + "attn_k.bias"));
    MOEX_ASSIGN_OR_RETURN(d.bv, g.UploadVec(l.bv, b + "attn_v.bias"));
    MOEX_ASSIGN_OR_RETURN(d.wq, g.UploadMat(l.wq, b + "attn_q"));
    MOEX_ASSIGN_OR_RETURN(d.wk, g.UploadMat(l.wk, b + "attn_k"));
    MOEX_ASSIGN_OR_RETURN(d.wv, g.UploadMat(l.wv, b + "attn_v"));
    MOEX_ASSIGN_OR_RETURN(d.wo, g.UploadMat(l.wo, b + "attn_output"));
    MOEX_ASSIGN_OR_RETURN(d.ffn_gate, g.UploadMat(l.ffn_gate, b + "ffn_gate"));
    MOEX_ASSIGN_OR_RETURN(d.ffn_up, g.UploadMat(l.ffn_up, b + "ffn_up"));
    MOEX_ASSIGN_OR_RETURN(d.ffn_down, g.UploadMat(l.ffn_down, b + "ffn_down"));
    MOEX_ASSIGN_OR_RETURN(d.router, g.UploadMat(l.moe.router, b + "ffn_gate_inp"));
    MOEX_ASSIGN_OR_RETURN(d.sh_gate, g.UploadMat(l.moe.shared_gate, b + "ffn_gate_shexp"));
    MOEX_ASSIGN_OR_RETURN(d.sh_up, g.UploadMat(l.moe.shared_up, b + "ffn_up_shexp"));
    MOEX_ASSIGN_OR_RETURN(d.sh_down, g.UploadMat(l.moe.shared_down, b + "ffn_down_shexp"));
    MOEX_ASSIGN_OR_RETURN(d.sh_gate_inp,
                          g.UploadMat(l.moe.shared_gate_inp, b + "ffn_gate_inp_shexp"));
    if (l.moe.gate.valid()) {
      // The deepest gpu_layers MoE layers hold their experts on the GPU.
      d.experts_on_gpu = moe_seen >= moe_layers - gpu_layers;
      ++moe_seen;
      if (d.experts_on_gpu) {
        MOEX_ASSIGN_OR_RETURN(d.gate, g.UploadStack(l.moe.gate, b + "ffn_gate_exps"));
        MOEX_ASSIGN_OR_RETURN(d.up, g.UploadStack(l.moe.up, b + "ffn_up_exps"));
        MOEX_ASSIGN_OR_RETURN(d.down, g.UploadStack(l.moe.down, b + "ffn_down_exps"));
      } else {
        d.cpu_moe.router = l.moe.router;
        d.cpu_moe.gate = l.moe.gate;
        d.cpu_moe.up = l.moe.up;
        d.cpu_moe.down = l.moe.down;
      }
      g.on_gpu[il] = d.experts_on_gpu;
    }
    MOEX_ASSIGN_OR_RETURN(d.k_cache, g.Alloc(kcuda::KvBufferBytes(kv), b + "KV cache (K)"));
    MOEX_ASSIGN_OR_RETURN(d.v_cache, g.Alloc(kcuda::KvBufferBytes(kv), b + "KV cache (V)"));
  }

  // ---- scratch
  MOEX_ASSIGN_OR_RETURN(g.x, g.AllocF(B * E, "activations"));
  MOEX_ASSIGN_OR_RETURN(g.cur, g.AllocF(B * E, "activations"));
  MOEX_ASSIGN_OR_RETURN(g.ffn, g.AllocF(B * E, "activations"));
  MOEX_ASSIGN_OR_RETURN(g.q, g.AllocF(B * Q, "queries"));
  MOEX_ASSIGN_OR_RETURN(g.attn, g.AllocF(B * Q, "attention output"));
  MOEX_ASSIGN_OR_RETURN(g.k, g.AllocF(B * KV, "keys"));
  MOEX_ASSIGN_OR_RETURN(g.v, g.AllocF(B * KV, "values"));
  MOEX_ASSIGN_OR_RETURN(g.rlogits, g.AllocF(B * n_exp, "router logits"));
  MOEX_ASSIGN_OR_RETURN(g.probs, g.AllocF(B * n_exp, "router probabilities"));
  MOEX_ASSIGN_OR_RETURN(g.rweights, g.AllocF(B * K, "routing weights"));
  MOEX_ASSIGN_OR_RETURN(g.entry_w, g.AllocF(B * K, "routing weights"));
  MOEX_ASSIGN_OR_RETURN(g.g, g.AllocF(B * K * ff, "FFN gate"));
  MOEX_ASSIGN_OR_RETURN(g.u, g.AllocF(B * K * ff, "FFN up"));
  MOEX_ASSIGN_OR_RETURN(g.y, g.AllocF(B * std::max<int64_t>(K, 1) * E, "expert outputs"));
  MOEX_ASSIGN_OR_RETURN(g.slogit, g.AllocF(B, "shared-expert gate"));
  MOEX_ASSIGN_OR_RETURN(g.logits, g.AllocF(kLogitRows * hp.n_vocab, "logits"));
  MOEX_ASSIGN_OR_RETURN(void* p, g.Alloc(B * 4, "token ids"));
  g.ids = static_cast<int32_t*>(p);
  MOEX_ASSIGN_OR_RETURN(p, g.Alloc(B * K * 4, "routing"));
  g.experts = static_cast<int32_t*>(p);
  MOEX_ASSIGN_OR_RETURN(p, g.Alloc((n_exp + 1) * 4, "routing"));
  g.offsets = static_cast<int32_t*>(p);
  MOEX_ASSIGN_OR_RETURN(p, g.Alloc(B * K * 4, "routing"));
  g.entry_tok = static_cast<int32_t*>(p);
  g.work_bytes = work;
  MOEX_ASSIGN_OR_RETURN(g.work, g.Alloc(work, "attention/expert scratch"));
  MOEX_RETURN_IF_ERROR(g.Sync());  // every upload has landed
  return std::unique_ptr<GpuForward>(new GpuForward(std::move(impl)));
}

absl::Status GpuForward::Impl::Attention(const GLayer& l, int64_t n, int64_t pos0) {
  const HParams& hp = w->hp;
  const int64_t Q = hp.q_dim(), KV = hp.kv_dim();
  MOEX_RETURN_IF_ERROR(MatMul(l.wq, cur, n, q));
  MOEX_RETURN_IF_ERROR(MatMul(l.wk, cur, n, k));
  MOEX_RETURN_IF_ERROR(MatMul(l.wv, cur, n, v));
  if (l.bq) MOEX_CUDA(kcuda::AddRows(q, l.bq, n, Q, 0, nullptr, stream));
  if (l.bk) MOEX_CUDA(kcuda::AddRows(k, l.bk, n, KV, 0, nullptr, stream));
  if (l.bv) MOEX_CUDA(kcuda::AddRows(v, l.bv, n, KV, 0, nullptr, stream));
  if (l.q_norm) {
    // Per head: rows of head_dim (the weight is head_dim long); full width: rows of Q.
    const bool per_head = hp.arch->qk_norm == QkNorm::kPerHead;
    const int64_t qg = per_head ? hp.head_dim : Q, kg = per_head ? hp.head_dim : KV;
    MOEX_CUDA(kcuda::RmsNorm(q, l.q_norm, n * Q / qg, qg, hp.rms_eps, q, stream));
    MOEX_CUDA(kcuda::RmsNorm(k, l.k_norm, n * KV / kg, kg, hp.rms_eps, k, stream));
  }
  const bool neox = hp.arch->rope == RopeStyle::kNeox;
  MOEX_CUDA(
      kcuda::Rope(q, n, hp.n_head, hp.head_dim, hp.n_rot, pos0, hp.rope_freq_base, neox, stream));
  MOEX_CUDA(kcuda::Rope(k, n, hp.n_head_kv, hp.head_dim, hp.n_rot, pos0, hp.rope_freq_base, neox,
                        stream));
  MOEX_CUDA(kcuda::KvStore(kv, k, v, n, pos0, l.k_cache, l.v_cache, stream));
  const float scale = 1.0f / std::sqrt(static_cast<float>(hp.head_dim));
  MOEX_CUDA(kcuda::Attention(kv, l.k_cache, l.v_cache, q, n, pos0, hp.n_head, scale, attn, stream,
                             kcuda::AttentionPath::kAuto, work, work_bytes));
  return MatMul(l.wo, attn, n, ffn);
}

absl::Status GpuForward::Impl::SharedExpert(const GLayer& l, int64_t n) {
  if (!l.sh_gate.valid()) return absl::OkStatus();
  const int64_t E = w->hp.n_embd, sff = l.sh_gate.rows;
  MOEX_RETURN_IF_ERROR(MatMul(l.sh_gate, cur, n, g));
  MOEX_RETURN_IF_ERROR(MatMul(l.sh_up, cur, n, u));
  MOEX_CUDA(kcuda::SwiGlu(g, u, n * sff, stream));
  MOEX_RETURN_IF_ERROR(MatMul(l.sh_down, g, n, y));
  const float* gate = nullptr;
  if (l.sh_gate_inp.valid()) {
    MOEX_RETURN_IF_ERROR(MatMul(l.sh_gate_inp, cur, n, slogit));
    gate = slogit;
  }
  return Cuda(kcuda::AddRows(ffn, y, n, E, E, gate, stream));
}

absl::Status GpuForward::Impl::Moe(int64_t il, GLayer& l, int64_t n, int64_t pos0,
                                   const RoutingObserver& obs) {
  const HParams& hp = w->hp;
  const int64_t E = hp.n_embd, n_exp = hp.n_expert, K = hp.n_expert_used;
  MOEX_RETURN_IF_ERROR(MatMul(l.router, cur, n, rlogits));
  MOEX_CUDA(kcuda::RouterTopK(rlogits, n, n_exp, K, hp.arch->norm_topk, obs ? probs : nullptr,
                              experts, rweights, stream));
  // The routing goes to the host only when someone there needs it: an observer, the
  // CPU's experts, or the grouped kernel's counting sort. Decode on GPU experts waits for
  // nothing: the selected-expert products read the picks on the device.
  const bool small = n <= kcuda::kGemvMaxTokens;
  if (obs || !l.experts_on_gpu || !small) {
    routing.n_tokens = n;
    routing.k = K;
    routing.experts.resize(n * K);
    routing.weights.resize(n * K);
    MOEX_RETURN_IF_ERROR(ToHost(routing.experts.data(), experts, n * K * 4));
    MOEX_RETURN_IF_ERROR(ToHost(routing.weights.data(), rweights, n * K * 4));
    if (obs || !l.experts_on_gpu) {
      h_cur.resize(n * E);
      MOEX_RETURN_IF_ERROR(ToHost(h_cur.data(), cur, n * E * 4));
    }
    if (obs) {
      routing.probs.resize(n * n_exp);
      h_x.resize(n * E);
      MOEX_RETURN_IF_ERROR(ToHost(routing.probs.data(), probs, n * n_exp * 4));
      MOEX_RETURN_IF_ERROR(ToHost(h_x.data(), x, n * E * 4));
    }
    MOEX_RETURN_IF_ERROR(Sync());
    if (obs) obs(MoeLayerEvent{il, pos0, n, &routing, h_cur.data(), h_x.data()});
  }

  if (!l.experts_on_gpu) {
    cpu_runs[il] += n * K;
    h_ffn.resize(n * E);
    MOEX_RETURN_IF_ERROR(
        MoeForward(l.cpu_moe, routing, h_cur.data(), n, h_ffn.data(), nullptr, &moe_scratch));
    MOEX_RETURN_IF_ERROR(dev->CopyToDevice(sid, ffn, h_ffn.data(), n * E * 4));
    // h_ffn must outlive the copy: the next use of it comes after a Sync.
    return SharedExpert(l, n);
  }
  gpu_runs[il] += n * K;
  const int64_t ff = l.gate.rows;
  if (small) {
    // Gate and up of every pick (x_group K: a token's row serves its K picks), SwiGLU,
    // down (each pick its own row), then the combine in pick order: deterministic.
    const int64_t m = n * K;
    MOEX_CUDA(kcuda::MatMulSelected(l.gate.type, l.gate.d, n_exp, ff, E, experts, m, cur, K, E, g,
                                    stream));
    MOEX_CUDA(
        kcuda::MatMulSelected(l.up.type, l.up.d, n_exp, ff, E, experts, m, cur, K, E, u, stream));
    MOEX_CUDA(kcuda::SwiGlu(g, u, m * ff, stream));
    MOEX_CUDA(kcuda::MatMulSelected(l.down.type, l.down.d, n_exp, E, ff, experts, m, g, 1, ff, y,
                                    stream));
    MOEX_CUDA(kcuda::CombineExperts(y, rweights, n, K, E, /*accumulate=*/false, ffn, stream));
    return SharedExpert(l, n);
  }
  // A batch: the (token, expert) entries grouped by expert (a counting sort), then the
  // grouped kernel accumulating into a zeroed output.
  h_offsets.assign(n_exp + 1, 0);
  for (int32_t e : routing.experts) {
    if (e < 0 || e >= n_exp) {
      return absl::InternalError(absl::StrCat("router picked expert ", e, " of ", n_exp));
    }
    ++h_offsets[e + 1];
  }
  int64_t max_per = 0;
  for (int64_t e = 0; e < n_exp; ++e) {
    max_per = std::max<int64_t>(max_per, h_offsets[e + 1]);
    h_offsets[e + 1] += h_offsets[e];
  }
  h_cursor.assign(h_offsets.begin(), h_offsets.end() - 1);
  h_entry_tok.resize(n * K);
  h_entry_w.resize(n * K);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < K; ++j) {
      const int32_t slot = h_cursor[routing.experts[t * K + j]]++;
      h_entry_tok[slot] = static_cast<int32_t>(t);
      h_entry_w[slot] = routing.weights[t * K + j];
    }
  }
  MOEX_RETURN_IF_ERROR(dev->CopyToDevice(sid, offsets, h_offsets.data(), (n_exp + 1) * 4));
  MOEX_RETURN_IF_ERROR(dev->CopyToDevice(sid, entry_tok, h_entry_tok.data(), n * K * 4));
  MOEX_RETURN_IF_ERROR(dev->CopyToDevice(sid, entry_w, h_entry_w.data(), n * K * 4));
  kcuda::ExpertFfnArgs a;
  a.gate_up_type = l.gate.type;
  a.down_type = l.down.type;
  a.gate = l.gate.d;
  a.up = l.up.d;
  a.down = l.down.d;
  a.n_expert = n_exp;
  a.n_embd = E;
  a.n_ff = ff;
  a.x = cur;
  a.n_tokens = n;
  a.offsets = offsets;
  a.token_ids = entry_tok;
  a.weights = entry_w;
  a.n_entries = n * K;
  a.max_entries_per_expert = max_per;
  a.out = ffn;
  a.workspace = work;
  a.workspace_bytes = work_bytes;
  MOEX_CUDA(kcuda::CudaMemsetAsync(ffn, 0, static_cast<size_t>(n * E * 4), stream));
  MOEX_CUDA(kcuda::ExpertFfn(a, stream));
  // The host arrays are read by the copies above: wait before they are reused.
  MOEX_RETURN_IF_ERROR(SharedExpert(l, n));
  return Sync();
}

absl::Status GpuForward::Impl::Pass(std::span<const int32_t> tokens, int64_t pos0,
                                    int64_t first_logit, std::vector<float>* out, int64_t out_row0,
                                    const RoutingObserver& obs) {
  const HParams& hp = w->hp;
  const int64_t n = static_cast<int64_t>(tokens.size()), E = hp.n_embd;
  MOEX_RETURN_IF_ERROR(dev->CopyToDevice(sid, ids, tokens.data(), n * 4));
  MOEX_CUDA(kcuda::GetRows(tok_embd.type, tok_embd.d, tok_embd.rows, E, ids, n, x, stream));
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    GLayer& l = layers[il];
    MOEX_CUDA(kcuda::RmsNorm(x, l.attn_norm, n, E, hp.rms_eps, cur, stream));
    MOEX_RETURN_IF_ERROR(Attention(l, n, pos0));
    MOEX_CUDA(kcuda::AddRows(x, ffn, n, E, E, nullptr, stream));
    MOEX_CUDA(kcuda::RmsNorm(x, l.ffn_norm, n, E, hp.rms_eps, cur, stream));
    if (l.router.valid()) {
      MOEX_RETURN_IF_ERROR(Moe(il, l, n, pos0, obs));
    } else {
      MOEX_RETURN_IF_ERROR(MatMul(l.ffn_gate, cur, n, g));
      MOEX_RETURN_IF_ERROR(MatMul(l.ffn_up, cur, n, u));
      MOEX_CUDA(kcuda::SwiGlu(g, u, n * l.ffn_gate.rows, stream));
      MOEX_RETURN_IF_ERROR(MatMul(l.ffn_down, g, n, ffn));
    }
    MOEX_CUDA(kcuda::AddRows(x, ffn, n, E, E, nullptr, stream));
  }
  // The head, kLogitRows rows at a time, into out rows out_row0...
  for (int64_t t = first_logit; t < n; t += kLogitRows) {
    const int64_t rows = std::min(kLogitRows, n - t);
    MOEX_CUDA(kcuda::RmsNorm(x + t * E, output_norm, rows, E, hp.rms_eps, cur, stream));
    MOEX_RETURN_IF_ERROR(MatMul(output, cur, rows, logits));
    float* dst = out->data() + (out_row0 + t - first_logit) * hp.n_vocab;
    MOEX_RETURN_IF_ERROR(ToHost(dst, logits, rows * hp.n_vocab * 4));
    MOEX_RETURN_IF_ERROR(Sync());
  }
  return Sync();
}

absl::Status GpuForward::Eval(std::span<const int32_t> tokens, int64_t pos0, bool all_logits,
                              std::vector<float>* logits, const RoutingObserver& observer) {
  Impl& g = *impl_;
  const int64_t n = static_cast<int64_t>(tokens.size()), V = g.w->hp.n_vocab;
  if (pos0 + n > g.kv.capacity) {
    return absl::OutOfRangeError(absl::StrCat("--device cuda: positions up to ", pos0 + n,
                                              " beyond the GPU KV cache's ", g.kv.capacity));
  }
  logits->resize((all_logits ? n : 1) * V);
  ++g.steps;
  g.tokens += n;
  for (int64_t b = 0; b < n; b += kMaxBatch) {
    const int64_t m = std::min(kMaxBatch, n - b);
    // Logit rows of this pass: all of them, or the very last token's only.
    const int64_t first = all_logits ? 0 : (b + m == n ? m - 1 : m);
    MOEX_RETURN_IF_ERROR(
        g.Pass(tokens.subspan(b, m), pos0 + b, first, logits, all_logits ? b : 0, observer));
  }
  return absl::OkStatus();
}

std::string GpuForward::device_name() const { return impl_->dev->name(); }
std::string GpuForward::moe_policy() const { return impl_->policy; }
const std::vector<bool>& GpuForward::expert_layers_on_gpu() const { return impl_->on_gpu; }
int64_t GpuForward::kv_bytes() const { return impl_->kv_bytes; }
int64_t GpuForward::device_bytes() const { return impl_->dev->memory().used_bytes; }
const std::vector<int64_t>& GpuForward::layer_gpu_experts() const { return impl_->gpu_runs; }
const std::vector<int64_t>& GpuForward::layer_cpu_experts() const { return impl_->cpu_runs; }
int64_t GpuForward::steps() const { return impl_->steps; }
int64_t GpuForward::tokens() const { return impl_->tokens; }

#endif  // MOEX_HAVE_CUDA

}  // namespace moex
