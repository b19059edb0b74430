#include "runtime/hybrid_run.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "predictor/expert_predictor.h"
#include "runtime/core/status_macros.h"
#include "runtime/device/calibrate.h"

namespace moex {

absl::StatusOr<std::unique_ptr<HybridRun>> HybridRun::Create(const ModelWeights& w,
                                                             const HybridRunOptions& o) {
  const HParams& hp = w.hp;
  if (!hp.is_moe()) {
    return absl::InvalidArgumentError("--device/--moe-policy: the model has no routed experts");
  }
  if (!absl::StartsWith(o.device, "sim:")) {
    // A real GPU runs through runtime/gpu_forward.h, the CPU through Forward alone.
    return absl::InvalidArgumentError(
        absl::StrCat("--device '", o.device, "': the hybrid executor drives sim:PROFILE only"));
  }
  MOEX_ASSIGN_OR_RETURN(GpuProfile gpu, FindGpuProfile(o.device.substr(4)));
  const MoeWeights& m0 = w.layers[0].moe;
  const double expert_bytes =
      static_cast<double>(m0.gate.expert_bytes() + m0.up.expert_bytes() + m0.down.expert_bytes());
  CpuProfile cpu;
  const std::string cpu_name = o.cpu_profile.empty() ? "host" : o.cpu_profile;
  if (cpu_name == "host") {
    // This machine, measured for the model's own expert shape and type (cached).
    CalibrationOptions co;
    co.hidden = hp.n_embd;
    co.ffn = hp.n_ff_exp;
    co.type = kcpu::GetTypeTraits(m0.gate.type).name;
    co.gpu = false;
    MOEX_ASSIGN_OR_RETURN(Calibration cal, RunCalibration(co));
    cpu = cal.cpu.host;
  } else {
    MOEX_ASSIGN_OR_RETURN(cpu, FindCpuProfile(cpu_name));
  }

  auto run = std::unique_ptr<HybridRun>(new HybridRun());
  run->w_ = &w;
  run->expert_bytes_ = expert_bytes;
  // What stays on the GPU beside the expert slots: every layer's attention, norms, router
  // and shared expert, the output head, and the KV cache (f16) of the context.
  // The token embedding stays in host memory (a row gathered per token); the output head
  // (the same tensor when tied) is on the GPU.
  double dense_total = static_cast<double>(w.output.bytes());
  for (const LayerWeights& l : w.layers) {
    const double b = static_cast<double>(DenseMatrixBytes(l));
    run->dense_bytes_.push_back(b);
    dense_total += b;
  }
  run->head_bytes_ = static_cast<double>(w.output.bytes());
  const double kv_total = 2.0 * 2.0 * hp.kv_dim() * hp.n_layer * std::max<int64_t>(o.context, 1);
  const int64_t all = hp.n_layer * hp.n_expert;

  MOEX_ASSIGN_OR_RETURN(run->device_, CreateSimDevice(SimDeviceOptions{gpu, cpu, 0}));
  // The dense weights and the KV cache take their memory first; the experts get what the
  // --gpu-mem value says, or what is left. The device refuses what does not fit.
  MOEX_ASSIGN_OR_RETURN(
      DeviceAlloc dense,
      run->device_->Allocate(static_cast<int64_t>(dense_total + kv_total), "dense weights + KV"));
  run->held_.push_back(dense);
  const MemoryInfo mem = run->device_->memory();
  MOEX_ASSIGN_OR_RETURN(const MoePolicy policy, ParseMoePolicy(o.moe_policy));
  MOEX_ASSIGN_OR_RETURN(const int64_t slots,
                        ResolveSlotBudget(policy, o.gpu_mem, all, expert_bytes,
                                          static_cast<double>(mem.budget_bytes - mem.used_bytes)));
  if (slots > 0) {
    MOEX_ASSIGN_OR_RETURN(DeviceAlloc pool,
                          run->device_->Allocate(static_cast<int64_t>(slots * expert_bytes),
                                                 absl::StrCat(slots, " expert slots")));
    run->held_.push_back(pool);
  }

  HybridMoeOptions ho;
  ho.policy = policy;
  if (!o.cache_policy.empty()) {
    MOEX_ASSIGN_OR_RETURN(ho.cache_policy, ParseExpertCachePolicy(o.cache_policy));
    if (*ho.cache_policy == ExpertCachePolicy::kStatic ||
        *ho.cache_policy == ExpertCachePolicy::kBelady) {
      return absl::InvalidArgumentError(
          absl::StrCat("--cache-policy ", o.cache_policy,
                       " needs a routing profile or the future: moex sim only"));
    }
  }
  if (!o.prefetch.empty()) {
    MOEX_ASSIGN_OR_RETURN(ho.prefetch, ParsePrefetchMode(o.prefetch));
  }
  ho.num_layers = static_cast<int32_t>(hp.n_layer);
  ho.num_experts = static_cast<int32_t>(hp.n_expert);
  ho.top_k = static_cast<int32_t>(hp.n_expert_used);
  ho.hidden = hp.n_embd;
  ho.slot_budget = slots;
  const MoeCostModel cost(gpu, cpu, ExpertShape{hp.n_embd, hp.n_ff_exp, expert_bytes});
  MOEX_ASSIGN_OR_RETURN(run->hybrid_, HybridMoe::Create(ho, cost, run->device_.get()));
  return run;
}

int64_t HybridRun::slots() const {
  const auto& s = hybrid_->slots();
  return std::accumulate(s.begin(), s.end(), int64_t{0});
}

void HybridRun::BeginStep(int64_t n_tokens, int64_t kv_positions) {
  n_tokens_ = std::max<int64_t>(1, n_tokens);
  kv_positions_ = kv_positions;
  hybrid_->BeginStep(++step_, n_tokens_);
}

absl::Status HybridRun::Dense(int64_t layer) {
  const HParams& hp = w_->hp;
  const LayerWeights& l = w_->layers[layer];
  // Weights once; each token's K/V reads (f16) and its attention arithmetic; projections.
  const double kv = 2.0 * 2.0 * hp.kv_dim() * kv_positions_;
  double params = 0;
  for (const WeightMatrix* m : {&l.wq, &l.wk, &l.wv, &l.wo}) {
    if (m->valid()) params += static_cast<double>(m->rows) * m->cols;
  }
  const WorkCost c{dense_bytes_[layer] + kv * n_tokens_,
                   2.0 * params * n_tokens_ + 4.0 * kv_positions_ * hp.q_dim() * n_tokens_};
  return hybrid_->RunDense(c, nullptr);
}

absl::Status HybridRun::Moe(int64_t layer, const Routing& routing, const float* moe_input,
                            const std::vector<int32_t>& active, const ExpertRun& run) {
  const HParams& hp = w_->hp;
  HybridMoe::LayerInput in;
  in.layer = static_cast<int32_t>(layer);
  in.tokens = routing.n_tokens;
  in.k = static_cast<int32_t>(routing.k);
  in.experts = routing.experts.data();
  in.scores = routing.weights.data();
  if (layer + 1 < hp.n_layer && hybrid_->prefetch() != PrefetchMode::kNone) {
    // Cross-layer gate (predictor/): the next layer's router on this layer's input, its
    // top-k per token, counted per expert.
    GateTopK(w_->layers[layer + 1].moe.router, moe_input, routing.n_tokens, hp.n_expert_used,
             &guess_ids_);
    std::vector<int32_t> count(hp.n_expert, 0);
    for (int32_t e : guess_ids_) ++count[e];
    // The gate's measured recall on tiny-moe is 0.75 one layer ahead (docs/PREDICTOR.md).
    for (int32_t e = 0; e < hp.n_expert; ++e) {
      if (count[e] > 0) in.next.push_back(ExpertGuess{e, count[e], 0.75});
    }
  }
  // The active list is what the routing says; HybridMoe runs each expert once.
  (void)active;
  return hybrid_->RunMoe(in, run);
}

absl::Status HybridRun::Head() {
  const HParams& hp = w_->hp;
  return hybrid_->RunDense(WorkCost{head_bytes_ + 4.0 * hp.n_vocab, 2.0 * hp.n_vocab * hp.n_embd},
                           nullptr);
}

absl::StatusOr<double> HybridRun::Seconds() { return hybrid_->Synchronize(); }

}  // namespace moex
