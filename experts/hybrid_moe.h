// The hybrid MoE executor's control: for each layer, which experts run where, which stay in
// GPU slots, and what to copy ahead (HybriMoE, ../shared/docs/ALGORITHMS.md §2).
//
// It owns the GPU expert cache (cache/expert_cache.h) and drives a Device (runtime/device):
// dense work and resident experts on the GPU stream, copies on the link stream, CPU experts
// on the host lane, with events where one waits for another. The arithmetic is the
// caller's (a callback per expert and side; none in the trace-driven simulator), so on the
// simulated device the tokens are those of a CPU run and the device's clock gives the time.
//
// Policies (--moe-policy):
//   hybrid         intra-layer scheduling (moe_scheduler.h), score cache, impact prefetch
//   static-layers  llama.cpp --n-cpu-moe: the deepest layers' experts on the GPU, the rest on
//                  the CPU, nothing moves
//   lru-ondemand   every miss copied to the GPU and computed there (Mixtral-offloading)
//   cpu-only       routed experts on the CPU, the rest of the model on the GPU
//   gpu-only       every expert resident (fails when they do not fit)
#ifndef MOEX_EXPERTS_HYBRID_MOE_H_
#define MOEX_EXPERTS_HYBRID_MOE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "cache/expert_cache.h"
#include "experts/moe_scheduler.h"
#include "experts/prefetch.h"
#include "runtime/device/device.h"

namespace moex {

enum class MoePolicy { kHybrid, kStaticLayers, kLruOnDemand, kCpuOnly, kGpuOnly };
const char* MoePolicyName(MoePolicy policy);
absl::StatusOr<MoePolicy> ParseMoePolicy(std::string_view name);

// The expert slots a run gets: none for cpu-only, every expert for gpu-only; otherwise what
// the --gpu-mem value buys ("25%" of `all_slots`, or a size "6GiB", "512MiB", "8GB",
// "1000000" bytes, divided by `slot_bytes`), or, when it is empty, what fits in
// `free_bytes`; at most all_slots. kInvalidArgument for a malformed value.
absl::StatusOr<int64_t> ResolveSlotBudget(MoePolicy policy, const std::string& gpu_mem,
                                          int64_t all_slots, double slot_bytes, double free_bytes);

struct HybridMoeOptions {
  MoePolicy policy = MoePolicy::kHybrid;
  // Overrides of the policy's own choices (hybrid: score + impact; lru-ondemand: lru).
  std::optional<ExpertCachePolicy> cache_policy;
  std::optional<PrefetchMode> prefetch;
  int32_t prefetch_count = 0;  // score-rank: experts per layer (0: top_k)
  int32_t num_layers = 0, num_experts = 0, top_k = 0;
  int64_t hidden = 0;       // activation rows travel between GPU and CPU
  int64_t slot_budget = 0;  // expert slots the GPU memory holds, over all layers
  // Slot split: per-layer weights (empty: even). static-layers always takes whole layers.
  std::vector<double> slot_weights;
  std::vector<double> frequency;  // cache policy static: profiled use, [layer * E + e]
  std::function<int64_t(int32_t, int32_t, int64_t)> next_use;  // cache policy belady
};

struct HybridLayerStats {
  int64_t gpu_experts = 0, cpu_experts = 0;  // jobs run on each side
  int64_t hits = 0, misses = 0;
  double moe_s = 0;  // from the layer's routing to its combine
};

struct HybridStats {
  int64_t steps = 0, tokens = 0;
  int64_t hits = 0, misses = 0;  // routed-expert jobs found resident (prefetched included)
  int64_t ondemand_copies = 0, prefetch_copies = 0, refresh_copies = 0;
  int64_t prefetch_used = 0;  // prefetched experts that their layer then used
  double bytes_copied = 0;
  double gpu_wait_s = 0;  // GPU idle, waiting for copies to land
  double cpu_busy_s = 0;  // predicted CPU expert time
  std::vector<HybridLayerStats> layers;
};

// What the callback computes: one expert's share of the layer (its tokens), on the side
// the schedule chose. The arithmetic must not depend on `on_gpu` (bit-identical results).
using ExpertFn = std::function<absl::Status(int32_t expert, bool on_gpu)>;

class HybridMoe {
 public:
  // Errors: kInvalidArgument (shapes), kResourceExhausted (gpu-only without room for every
  // expert, naming what is needed and the budget).
  static absl::StatusOr<std::unique_ptr<HybridMoe>> Create(const HybridMoeOptions& options,
                                                           const MoeCostModel& cost,
                                                           Device* device);

  // A new step (one decode token, or a prefill batch of `tokens`).
  void BeginStep(int64_t step, int64_t tokens);
  // Non-expert work on the GPU stream (attention, router, norms, shared expert, head);
  // `fn` (may be empty) computes it.
  absl::Status RunDense(const WorkCost& cost, const std::function<absl::Status()>& fn);

  struct LayerInput {
    int32_t layer = 0;
    int64_t tokens = 0;
    const int32_t* experts = nullptr;  // [tokens][k]
    const float* scores = nullptr;     // [tokens][k] router probabilities, or null
    int32_t k = 0;
    std::vector<ExpertGuess> next;  // the predictor's guesses for layer + 1
  };
  // Schedules and runs the routed experts of one layer, then queues prefetches for the
  // next. On return the GPU stream holds the layer's combine (both sides done).
  absl::Status RunMoe(const LayerInput& in, const ExpertFn& fn);

  // Waits for all work; the device's clock.
  absl::StatusOr<double> Synchronize();

  const HybridStats& stats() const { return stats_; }
  const HybridMoeOptions& options() const { return o_; }
  const ExpertCache& cache() const { return cache_; }
  const MoeCostModel& cost() const { return cost_; }
  PlacementRule rule() const { return rule_; }
  PrefetchMode prefetch() const { return prefetch_; }
  const std::vector<int32_t>& slots() const { return slots_; }

 private:
  HybridMoe(const HybridMoeOptions& o, const MoeCostModel& cost, Device* device, ExpertCache cache,
            std::vector<int32_t> slots, PlacementRule rule, PrefetchMode prefetch, StreamId gpu,
            StreamId link);
  absl::Status Prefetch(const LayerInput& in, double t0);
  // The score cache's own admissions: one expert the cache values above its weakest
  // resident, copied while the link is idle (HybriMoE's cache changes through such copies;
  // without them a decode run, where copying now never pays, would leave it cold).
  absl::Status Refresh(int32_t layer, double t0);

  HybridMoeOptions o_;
  MoeCostModel cost_;
  Device* device_;
  ExpertCache cache_;
  std::vector<int32_t> slots_;
  PlacementRule rule_;
  PrefetchMode prefetch_;
  StreamId gpu_, link_;
  int64_t step_tokens_ = 1;
  double last_dense_s_ = 0;  // the latest RunDense's GPU time
  // Copies in flight per layer: (expert, landing event); prefetched experts stay pinned
  // until their layer ran.
  struct InFlight {
    int32_t expert;
    Event landed;
  };
  std::vector<std::vector<InFlight>> in_flight_;
  HybridStats stats_;
  // RunMoe's per-layer scratch.
  std::vector<int32_t> count_, active_, top_ids_;
  std::vector<float> score_, top_scores_;
  std::vector<ExpertJob> jobs_;
};

}  // namespace moex

#endif  // MOEX_EXPERTS_HYBRID_MOE_H_
