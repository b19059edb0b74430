#include "runtime/forward.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels_cpu/ops.h"
#include "runtime/core/status_macros.h"
#include "runtime/gpu_forward.h"

namespace moex {
namespace {

void AddBias(float* y, const std::vector<float>& b, int64_t n_tokens) {
  if (b.empty()) return;
  const int64_t n = static_cast<int64_t>(b.size());
  for (int64_t t = 0; t < n_tokens; ++t) kcpu::Axpy(1.0f, b.data(), y + t * n, n);
}

// RMSNorm of n_tokens rows of `width` values, each split in groups of `group` values
// normalised separately (group == width: the whole row).
void NormRows(float* y, const std::vector<float>& w, int64_t n_tokens, int64_t width, int64_t group,
              float eps) {
  for (int64_t i = 0; i < n_tokens * width; i += group) {
    kcpu::RmsNorm(y + i, w.data(), group, eps, y + i);
  }
}

}  // namespace

absl::Status Forward::Attention(int64_t il, const float* cur, int64_t n, int64_t pos0, float* out) {
  const HParams& hp = w_->hp;
  const LayerWeights& l = w_->layers[il];
  const int64_t Q = hp.q_dim(), KV = hp.kv_dim();
  q_.resize(n * Q);
  k_.resize(n * KV);
  v_.resize(n * KV);
  // One parallel region for the three projections: decode's K and V are small (a GQA
  // model's are an eighth of Q), so three regions would each leave threads idle.
  const kcpu::MatMulTask qkv[3] = {
      {l.wq.type, l.wq.data, Q, hp.n_embd, cur, nullptr, n, q_.data()},
      {l.wk.type, l.wk.data, KV, hp.n_embd, cur, nullptr, n, k_.data()},
      {l.wv.type, l.wv.data, KV, hp.n_embd, cur, nullptr, n, v_.data()}};
  kcpu::MatMulMany(qkv);
  AddBias(q_.data(), l.bq, n);
  AddBias(k_.data(), l.bk, n);
  AddBias(v_.data(), l.bv, n);
  if (!l.q_norm.empty()) {
    const bool per_head = hp.arch->qk_norm == QkNorm::kPerHead;
    NormRows(q_.data(), l.q_norm, n, Q, per_head ? hp.head_dim : Q, hp.rms_eps);
    NormRows(k_.data(), l.k_norm, n, KV, per_head ? hp.head_dim : KV, hp.rms_eps);
  }
  const bool neox = hp.arch->rope == RopeStyle::kNeox;
  for (int64_t t = 0; t < n; ++t) {
    kcpu::Rope(q_.data() + t * Q, hp.n_head, hp.head_dim, hp.n_rot, pos0 + t, hp.rope_freq_base,
               neox);
    kcpu::Rope(k_.data() + t * KV, hp.n_head_kv, hp.head_dim, hp.n_rot, pos0 + t, hp.rope_freq_base,
               neox);
  }
  MOEX_RETURN_IF_ERROR(kv_->Append(il, pos0, n, k_.data(), v_.data()));
  attn_.resize(n * Q);
  kv_->Attend(il, q_.data(), n, pos0, hp.n_head, 1.0f / std::sqrt(static_cast<float>(hp.head_dim)),
              attn_.data());
  kcpu::MatMul(l.wo.type, l.wo.data, hp.n_embd, Q, attn_.data(), n, out);
  return absl::OkStatus();
}

absl::Status Forward::Eval(std::span<const int32_t> tokens, bool all_logits,
                           std::vector<float>* logits) {
  const HParams& hp = w_->hp;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return absl::InvalidArgumentError("no tokens to evaluate");
  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= hp.n_vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[t], " at index ", t,
                                                     " is outside the vocabulary (0..",
                                                     hp.n_vocab - 1, ")"));
    }
  }
  MOEX_RETURN_IF_ERROR(kv_->Reserve(n));
  const int64_t pos0 = kv_->size();
  if (gpu_ != nullptr) {
    MOEX_RETURN_IF_ERROR(gpu_->Eval(tokens, pos0, all_logits, logits, observer_));
    kv_->Advance(n);
    return absl::OkStatus();
  }
  const int64_t E = hp.n_embd;

  x_.resize(n * E);
  const WeightMatrix& emb = w_->tok_embd;
  for (int64_t t = 0; t < n; ++t) {
    kcpu::DequantizeRow(emb.type, emb.data + tokens[t] * emb.row_bytes, x_.data() + t * E, E);
  }
  cur_.resize(n * E);
  ffn_.resize(n * E);
  if (hybrid_) hybrid_->BeginStep(n, pos0 + n);
  // A step that fails part way gives its positions back in every layer (what its
  // compression evicted in earlier layers stays evicted), so the session can go on.
  auto fail = [&](absl::Status st) {
    kv_->Truncate(pos0);
    return st;
  };
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    const LayerWeights& l = w_->layers[il];
    if (hybrid_) {
      if (absl::Status st = hybrid_->Dense(il); !st.ok()) return fail(std::move(st));
    }
    for (int64_t t = 0; t < n; ++t) {
      kcpu::RmsNorm(x_.data() + t * E, l.attn_norm.data(), E, hp.rms_eps, cur_.data() + t * E);
    }
    if (absl::Status st = Attention(il, cur_.data(), n, pos0, ffn_.data()); !st.ok()) {
      return fail(std::move(st));
    }
    kcpu::Axpy(1.0f, ffn_.data(), x_.data(), n * E);

    for (int64_t t = 0; t < n; ++t) {
      kcpu::RmsNorm(x_.data() + t * E, l.ffn_norm.data(), E, hp.rms_eps, cur_.data() + t * E);
    }
    if (hp.is_moe()) {
      Route(l.moe, RouterConfig{hp.n_expert_used, hp.arch->norm_topk}, cur_.data(), n, &routing_);
      if (observer_) {
        observer_(MoeLayerEvent{il, pos0, n, &routing_, cur_.data(), x_.data()});
      }
      ExpertDispatch dispatch;
      if (hybrid_ != nullptr) {
        dispatch = [&](const std::vector<int32_t>& active, const ExpertRun& run) {
          return hybrid_->Moe(il, routing_, cur_.data(), active, run);
        };
      }
      if (absl::Status st =
              MoeForward(l.moe, routing_, cur_.data(), n, ffn_.data(), dispatch, &moe_scratch_);
          !st.ok()) {
        return fail(std::move(st));
      }
    } else {
      DenseFfn(l.ffn_gate, l.ffn_up, l.ffn_down, cur_.data(), n, ffn_.data(), &moe_scratch_);
    }
    kcpu::Axpy(1.0f, ffn_.data(), x_.data(), n * E);
  }
  kv_->Advance(n);

  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t n_out = n - first;
  for (int64_t t = first; t < n; ++t) {
    kcpu::RmsNorm(x_.data() + t * E, w_->output_norm.data(), E, hp.rms_eps,
                  cur_.data() + (t - first) * E);
  }
  logits->resize(n_out * hp.n_vocab);
  const WeightMatrix& out = w_->output;
  kcpu::MatMul(out.type, out.data, hp.n_vocab, E, cur_.data(), n_out, logits->data());
  if (hybrid_) return hybrid_->Head();
  return absl::OkStatus();
}

}  // namespace moex
