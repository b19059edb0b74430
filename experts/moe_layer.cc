#include "experts/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels_cpu/ops.h"

namespace moex {

void Route(const MoeWeights& w, const RouterConfig& cfg, const float* x, int64_t n_tokens,
           Routing* out) {
  const int64_t n_expert = w.router.rows;
  const int64_t k = cfg.top_k;
  out->n_tokens = n_tokens;
  out->k = k;
  out->probs.resize(n_tokens * n_expert);
  out->experts.resize(n_tokens * k);
  out->weights.resize(n_tokens * k);
  kcpu::MatMul(w.router.type, w.router.data, n_expert, w.router.cols, x, n_tokens,
               out->probs.data());
  std::vector<int32_t> order(n_expert);
  for (int64_t t = 0; t < n_tokens; ++t) {
    float* p = out->probs.data() + t * n_expert;
    kcpu::Softmax(p, n_expert);
    std::iota(order.begin(), order.end(), 0);
    // Ties go to the lower expert id, so the choice is deterministic.
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [p](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    float sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += p[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      out->experts[t * k + j] = order[j];
      out->weights[t * k + j] = cfg.norm_topk ? p[order[j]] / sum : p[order[j]];
    }
  }
}

void DenseFfn(const WeightMatrix& gate, const WeightMatrix& up, const WeightMatrix& down,
              const float* x, int64_t n_tokens, float* out) {
  const int64_t n_ff = gate.rows;
  std::vector<float> g(n_tokens * n_ff), u(n_tokens * n_ff);
  kcpu::MatMul(gate.type, gate.data, n_ff, gate.cols, x, n_tokens, g.data());
  kcpu::MatMul(up.type, up.data, n_ff, up.cols, x, n_tokens, u.data());
  kcpu::SwiGlu(g.data(), u.data(), n_tokens * n_ff);
  kcpu::MatMul(down.type, down.data, down.rows, down.cols, g.data(), n_tokens, out);
}

void MoeForward(const MoeWeights& w, const Routing& routing, const float* x, int64_t n_tokens,
                float* out) {
  // Without a dispatcher the status is always OK.
  MoeForward(w, routing, x, n_tokens, out, nullptr).IgnoreError();
}

absl::Status MoeForward(const MoeWeights& w, const Routing& routing, const float* x,
                        int64_t n_tokens, float* out, const ExpertDispatch& dispatch) {
  const int64_t n_embd = w.gate.cols;
  const int64_t n_expert = w.gate.n;
  const int64_t k = routing.k;
  // Group (token, weight) pairs by expert: each active expert runs once on its tokens.
  std::vector<std::vector<std::pair<int64_t, float>>> by_expert(n_expert);
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      by_expert[routing.experts[t * k + j]].push_back({t, routing.weights[t * k + j]});
    }
  }
  std::vector<int32_t> active;
  for (int64_t e = 0; e < n_expert; ++e) {
    if (!by_expert[e].empty()) active.push_back(static_cast<int32_t>(e));
  }
  // Each expert's output goes to its own rows, combined below in expert order whatever
  // order (and side) the dispatcher ran them in: the sums are the same bit for bit.
  std::vector<std::vector<float>> ys(n_expert);
  auto run = [&](int32_t e, bool /*on_gpu*/) -> absl::Status {
    if (e < 0 || e >= n_expert || by_expert[e].empty()) {
      return absl::InternalError(absl::StrCat("MoE dispatch ran inactive expert ", e));
    }
    const auto& toks = by_expert[e];
    const int64_t m = static_cast<int64_t>(toks.size());
    std::vector<float> xin(m * n_embd);
    for (int64_t i = 0; i < m; ++i) {
      std::copy_n(x + toks[i].first * n_embd, n_embd, xin.data() + i * n_embd);
    }
    ys[e].resize(m * n_embd);
    DenseFfn(w.gate.Expert(e), w.up.Expert(e), w.down.Expert(e), xin.data(), m, ys[e].data());
    return absl::OkStatus();
  };
  if (dispatch) {
    if (absl::Status st = dispatch(active, run); !st.ok()) return st;
  } else {
    for (int32_t e : active) {
      if (absl::Status st = run(e, false); !st.ok()) return st;
    }
  }
  std::fill(out, out + n_tokens * n_embd, 0.0f);
  for (int32_t e : active) {
    const auto& toks = by_expert[e];
    if (ys[e].size() != toks.size() * n_embd) {
      return absl::InternalError(absl::StrCat("MoE dispatch did not run expert ", e));
    }
    for (size_t i = 0; i < toks.size(); ++i) {
      kcpu::Axpy(toks[i].second, ys[e].data() + i * n_embd, out + toks[i].first * n_embd, n_embd);
    }
  }
  std::vector<float> y;
  if (w.shared_gate.valid()) {
    y.resize(n_tokens * n_embd);
    DenseFfn(w.shared_gate, w.shared_up, w.shared_down, x, n_tokens, y.data());
    std::vector<float> gate_logit(n_tokens, 0.0f);
    if (w.shared_gate_inp.valid()) {
      kcpu::MatMul(w.shared_gate_inp.type, w.shared_gate_inp.data, 1, n_embd, x, n_tokens,
                   gate_logit.data());
    }
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float s = w.shared_gate_inp.valid() ? 1.0f / (1.0f + std::exp(-gate_logit[t])) : 1.0f;
      kcpu::Axpy(s, y.data() + t * n_embd, out + t * n_embd, n_embd);
    }
  }
  return absl::OkStatus();
}

}  // namespace moex
