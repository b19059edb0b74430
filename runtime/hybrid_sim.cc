// Trace-driven simulation of hybrid CPU/GPU MoE inference (include/moex/sim.h): a routing
// trace replayed through HybridMoe (the scheduler, expert cache and prefetcher a model run
// uses) on a simulated device, with the dense part of each layer priced from the model's
// shape.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "experts/hybrid_moe.h"
#include "moex/sim.h"
#include "runtime/core/ini.h"
#include "runtime/core/status_macros.h"
#include "runtime/device/device.h"

namespace moex {
namespace embedded {
extern const char kModelShapesIni[];
}

namespace {

absl::StatusOr<std::vector<ModelShape>> ParseShapes() {
  MOEX_ASSIGN_OR_RETURN(auto sections, ParseIni(embedded::kModelShapesIni, "model_shapes.ini"));
  std::vector<ModelShape> out;
  for (const IniSection& s : sections) {
    IniReader r(s, "model_shapes.ini");
    ModelShape m;
    m.name = s.name;
    int64_t layers = 0, dense_layers = 0, experts = 0, top_k = 0, heads = 0, kv_heads = 0,
            head_dim = 0;
    MOEX_RETURN_IF_ERROR(r.Integer("layers", &layers));
    MOEX_RETURN_IF_ERROR(r.Integer("dense_layers", &dense_layers, true));
    MOEX_RETURN_IF_ERROR(r.Integer("dense_ffn", &m.dense_ffn, true));
    MOEX_RETURN_IF_ERROR(r.Integer("hidden", &m.hidden));
    MOEX_RETURN_IF_ERROR(r.Integer("experts", &experts));
    MOEX_RETURN_IF_ERROR(r.Integer("top_k", &top_k));
    MOEX_RETURN_IF_ERROR(r.Integer("expert_ffn", &m.expert_ffn));
    MOEX_RETURN_IF_ERROR(r.Integer("shared_ffn", &m.shared_ffn, true));
    MOEX_RETURN_IF_ERROR(r.Integer("heads", &heads));
    MOEX_RETURN_IF_ERROR(r.Integer("kv_heads", &kv_heads));
    MOEX_RETURN_IF_ERROR(r.Integer("head_dim", &head_dim));
    MOEX_RETURN_IF_ERROR(r.Integer("attn_params", &m.attn_params, true));
    MOEX_RETURN_IF_ERROR(r.Integer("kv_dim", &m.kv_dim, true));
    MOEX_RETURN_IF_ERROR(r.Integer("vocab", &m.vocab));
    MOEX_RETURN_IF_ERROR(r.Text("expert_quant", &m.expert_quant, true));
    MOEX_RETURN_IF_ERROR(r.Finish());
    m.layers = static_cast<int32_t>(layers);
    m.dense_layers = static_cast<int32_t>(dense_layers);
    m.experts = static_cast<int32_t>(experts);
    m.top_k = static_cast<int32_t>(top_k);
    m.heads = static_cast<int32_t>(heads);
    m.kv_heads = static_cast<int32_t>(kv_heads);
    m.head_dim = static_cast<int32_t>(head_dim);
    out.push_back(std::move(m));
  }
  return out;
}

// Bits per weight of a quantisation, for its main tensors and for the "more bits" ones
// (llama.cpp's _M mixes give attn_v and ffn_down Q6_K in the first and last eighth of the
// layers and every third between; the output head is Q6_K in every quantised mix).
struct QuantBits {
  double base = 0, more = 0, head = 0;
};

absl::StatusOr<QuantBits> FindQuant(const std::string& q) {
  constexpr double kQ6K = 6.5625;
  if (q == "q4_k_m") return QuantBits{4.5, kQ6K, kQ6K};
  if (q == "q5_k_m") return QuantBits{5.5, kQ6K, kQ6K};
  if (q == "q4_0") return QuantBits{4.5, 4.5, kQ6K};
  if (q == "q8_0") return QuantBits{8.5, 8.5, 8.5};
  if (q == "f16" || q == "bf16") return QuantBits{16, 16, 16};
  if (q == "mxfp4") return QuantBits{4.25, 4.25, kQ6K};
  return absl::InvalidArgumentError(
      absl::StrCat("unknown --quant '", q, "' (q4_k_m, q5_k_m, q4_0, q8_0, f16, bf16, mxfp4)"));
}

bool MoreBits(int layer, int layers) {
  return layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
}

uint64_t Mix(uint64_t x) {  // splitmix64 finaliser: independent draws from (seed, indices)
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

std::vector<ModelShape> BuiltinModelShapes() {
  auto shapes = ParseShapes();
  return shapes.ok() ? *shapes : std::vector<ModelShape>{};  // the table is tested to parse
}

absl::StatusOr<ModelShape> FindModelShape(const std::string& name) {
  MOEX_ASSIGN_OR_RETURN(auto shapes, ParseShapes());
  std::string names;
  for (const ModelShape& m : shapes) {
    if (m.name == name) return m;
    absl::StrAppend(&names, names.empty() ? "" : ", ", m.name);
  }
  return absl::NotFoundError(absl::StrCat("unknown model shape '", name, "' (", names, ")"));
}

absl::StatusOr<SimReport> SimulateTrace(const Trace& trace, const SimOptions& o) {
  ModelShape m = o.shape;
  if (m.layers <= 0) {
    MOEX_ASSIGN_OR_RETURN(m, FindModelShape(o.model_shape));
  }
  const TraceHeader& h = trace.header;
  if (h.num_layers != m.layers || h.num_experts != m.experts || h.top_k != m.top_k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the trace has ", h.num_layers, " MoE layers, ", h.num_experts, " experts, top-", h.top_k,
        "; the shape '", m.name, "' has ", m.layers, ", ", m.experts, ", top-", m.top_k));
  }
  if (trace.tokens() == 0) return absl::InvalidArgumentError("the trace has no tokens");
  if (o.context < 0 || o.prefill_tokens < 0) {
    return absl::InvalidArgumentError("--context and --prefill must be >= 0");
  }
  MOEX_ASSIGN_OR_RETURN(GpuProfile gpu, FindGpuProfile(o.gpu));
  MOEX_ASSIGN_OR_RETURN(CpuProfile cpu, FindCpuProfile(o.cpu));
  MOEX_ASSIGN_OR_RETURN(QuantBits q, FindQuant(o.quant));
  QuantBits qe = q;
  if (!m.expert_quant.empty()) {
    MOEX_ASSIGN_OR_RETURN(qe, FindQuant(m.expert_quant));
  }

  // Bytes. Experts: one size for all (the mean over layers of the _M mixes' down matrix).
  const int32_t L = m.layers, E = m.experts, K = m.top_k;
  const int total_layers = m.dense_layers + L;
  double expert_bytes = 0, attn_bytes_total = 0;
  const double attn_params = m.attn_params > 0 ? m.attn_params
                                               : static_cast<double>(m.hidden) * m.head_dim *
                                                     (2.0 * m.heads + 2.0 * m.kv_heads);
  const double v_params =
      m.attn_params > 0 ? 0 : static_cast<double>(m.hidden) * m.head_dim * m.kv_heads;
  std::vector<double> attn_bytes(total_layers);
  for (int l = 0; l < total_layers; ++l) {
    const bool more = MoreBits(l, total_layers);
    attn_bytes[l] = ((attn_params - v_params) * q.base + v_params * (more ? q.more : q.base)) / 8;
    attn_bytes_total += attn_bytes[l];
    if (l >= m.dense_layers) {
      expert_bytes += m.hidden * m.expert_ffn * (2 * qe.base + (more ? qe.more : qe.base)) / 8 / L;
    }
  }
  if (o.expert_bytes > 0) expert_bytes = o.expert_bytes;
  const double kv_dim = m.kv_dim > 0 ? m.kv_dim : 2.0 * m.kv_heads * m.head_dim;
  const double shared_bytes = 3.0 * m.hidden * m.shared_ffn * q.base / 8;
  const double router_bytes = 4.0 * m.hidden * E;
  const double dense_ffn_bytes = 3.0 * m.hidden * m.dense_ffn * q.base / 8;
  const double head_bytes = static_cast<double>(m.vocab) * m.hidden * q.head / 8;
  const double kv_bytes = 2.0 * kv_dim * total_layers * (o.context + o.prefill_tokens);
  constexpr double kWorkspace = 256.0 * 1048576;  // activations, scratch, CUDA context slack
  // The token embedding stays in host memory (one row per token is gathered there, as
  // llama.cpp does); everything else dense lives on the GPU.
  const double dense_total = attn_bytes_total + L * (shared_bytes + router_bytes) +
                             m.dense_layers * dense_ffn_bytes + head_bytes + kv_bytes + kWorkspace;
  const int64_t all = int64_t{L} * E;
  MOEX_ASSIGN_OR_RETURN(const MoePolicy policy, ParseMoePolicy(o.policy));
  MOEX_ASSIGN_OR_RETURN(const int64_t slots,
                        ResolveSlotBudget(policy, o.gpu_mem, all, expert_bytes,
                                          static_cast<double>(gpu.memory_bytes) - dense_total));
  const double need = dense_total + slots * expert_bytes;
  if (need > gpu.memory_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        m.name, " ", o.quant, ": ", slots, " expert slots (",
        std::llround(slots * expert_bytes / 1048576), " MiB) + dense weights, KV and workspace (",
        std::llround(dense_total / 1048576), " MiB) = ", std::llround(need / 1048576),
        " MiB exceed the ", gpu.name, "'s ", std::llround(gpu.memory_bytes / 1048576.0), " MiB"));
  }

  // The run's control, as a model run would build it.
  HybridMoeOptions ho;
  ho.policy = policy;
  if (!o.cache_policy.empty()) {
    MOEX_ASSIGN_OR_RETURN(ho.cache_policy, ParseExpertCachePolicy(o.cache_policy));
  }
  if (!o.prefetch.empty()) {
    MOEX_ASSIGN_OR_RETURN(ho.prefetch, ParsePrefetchMode(o.prefetch));
  }
  ho.prefetch_count = o.prefetch_count;
  ho.num_layers = L;
  ho.num_experts = E;
  ho.top_k = K;
  ho.hidden = m.hidden;
  ho.slot_budget = slots;
  // static: the trace's own frequencies (an optimistic profile: it has seen the future);
  // belady: the trace's next uses, in steps.
  const int64_t T = trace.tokens();
  const int64_t prefill = o.prefill_tokens;
  std::vector<int64_t> step_of(T);
  {
    int64_t step = 0;
    for (int64_t s = 0; s < trace.sequences(); ++s) {
      for (int64_t t = trace.seq_start[s]; t < trace.seq_start[s + 1]; ++t) {
        const int64_t i = t - trace.seq_start[s];
        step_of[t] = (i < prefill && i > 0) ? step : ++step;
      }
    }
  }
  ho.frequency.assign(all, 0.0);
  std::vector<std::vector<int64_t>> uses(all);  // steps at which (layer, expert) is used
  for (int64_t t = 0; t < T; ++t) {
    for (int32_t l = 0; l < L; ++l) {
      for (int32_t j = 0; j < K; ++j) {
        const int64_t key = int64_t{l} * E + trace.experts[(t * L + l) * K + j];
        ho.frequency[key] += 1;
        if (uses[key].empty() || uses[key].back() != step_of[t]) uses[key].push_back(step_of[t]);
      }
    }
  }
  // The next use not yet made: a layer that has not run in the current step still has
  // this step's uses to come.
  std::vector<int64_t> ran_at(L, -1);
  ho.next_use = [&uses, &ran_at, E](int32_t l, int32_t e, int64_t now) -> int64_t {
    const auto& u = uses[int64_t{l} * E + e];
    auto it = ran_at[l] >= now ? std::upper_bound(u.begin(), u.end(), now)
                               : std::lower_bound(u.begin(), u.end(), now);
    return it == u.end() ? std::numeric_limits<int64_t>::max() : *it;
  };

  ExpertShape es{m.hidden, m.expert_ffn, expert_bytes};
  const MoeCostModel cost(gpu, cpu, es);
  MOEX_ASSIGN_OR_RETURN(auto device, CreateSimDevice(SimDeviceOptions{gpu, cpu, 0}));
  MOEX_ASSIGN_OR_RETURN(auto hybrid, HybridMoe::Create(ho, cost, device.get()));

  // The predictor.
  enum class Pred { kPrev, kOracle, kNone } pred;
  if (o.predictor == "previous-token") {
    pred = Pred::kPrev;
  } else if (o.predictor == "oracle") {
    pred = Pred::kOracle;
    if (!(o.predict_accuracy >= 0 && o.predict_accuracy <= 1)) {
      return absl::InvalidArgumentError("--predict-accuracy must be in [0, 1]");
    }
  } else if (o.predictor == "none") {
    pred = Pred::kNone;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown --predictor '", o.predictor, "' (previous-token, oracle, none)"));
  }
  double precision = 0.5;  // previous-token: running share of its guesses that were right
  double recall_sum = 0;
  int64_t recall_n = 0;

  // Dense work of one layer for `n` tokens attending `ctx` positions: the attention
  // projections, router, shared expert (or dense FFN) and the KV reads, on the GPU.
  auto dense = [&](int l, int64_t n, double ctx) {
    const bool moe = l >= m.dense_layers;
    const double w = attn_bytes[l] + (moe ? shared_bytes + router_bytes : dense_ffn_bytes);
    const double params = attn_params + 3.0 * m.hidden * (moe ? m.shared_ffn : m.dense_ffn);
    return WorkCost{w + 2.0 * kv_dim * ctx + 8.0 * n * m.hidden,
                    2.0 * params * n + 4.0 * ctx * m.heads * m.head_dim * n};
  };
  constexpr int kDenseLaunches = 4;  // norm+qkv, attention, o-proj+norm, router (+shared)
  auto run_dense = [&](const WorkCost& w) -> absl::Status {
    for (int i = 0; i < kDenseLaunches; ++i) {
      MOEX_RETURN_IF_ERROR(
          hybrid->RunDense(WorkCost{w.bytes / kDenseLaunches, w.flops / kDenseLaunches}, nullptr));
    }
    return absl::OkStatus();
  };

  double decode_s = 0, prefill_s = 0;
  int64_t decode_tokens = 0, prefill_tokens = 0;
  std::vector<int32_t> batch_experts;
  std::vector<float> batch_scores;
  auto expert_at = [&](int64_t t, int32_t l, int32_t j) {
    return trace.experts[(t * L + l) * K + j];
  };
  for (int64_t s = 0; s < trace.sequences(); ++s) {
    const int64_t begin = trace.seq_start[s], end = trace.seq_start[s + 1];
    int64_t t = begin;
    while (t < end) {
      const int64_t n = (t == begin && prefill > 0) ? std::min(prefill, end - begin) : 1;
      const double ctx = o.context + (t - begin) + (n > 1 ? n / 2.0 : 0);
      MOEX_ASSIGN_OR_RETURN(double clock0, device->Synchronize());
      hybrid->BeginStep(step_of[t], n);
      for (int l = 0; l < m.dense_layers; ++l) MOEX_RETURN_IF_ERROR(run_dense(dense(l, n, ctx)));
      for (int32_t l = 0; l < L; ++l) {
        MOEX_RETURN_IF_ERROR(run_dense(dense(m.dense_layers + l, n, ctx)));
        HybridMoe::LayerInput in;
        in.layer = l;
        in.tokens = n;
        in.k = K;
        batch_experts.resize(n * K);
        batch_scores.resize(n * K);
        for (int64_t i = 0; i < n; ++i) {
          for (int32_t j = 0; j < K; ++j) {
            batch_experts[i * K + j] = expert_at(t + i, l, j);
            batch_scores[i * K + j] =
                trace.weights.empty() ? 1.0f / K : trace.weights[((t + i) * L + l) * K + j];
          }
        }
        in.experts = batch_experts.data();
        in.scores = batch_scores.data();
        if (l + 1 < L && pred != Pred::kNone) {
          // Guesses for layer l + 1 (decode: one token; prefill: the oracle's counts).
          std::vector<int32_t> guess_count(E, 0);
          for (int64_t i = 0; i < n; ++i) {
            const int64_t tok = t + i;
            for (int32_t j = 0; j < K; ++j) {
              int32_t g = -1;
              if (pred == Pred::kOracle) {
                g = expert_at(tok, l + 1, j);
                const uint64_t r =
                    Mix(o.seed ^ Mix(tok * 1315423911ULL + (l + 1) * 2654435761ULL + j));
                if (static_cast<double>(r >> 11) * 0x1.0p-53 >= o.predict_accuracy) {
                  // A wrong expert: uniform among those not chosen by this token.
                  for (uint64_t d = Mix(r);; d = Mix(d)) {
                    const int32_t c = static_cast<int32_t>(d % E);
                    bool chosen = false;
                    for (int32_t jj = 0; jj < K; ++jj) chosen |= expert_at(tok, l + 1, jj) == c;
                    if (!chosen) {
                      g = c;
                      break;
                    }
                  }
                }
              } else if (n == 1 && tok > begin) {
                g = expert_at(tok - 1, l + 1, j);
              }
              if (g >= 0) ++guess_count[g];
            }
          }
          const double prob = pred == Pred::kOracle ? o.predict_accuracy : precision;
          int32_t right = 0, guessed = 0;
          for (int32_t e = 0; e < E; ++e) {
            if (guess_count[e] == 0) continue;
            in.next.push_back(ExpertGuess{e, guess_count[e], prob});
            ++guessed;
            for (int64_t i = 0; i < n; ++i) {
              for (int32_t j = 0; j < K; ++j) right += expert_at(t + i, l + 1, j) == e ? 1 : 0;
            }
          }
          if (n == 1 && guessed > 0) {
            recall_sum += static_cast<double>(right) / K;
            ++recall_n;
            if (pred == Pred::kPrev) precision = 0.9 * precision + 0.1 * right / guessed;
          }
        }
        ran_at[l] = step_of[t];
        MOEX_RETURN_IF_ERROR(hybrid->RunMoe(in, nullptr));
      }
      // Final norm and output head for the last token of the step.
      MOEX_RETURN_IF_ERROR(hybrid->RunDense(
          WorkCost{head_bytes + 4.0 * m.vocab, 2.0 * m.vocab * m.hidden}, nullptr));
      MOEX_ASSIGN_OR_RETURN(double clock1, device->Synchronize());
      if (n > 1) {
        prefill_s += clock1 - clock0;
        prefill_tokens += n;
      } else {
        decode_s += clock1 - clock0;
        ++decode_tokens;
      }
      t += n;
    }
  }

  const HybridStats& st = hybrid->stats();
  SimReport r;
  r.model_shape = m.name;
  r.quant = o.quant;
  r.gpu = gpu.name;
  r.cpu = cpu.name;
  r.policy = MoePolicyName(ho.policy);
  r.cache_policy = ExpertCachePolicyName(hybrid->cache().policy());
  r.prefetch = PrefetchModeName(hybrid->prefetch());
  r.predictor = pred == Pred::kOracle ? absl::StrCat("oracle:", o.predict_accuracy) : o.predictor;
  r.decode_tokens = decode_tokens;
  r.prefill_tokens = prefill_tokens;
  r.decode_tps = decode_s > 0 ? decode_tokens / decode_s : 0;
  r.prefill_tps = prefill_s > 0 ? prefill_tokens / prefill_s : 0;
  const int64_t uses_total = st.hits + st.misses;
  r.hit_rate = uses_total > 0 ? static_cast<double>(st.hits) / uses_total : 0;
  r.bytes_copied_per_token = st.bytes_copied / T;
  r.stall_ms_per_token = 1e3 * st.gpu_wait_s / T;
  r.cpu_ms_per_token = 1e3 * st.cpu_busy_s / T;
  r.predictor_recall = recall_n > 0 ? recall_sum / recall_n : -1;
  r.prefetch_copies = st.prefetch_copies;
  r.ondemand_copies = st.ondemand_copies;
  r.expert_bytes = expert_bytes;
  r.slots = 0;
  for (int32_t c : hybrid->slots()) r.slots += c;
  r.gpu_expert_share = static_cast<double>(r.slots) / all;
  r.dense_bytes = dense_total;
  r.gpu_memory_bytes = static_cast<double>(gpu.memory_bytes);
  r.bound_tps = cpu.mem_gbps * 1e9 / (K * L * expert_bytes);
  for (int32_t l = 0; l < L; ++l) {
    const HybridLayerStats& ls = st.layers[l];
    SimLayer sl;
    sl.gpu_experts_per_token = static_cast<double>(ls.gpu_experts) / T;
    sl.cpu_experts_per_token = static_cast<double>(ls.cpu_experts) / T;
    sl.hit_rate =
        ls.hits + ls.misses > 0 ? static_cast<double>(ls.hits) / (ls.hits + ls.misses) : 0;
    sl.slots = hybrid->slots()[l];
    r.layers.push_back(sl);
  }
  return r;
}

}  // namespace moex
