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
  // Grown once per thread. Taken only after the MatMul: while this thread waits in its
  // parallel region it may run another session's Route, and nothing below can.
  thread_local std::vector<int32_t> order;
  order.resize(n_expert);
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

namespace {

kcpu::MatMulTask Task(const WeightMatrix& m, const float* x, const int32_t* x_rows,
                      int64_t n_tokens, float* y) {
  return kcpu::MatMulTask{m.type, m.data, m.rows, m.cols, x, x_rows, n_tokens, y};
}

}  // namespace

void DenseFfn(const WeightMatrix& gate, const WeightMatrix& up, const WeightMatrix& down,
              const float* x, int64_t n_tokens, float* out, MoeScratch* scratch) {
  MoeScratch local;
  MoeScratch& s = scratch ? *scratch : local;
  const int64_t n_ff = gate.rows;
  s.g.resize(n_tokens * n_ff);
  s.u.resize(n_tokens * n_ff);
  // Gate and up in one region: x is quantised once for both.
  const kcpu::MatMulTask gu[2] = {Task(gate, x, nullptr, n_tokens, s.g.data()),
                                  Task(up, x, nullptr, n_tokens, s.u.data())};
  kcpu::MatMulMany(gu);
  kcpu::SwiGlu(s.g.data(), s.u.data(), n_tokens * n_ff);
  kcpu::MatMul(down.type, down.data, down.rows, down.cols, s.g.data(), n_tokens, out);
}

void MoeForward(const MoeWeights& w, const Routing& routing, const float* x, int64_t n_tokens,
                float* out) {
  // Without a dispatcher the status is OK for any routing Route() makes.
  MoeForward(w, routing, x, n_tokens, out, nullptr).IgnoreError();
}

absl::Status MoeForward(const MoeWeights& w, const Routing& routing, const float* x,
                        int64_t n_tokens, float* out, const ExpertDispatch& dispatch,
                        MoeScratch* scratch) {
  MoeScratch local;
  MoeScratch& s = scratch ? *scratch : local;
  const int64_t n_embd = w.gate.cols;
  const int64_t n_ff = w.gate.rows;
  const int64_t n_expert = w.gate.n;
  const int64_t k = routing.k;
  const int64_t n_rows = n_tokens * k;
  // Counting sort of the (token, weight) pairs by expert, tokens ascending within each:
  // every active expert then runs once on its rows (prefill reads its weights once).
  s.offset.assign(n_expert + 1, 0);
  for (int64_t i = 0; i < n_rows; ++i) {
    const int32_t e = routing.experts[i];
    if (e < 0 || e >= n_expert) {
      return absl::InvalidArgumentError(
          absl::StrCat("MoE routing names expert ", e, " of ", n_expert));
    }
    ++s.offset[e + 1];
  }
  for (int64_t e = 0; e < n_expert; ++e) s.offset[e + 1] += s.offset[e];
  s.cursor.assign(s.offset.begin(), s.offset.end() - 1);
  s.tokens.resize(n_rows);
  s.weights.resize(n_rows);
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t i = s.cursor[routing.experts[t * k + j]]++;
      s.tokens[i] = static_cast<int32_t>(t);
      s.weights[i] = routing.weights[t * k + j];
    }
  }
  s.active.clear();
  for (int64_t e = 0; e < n_expert; ++e) {
    if (s.offset[e + 1] > s.offset[e]) s.active.push_back(static_cast<int32_t>(e));
  }
  if (dispatch) {
    // The dispatcher only claims experts (see the header): cursor[e] becomes 1 once run.
    std::fill(s.cursor.begin(), s.cursor.end(), 0);
    MoeScratch* sp = &s;  // one pointer: the std::function keeps it without allocating
    const ExpertRun run = [sp](int32_t e, bool /*on_gpu*/) -> absl::Status {
      if (e < 0 || e + 1 >= static_cast<int64_t>(sp->offset.size()) ||
          sp->offset[e + 1] == sp->offset[e]) {
        return absl::InternalError(absl::StrCat("MoE dispatch ran inactive expert ", e));
      }
      sp->cursor[e] = 1;
      return absl::OkStatus();
    };
    if (absl::Status st = dispatch(s.active, run); !st.ok()) return st;
    for (int32_t e : s.active) {
      if (s.cursor[e] == 0) {
        return absl::InternalError(absl::StrCat("MoE dispatch did not run expert ", e));
      }
    }
  }

  // Each routed row's output goes to its own row of y; the combine below adds them in
  // expert order, so the sums are the same whatever order the region computed them in.
  s.g.resize(n_rows * n_ff);
  s.u.resize(n_rows * n_ff);
  s.y.resize(n_rows * n_embd);
  const bool shared = w.shared_gate.valid();
  const bool shared_gated = shared && w.shared_gate_inp.valid();
  const int64_t s_ff = shared ? w.shared_gate.rows : 0;
  if (shared) {
    s.sg.resize(n_tokens * s_ff);
    s.su.resize(n_tokens * s_ff);
    s.sy.resize(n_tokens * n_embd);
    s.slogit.resize(n_tokens);
  }
  // Gate and up products of every active expert (and the shared expert's, and its gate)
  // in one region; x is quantised once for all of them.
  s.tasks.clear();
  for (int32_t e : s.active) {
    const int64_t o = s.offset[e], m = s.offset[e + 1] - o;
    s.tasks.push_back(Task(w.gate.Expert(e), x, s.tokens.data() + o, m, s.g.data() + o * n_ff));
    s.tasks.push_back(Task(w.up.Expert(e), x, s.tokens.data() + o, m, s.u.data() + o * n_ff));
  }
  if (shared) {
    s.tasks.push_back(Task(w.shared_gate, x, nullptr, n_tokens, s.sg.data()));
    s.tasks.push_back(Task(w.shared_up, x, nullptr, n_tokens, s.su.data()));
    if (shared_gated) {
      s.tasks.push_back(Task(w.shared_gate_inp, x, nullptr, n_tokens, s.slogit.data()));
    }
  }
  kcpu::MatMulMany(s.tasks);
  kcpu::SwiGlu(s.g.data(), s.u.data(), n_rows * n_ff);
  if (shared) kcpu::SwiGlu(s.sg.data(), s.su.data(), n_tokens * s_ff);
  // The down products, one region.
  s.tasks.clear();
  for (int32_t e : s.active) {
    const int64_t o = s.offset[e], m = s.offset[e + 1] - o;
    s.tasks.push_back(
        Task(w.down.Expert(e), s.g.data() + o * n_ff, nullptr, m, s.y.data() + o * n_embd));
  }
  if (shared) s.tasks.push_back(Task(w.shared_down, s.sg.data(), nullptr, n_tokens, s.sy.data()));
  kcpu::MatMulMany(s.tasks);

  std::fill(out, out + n_tokens * n_embd, 0.0f);
  for (int32_t e : s.active) {
    for (int32_t i = s.offset[e]; i < s.offset[e + 1]; ++i) {
      kcpu::Axpy(s.weights[i], s.y.data() + int64_t{i} * n_embd, out + s.tokens[i] * n_embd,
                 n_embd);
    }
  }
  if (shared) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float g = shared_gated ? 1.0f / (1.0f + std::exp(-s.slogit[t])) : 1.0f;
      kcpu::Axpy(g, s.sy.data() + t * n_embd, out + t * n_embd, n_embd);
    }
  }
  return absl::OkStatus();
}

}  // namespace moex
