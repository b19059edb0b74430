#include "experts/hybrid_moe.h"

#include <algorithm>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"

namespace moex {

const char* MoePolicyName(MoePolicy policy) {
  switch (policy) {
    case MoePolicy::kHybrid:
      return "hybrid";
    case MoePolicy::kStaticLayers:
      return "static-layers";
    case MoePolicy::kLruOnDemand:
      return "lru-ondemand";
    case MoePolicy::kCpuOnly:
      return "cpu-only";
    case MoePolicy::kGpuOnly:
      return "gpu-only";
  }
  return "?";
}

absl::StatusOr<MoePolicy> ParseMoePolicy(std::string_view name) {
  for (MoePolicy p : {MoePolicy::kHybrid, MoePolicy::kStaticLayers, MoePolicy::kLruOnDemand,
                      MoePolicy::kCpuOnly, MoePolicy::kGpuOnly}) {
    if (name == MoePolicyName(p)) return p;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown MoE policy '", std::string(name),
                   "' (hybrid, static-layers, lru-ondemand, cpu-only, gpu-only)"));
}

namespace {

absl::StatusOr<int64_t> ParseSlotBudget(const std::string& s, int64_t all, double slot) {
  std::string t(absl::StripAsciiWhitespace(s));
  double v = 0;
  if (!t.empty() && t.back() == '%') {
    if (!absl::SimpleAtod(t.substr(0, t.size() - 1), &v) || v < 0 || v > 100) {
      return absl::InvalidArgumentError(absl::StrCat("--gpu-mem '", s, "': a percentage 0-100%"));
    }
    return static_cast<int64_t>(std::llround(v / 100.0 * all));
  }
  double unit = 1;
  for (const auto& [suffix, mult] : std::vector<std::pair<std::string, double>>{
           {"GiB", 1073741824.0}, {"MiB", 1048576.0}, {"GB", 1e9}, {"MB", 1e6}, {"B", 1}}) {
    if (t.size() > suffix.size() &&
        t.compare(t.size() - suffix.size(), suffix.size(), suffix) == 0) {
      unit = mult;
      t.resize(t.size() - suffix.size());
      break;
    }
  }
  if (!absl::SimpleAtod(t, &v) || v < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--gpu-mem '", s, "': a size (6GiB, 512MiB, 8GB) or a share of the experts (25%)"));
  }
  return std::min<int64_t>(all, static_cast<int64_t>(v * unit / slot));
}

}  // namespace

absl::StatusOr<int64_t> ResolveSlotBudget(MoePolicy policy, const std::string& gpu_mem,
                                          int64_t all_slots, double slot_bytes, double free_bytes) {
  if (policy == MoePolicy::kCpuOnly) return 0;
  if (policy == MoePolicy::kGpuOnly) return all_slots;
  if (!gpu_mem.empty()) return ParseSlotBudget(gpu_mem, all_slots, slot_bytes);
  return std::clamp<int64_t>(static_cast<int64_t>(free_bytes / slot_bytes), 0, all_slots);
}

absl::StatusOr<std::unique_ptr<HybridMoe>> HybridMoe::Create(const HybridMoeOptions& o,
                                                             const MoeCostModel& cost,
                                                             Device* device) {
  if (o.num_layers <= 0 || o.num_experts <= 0 || o.top_k <= 0 || o.top_k > o.num_experts ||
      o.slot_budget < 0 || device == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("hybrid MoE: bad shape (layers ", o.num_layers,
                                                   ", experts ", o.num_experts, ", top-k ", o.top_k,
                                                   ", slots ", o.slot_budget, ")"));
  }
  const int64_t all = int64_t{o.num_layers} * o.num_experts;
  PlacementRule rule = PlacementRule::kHybrid;
  ExpertCachePolicy cache_policy = ExpertCachePolicy::kScore;
  PrefetchMode prefetch = PrefetchMode::kImpact;
  std::vector<int32_t> slots;
  switch (o.policy) {
    case MoePolicy::kHybrid:
      break;
    case MoePolicy::kStaticLayers:
      rule = PlacementRule::kResidentOrCpu;
      cache_policy = ExpertCachePolicy::kLayers;
      prefetch = PrefetchMode::kNone;
      slots = SplitSlotsWholeLayers(o.slot_budget, o.num_layers, o.num_experts);
      break;
    case MoePolicy::kLruOnDemand:
      rule = PlacementRule::kAlwaysGpu;
      cache_policy = ExpertCachePolicy::kLru;
      prefetch = PrefetchMode::kNone;
      break;
    case MoePolicy::kCpuOnly:
      rule = PlacementRule::kAlwaysCpu;
      cache_policy = ExpertCachePolicy::kLayers;
      prefetch = PrefetchMode::kNone;
      slots.assign(o.num_layers, 0);
      break;
    case MoePolicy::kGpuOnly:
      if (o.slot_budget < all) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "gpu-only needs all ", all, " experts resident (",
            static_cast<int64_t>(all * cost.shape().bytes / (1 << 20)), " MiB); the budget holds ",
            o.slot_budget, " (",
            static_cast<int64_t>(o.slot_budget * cost.shape().bytes / (1 << 20)), " MiB)"));
      }
      rule = PlacementRule::kAlwaysGpu;
      cache_policy = ExpertCachePolicy::kLayers;
      prefetch = PrefetchMode::kNone;
      slots.assign(o.num_layers, o.num_experts);
      break;
  }
  const bool fixed_slots = !slots.empty();
  // A knob the policy cannot honour is an error, not silently ignored.
  if (o.cache_policy) {
    if (fixed_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("--cache-policy does not apply to --moe-policy ", MoePolicyName(o.policy),
                       " (its placement is fixed)"));
    }
    cache_policy = *o.cache_policy;
  }
  if (o.prefetch && *o.prefetch != PrefetchMode::kNone) {
    if (fixed_slots || cache_policy == ExpertCachePolicy::kStatic) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--prefetch needs a cache that admits experts; --moe-policy ", MoePolicyName(o.policy),
          " with cache ", ExpertCachePolicyName(cache_policy), " never changes what is resident"));
    }
  }
  if (o.prefetch) prefetch = *o.prefetch;
  if (cache_policy == ExpertCachePolicy::kStatic && !o.prefetch) prefetch = PrefetchMode::kNone;
  if (!fixed_slots) {
    slots = o.slot_weights.empty()
                ? SplitSlotsEvenly(o.slot_budget, o.num_layers, o.num_experts)
                : SplitSlotsByWeight(o.slot_budget, o.num_experts, o.slot_weights);
  }
  ExpertCacheOptions co;
  co.policy = cache_policy;
  co.num_layers = o.num_layers;
  co.num_experts = o.num_experts;
  co.slots = slots;
  co.frequency = o.frequency;
  co.next_use = o.next_use;
  MOEX_ASSIGN_OR_RETURN(ExpertCache cache, ExpertCache::Create(std::move(co)));
  MOEX_ASSIGN_OR_RETURN(StreamId gpu, device->CreateStream());
  MOEX_ASSIGN_OR_RETURN(StreamId link, device->CreateStream());
  return std::unique_ptr<HybridMoe>(new HybridMoe(o, cost, device, std::move(cache),
                                                  std::move(slots), rule, prefetch, gpu, link));
}

HybridMoe::HybridMoe(const HybridMoeOptions& o, const MoeCostModel& cost, Device* device,
                     ExpertCache cache, std::vector<int32_t> slots, PlacementRule rule,
                     PrefetchMode prefetch, StreamId gpu, StreamId link)
    : o_(o),
      cost_(cost),
      device_(device),
      cache_(std::move(cache)),
      slots_(std::move(slots)),
      rule_(rule),
      prefetch_(prefetch),
      gpu_(gpu),
      link_(link),
      in_flight_(o.num_layers) {
  stats_.layers.resize(o.num_layers);
}

void HybridMoe::BeginStep(int64_t step, int64_t tokens) {
  cache_.SetStep(step);
  step_tokens_ = std::max<int64_t>(1, tokens);
  ++stats_.steps;
  stats_.tokens += step_tokens_;
}

absl::Status HybridMoe::RunDense(const WorkCost& cost, const std::function<absl::Status()>& fn) {
  const double before = device_->StreamTime(gpu_);
  MOEX_RETURN_IF_ERROR(
      device_->Launch(gpu_, cost, [&](void*) { return fn ? fn() : absl::OkStatus(); }));
  last_dense_s_ = device_->StreamTime(gpu_) - before;
  return absl::OkStatus();
}

namespace {

// An expert's copy into its slot. Only time on the sim device: the arithmetic of a
// simulated run reads the weights in place, and the trace-driven simulator has none.
absl::Status CopyExpert(Device* d, StreamId link, double bytes) {
  return d->CopyToDevice(link, nullptr, nullptr, static_cast<int64_t>(bytes));
}

}  // namespace

absl::Status HybridMoe::RunMoe(const LayerInput& in, const ExpertFn& fn) {
  const int32_t l = in.layer;
  if (l < 0 || l >= o_.num_layers || in.k <= 0 || in.tokens <= 0 || in.experts == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("hybrid MoE: bad layer input (layer ", l,
                                                   ", tokens ", in.tokens, ", k ", in.k, ")"));
  }
  // Tokens per expert, and the scores the cache learns from (a prefill batch's mean). The
  // buffers are members: this runs for every layer of every decoded token.
  std::vector<int32_t>& count = count_;
  std::vector<float>& score = score_;
  count.assign(o_.num_experts, 0);
  score.assign(o_.num_experts, 0.0f);
  for (int64_t i = 0; i < in.tokens * in.k; ++i) {
    const int32_t e = in.experts[i];
    if (e < 0 || e >= o_.num_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("hybrid MoE: expert ", e, " out of range in layer ", l));
    }
    ++count[e];
    score[e] += in.scores ? in.scores[i] / in.tokens : 1.0f / in.tokens;
  }
  std::vector<int32_t>& active = active_;
  active.clear();
  for (int32_t e = 0; e < o_.num_experts; ++e) {
    if (count[e] > 0) active.push_back(e);
  }
  {
    // The top p = 2k by score, ties to the lower id.
    std::vector<int32_t>& ids = top_ids_;
    ids = active;
    std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
      return score[a] > score[b] || (score[a] == score[b] && a < b);
    });
    ids.resize(std::min<size_t>(ids.size(), 2 * static_cast<size_t>(in.k)));
    top_scores_.clear();
    for (int32_t e : ids) top_scores_.push_back(score[e]);
    cache_.ObserveRouting(l, ids.data(), top_scores_.data(), static_cast<int32_t>(ids.size()));
  }

  MOEX_ASSIGN_OR_RETURN(Event routed, device_->Record(gpu_));
  const double t0 = routed.seconds;
  // Nothing of this layer can be copied before its routing is known.
  MOEX_RETURN_IF_ERROR(device_->Wait(link_, routed));
  HybridLayerStats& ls = stats_.layers[l];
  std::vector<ExpertJob>& jobs = jobs_;
  jobs.clear();
  for (int32_t e : active) {
    const bool hit = cache_.Access(l, e);
    ExpertJob j{e, count[e], hit, 0};
    if (hit) {
      ++stats_.hits, ++ls.hits;
      cache_.Pin(l, e);  // in use: no copy of this layer may evict it
      for (const InFlight& f : in_flight_[l]) {
        if (f.expert == e) j.ready_s = std::max(0.0, f.landed.seconds - t0), ++stats_.prefetch_used;
      }
    } else {
      ++stats_.misses, ++ls.misses;
    }
    jobs.push_back(j);
  }
  int32_t evictable = 0;
  const bool admits = cache_.policy() != ExpertCachePolicy::kStatic &&
                      cache_.policy() != ExpertCachePolicy::kLayers;
  if (admits) {
    evictable = cache_.capacity(l);
    for (int32_t e : cache_.ResidentExperts(l)) evictable -= cache_.Pinned(l, e) ? 1 : 0;
  }
  // Activations cross PCIe both ways when the CPU takes part, through mapped pinned memory
  // (no copy engine: a queue of expert copies does not hold them up).
  const int64_t act_bytes = in.tokens * o_.hidden * 4;
  const double xfer = CopySeconds(cost_.gpu(), act_bytes);
  ResourceClock start;
  start.cpu_s = std::max(0.0, device_->StreamTime(kHostStream) - t0) + xfer;
  start.link_s = std::max(0.0, device_->StreamTime(link_) - t0);
  const LayerSchedule plan = ScheduleLayer(jobs, cost_, rule_, evictable, start);

  bool cpu_started = false;
  for (const ScheduledJob& j : plan.jobs) {
    if (j.on_gpu) {
      if (j.copied) {
        MOEX_RETURN_IF_ERROR(cache_.Insert(l, j.expert).status());
        cache_.Pin(l, j.expert);
        ++stats_.ondemand_copies;
        stats_.bytes_copied += cost_.shape().bytes;
        MOEX_RETURN_IF_ERROR(CopyExpert(device_, link_, cost_.shape().bytes));
        MOEX_ASSIGN_OR_RETURN(Event landed, device_->Record(link_));
        MOEX_RETURN_IF_ERROR(device_->Wait(gpu_, landed));
      } else {
        for (const InFlight& f : in_flight_[l]) {
          if (f.expert == j.expert) MOEX_RETURN_IF_ERROR(device_->Wait(gpu_, f.landed));
        }
      }
      ++ls.gpu_experts;
      MOEX_RETURN_IF_ERROR(device_->Launch(gpu_, cost_.Work(j.tokens), [&](void*) {
        return fn ? fn(j.expert, true) : absl::OkStatus();
      }));
    } else {
      if (!cpu_started) {
        cpu_started = true;
        MOEX_RETURN_IF_ERROR(device_->Wait(kHostStream, routed));
        MOEX_RETURN_IF_ERROR(device_->Delay(kHostStream, xfer));
      }
      ++ls.cpu_experts;
      stats_.cpu_busy_s += cost_.Cpu(j.tokens);
      MOEX_RETURN_IF_ERROR(device_->Launch(kHostStream, cost_.Work(j.tokens), [&](void*) {
        return fn ? fn(j.expert, false) : absl::OkStatus();
      }));
    }
  }
  if (cpu_started) {
    MOEX_RETURN_IF_ERROR(device_->Delay(kHostStream, xfer));
    MOEX_ASSIGN_OR_RETURN(Event cpu_done, device_->Record(kHostStream));
    MOEX_RETURN_IF_ERROR(device_->Wait(gpu_, cpu_done));
  }
  stats_.gpu_wait_s += plan.gpu_wait_s;
  for (int32_t e : active) {
    if (cache_.Resident(l, e) && cache_.Pinned(l, e)) cache_.Unpin(l, e);
  }
  for (const InFlight& f : in_flight_[l]) cache_.Unpin(l, f.expert);
  in_flight_[l].clear();
  ls.moe_s += device_->StreamTime(gpu_) - t0;

  if (prefetch_ != PrefetchMode::kNone && l + 1 < o_.num_layers && !in.next.empty()) {
    MOEX_RETURN_IF_ERROR(Prefetch(in, t0));
  }
  if (admits && rule_ == PlacementRule::kHybrid) MOEX_RETURN_IF_ERROR(Refresh(l, t0));
  return absl::OkStatus();
}

absl::Status HybridMoe::Refresh(int32_t layer, double t0) {
  // Only into an idle link: these copies pay off over later tokens, never at the expense of
  // a copy this layer or the next wait for. Into the layer that just ran: its next use is a
  // whole step away, time for the copy to land (an expert copied into the next layer would
  // often still be in flight when it is needed, and have evicted one that was there), and
  // its scores have just been updated. One layer per call: scanning every layer at every
  // layer would cost more host time than the copies save on a 48-layer, 128-expert model.
  if (device_->StreamTime(link_) > t0) return absl::OkStatus();
  const int32_t l = layer;
  int32_t best = -1;
  double best_value = 0;
  for (int32_t e = 0; e < o_.num_experts; ++e) {
    if (cache_.Resident(l, e)) continue;
    const double v = cache_.KeepValue(l, e);
    if (v > best_value) best = e, best_value = v;
  }
  if (best < 0) return absl::OkStatus();
  auto victim = cache_.ChooseVictim(l, best);
  if (!victim.ok() || (*victim >= 0 && cache_.KeepValue(l, *victim) >= best_value)) {
    return absl::OkStatus();
  }
  MOEX_RETURN_IF_ERROR(cache_.Insert(l, best).status());
  cache_.Pin(l, best);  // until its layer next runs, like a prefetch
  MOEX_RETURN_IF_ERROR(CopyExpert(device_, link_, cost_.shape().bytes));
  MOEX_ASSIGN_OR_RETURN(Event landed, device_->Record(link_));
  in_flight_[l].push_back(InFlight{best, landed});
  ++stats_.refresh_copies;
  stats_.bytes_copied += cost_.shape().bytes;
  return absl::OkStatus();
}

absl::Status HybridMoe::Prefetch(const LayerInput& in, double t0) {
  const int32_t target = in.layer + 1;
  PrefetchRequest r;
  r.layer = target;
  r.guesses = in.next;
  r.rule = rule_;
  // Copies are queued once the guesses exist (after this layer's routing, at t0), behind
  // this layer's own copies; the target layer's experts start after this layer's combine
  // and the target's dense work (taken as this layer's).
  const double now = device_->StreamTime(gpu_);
  r.link_free_s = std::max(0.0, device_->StreamTime(link_) - t0);
  r.layer_start_s = (now - t0) + last_dense_s_;
  r.count = o_.prefetch_count > 0 ? o_.prefetch_count : o_.top_k;
  r.max_copies = cache_.capacity(target);
  for (int32_t e : cache_.ResidentExperts(target)) r.max_copies -= cache_.Pinned(target, e) ? 1 : 0;
  const std::vector<int32_t> chosen = PlanPrefetch(prefetch_, r, cost_, &cache_);
  for (int32_t e : chosen) {
    MOEX_RETURN_IF_ERROR(CopyExpert(device_, link_, cost_.shape().bytes));
    MOEX_ASSIGN_OR_RETURN(Event landed, device_->Record(link_));
    in_flight_[target].push_back(InFlight{e, landed});
    ++stats_.prefetch_copies;
    stats_.bytes_copied += cost_.shape().bytes;
  }
  return absl::OkStatus();
}

absl::StatusOr<double> HybridMoe::Synchronize() { return device_->Synchronize(); }

}  // namespace moex
