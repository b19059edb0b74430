// The GPU expert cache: which routed experts sit in device slots, and which to evict.
//
// Every expert of a model has the same size (the unit of caching and of H2D transfer is one
// expert: its gate, up and down slices), so a byte budget is a number of slots; the caller
// converts (slots = budget / expert bytes) and splits them over layers (Split* below). Each
// layer has its own pool: an expert of layer l only ever displaces another of layer l.
//
// The cache decides residency and eviction only; moving bytes is the caller's (the device
// layer), which pins an expert while a copy into its slot or a kernel reading it is in
// flight, so it is never chosen as a victim then.
//
// Policies (../shared/docs/ALGORITHMS.md §2c):
//   score   HybriMoE's "minus recent score": per layer, after each routing the top-p experts'
//           softmax scores s enter S[e] <- a*s + (1-a)*S[e], the rest decay S <- (1-a)*S;
//           evict the lowest S.
//   lru     evict the least recently used (Mixtral-offloading).
//   lfu     evict the least frequently used (ties: least recent).
//   static  each layer holds its most frequently used experts from a profile (Fiddler,
//           kTransformers); contents never change, a miss is never admitted.
//   layers  llama.cpp's --n-cpu-moe N: whole layers resident, the rest have no slots
//           (llama.cpp keeps the first N layers' experts on the CPU, so the resident ones
//           are the deepest: SplitSlotsWholeLayers); contents never change.
//   belady  the oracle: evict the expert used farthest in the future (needs the trace:
//           simulator and analysis only).
//
// Victim order, as the routing-trace analysis replays these policies (runtime/trace,
// moex::AnalyzeTrace, whose hit rates a replay through this class reproduces exactly):
// an expert used at the current step (or inserted at it) ranks above every other, so a
// layer with at least k slots never evicts one expert of a token to load another; then
// the policy's value (KeepValue); then recency (last use step, then the order of
// accesses); a full tie evicts the lower expert id. Pinned experts are skipped. The
// analysis counts an access that finds a free slot as a hit ("a cache with a free slot
// holds it"); here it is a miss followed by an insertion without eviction, so its hits
// are stats().hits + insertions - evictions when every miss is inserted.
#ifndef MOEX_CACHE_EXPERT_CACHE_H_
#define MOEX_CACHE_EXPERT_CACHE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex {

enum class ExpertCachePolicy { kScore, kLru, kLfu, kStatic, kLayers, kBelady };

const char* ExpertCachePolicyName(ExpertCachePolicy policy);  // "score", "lru", ...
// kInvalidArgument listing the names.
absl::StatusOr<ExpertCachePolicy> ParseExpertCachePolicy(std::string_view name);

struct ExpertCacheOptions {
  ExpertCachePolicy policy = ExpertCachePolicy::kScore;
  int32_t num_layers = 0;
  int32_t num_experts = 0;
  // Per layer, 0..num_experts (see Split* below); layers: each 0 or num_experts.
  std::vector<int32_t> slots;
  double score_alpha = 0.5;  // score: weight of the newest routing, in (0, 1)
  // static: profiled use frequency, [layer * num_experts + expert]; each layer keeps its
  // `slots[layer]` most frequent experts (ties: lower id) from the start.
  std::vector<double> frequency;
  // belady: when (layer, expert) is next used, counting only uses not yet made (Access
  // makes one), or INT64_MAX if never: the step, `now` for a use still to come at the
  // current step (so the other experts of the step being served are kept). The caller
  // replays a known trace, so it knows which uses are made. Any finer clock that orders
  // the uses works (only comparisons are made): the analysis orders a step's experts by
  // their position in the top-k (step * k + j), and a replay matching it returns that.
  std::function<int64_t(int32_t layer, int32_t expert, int64_t now)> next_use;
};

// Splitting `total` slots over layers (each layer gets at most num_experts; what a full
// layer cannot take goes to the others; the sum is min(total, layers * experts), except for
// whole layers). A negative total counts as 0; layers <= 0 gives an empty vector.
// Evenly; the remainder to the shallowest layers.
std::vector<int32_t> SplitSlotsEvenly(int64_t total, int32_t layers, int32_t experts);
// In proportion to `weight[layer]` (e.g. the measured miss cost or Fate's shallow-favouring
// weights), rounded by largest remainder (ties: the shallower layer). One entry per weight;
// a weight <= 0 (or NaN) gets slots only when the others are full, all such weights
// split the overflow evenly; all weights <= 0: evenly.
std::vector<int32_t> SplitSlotsByWeight(int64_t total, int32_t experts,
                                        const std::vector<double>& weight);
// Whole layers from the last: llama.cpp's --n-cpu-moe N keeps the first N layers' experts on
// the CPU, so the GPU holds floor(total / experts) deepest layers; the rest of `total` is
// unused (a layer's experts are one tensor there).
std::vector<int32_t> SplitSlotsWholeLayers(int64_t total, int32_t layers, int32_t experts);

class ExpertCache {
 public:
  struct Stats {
    int64_t hits = 0, misses = 0, insertions = 0, evictions = 0;
  };

  // kInvalidArgument for inconsistent options (no layers or experts, slots size != layers,
  // a slot count out of range, alpha outside (0, 1), static without a frequency table of
  // the right size, belady without next_use).
  // static and layers are filled here; the other policies start empty.
  static absl::StatusOr<ExpertCache> Create(ExpertCacheOptions options);

  ExpertCachePolicy policy() const;
  int32_t num_layers() const;
  int32_t num_experts() const;
  int32_t capacity(int32_t layer) const;
  int32_t size(int32_t layer) const;  // resident experts of the layer
  bool Resident(int32_t layer, int32_t expert) const;
  // The slot (0..capacity-1) a resident expert occupies, stable while it stays; -1 if absent.
  int32_t Slot(int32_t layer, int32_t expert) const;
  // Resident experts of the layer, in slot order.
  std::vector<int32_t> ResidentExperts(int32_t layer) const;

  // The step clock: the decode step (or prefill batch) being run. Non-decreasing (a smaller
  // value is ignored). LRU recency and Belady's "future" are in steps.
  void SetStep(int64_t step);
  int64_t step() const;

  // The routing of `layer` at this step: `experts` with their router scores (softmax
  // probabilities, the top p = 2k of them for the score policy, highest first). Updates
  // the score policy's S (decaying experts not listed); other policies ignore it.
  // The analysis applies a token's routing after that token's accesses (so a miss is
  // judged on the scores before it); a replay that should match it calls this after the
  // layer's Access/Insert. Called before, the listed experts beyond the top-k (not current,
  // so evictable) are already raised for this step's evictions.
  void ObserveRouting(int32_t layer, const int32_t* experts, const float* scores, int32_t n);
  // One use of (layer, expert) at this step: counts a hit or a miss, and updates LRU/LFU
  // state (a use counts towards LFU even when missed). Returns whether it was resident.
  bool Access(int32_t layer, int32_t expert);

  // How much the policy wants to keep (layer, expert), comparable within a layer: higher is
  // worth more. score: S; lru: last use step; lfu: use count (+ recency as tiebreak);
  // belady: minus the next use; static: the profiled frequency; layers: 1 in a resident
  // layer, else 0. Defined for absent experts too (a prefetch candidate).
  double KeepValue(int32_t layer, int32_t expert) const;

  // The expert Insert(layer, expert) would evict: -1 if a slot is free. Errors:
  // kFailedPrecondition for static/layers (contents fixed) or an expert already resident;
  // kResourceExhausted when the layer has no slots or all residents are pinned.
  absl::StatusOr<int32_t> ChooseVictim(int32_t layer, int32_t expert) const;
  // Makes (layer, expert) resident, evicting ChooseVictim's choice; returns the evicted
  // expert or -1. The new expert takes the victim's slot (or the lowest free one). An
  // insertion is not a use (no hit or miss, no LFU count, no score) but ranks the expert
  // as used at this step for victim choice, so prefetches of one step do not evict each
  // other. kOutOfRange for a layer or expert out of range (ChooseVictim too).
  absl::StatusOr<int32_t> Insert(int32_t layer, int32_t expert);

  // A pinned expert is never a victim. Pins count (two pins need two unpins); an absent
  // expert may be pinned (it is protected once inserted); an unpin without a pin is
  // ignored.
  //
  // The calls without a Status take a layer and expert in range (checked by assertions in
  // debug builds only: they sit on the simulator's hot path).
  void Pin(int32_t layer, int32_t expert);
  void Unpin(int32_t layer, int32_t expert);
  bool Pinned(int32_t layer, int32_t expert) const;

  Stats stats() const;  // all layers
  Stats layer_stats(int32_t layer) const;

  ExpertCache(ExpertCache&&) noexcept;
  ExpertCache& operator=(ExpertCache&&) noexcept;
  ~ExpertCache();

 private:
  struct Impl;
  explicit ExpertCache(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moex

#endif  // MOEX_CACHE_EXPERT_CACHE_H_
