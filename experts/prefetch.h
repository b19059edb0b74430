// Inter-layer prefetch: which experts of the next layer to copy into GPU slots while the
// current layer runs (../shared/docs/ALGORITHMS.md §2b).
//
// impact      HybriMoE's paper: each guessed expert's impact is how much the next layer's
//             simulated schedule (moe_scheduler.h) would shorten if it were resident when
//             its copy lands, times the probability the guess is right. Copies go in order
//             of impact while one still shortens the layer, and never evict an expert the
//             next layer is as likely to use as the one coming in.
// score-rank  HybriMoE's released code: the `count` experts of the next layer with the
//             highest cache score that are not resident.
#ifndef MOEX_EXPERTS_PREFETCH_H_
#define MOEX_EXPERTS_PREFETCH_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "cache/expert_cache.h"
#include "experts/moe_scheduler.h"

namespace moex {

enum class PrefetchMode { kNone, kImpact, kScoreRank };
const char* PrefetchModeName(PrefetchMode mode);
absl::StatusOr<PrefetchMode> ParsePrefetchMode(std::string_view name);

// A guess of the predictor: `expert` of the target layer gets `tokens` tokens, right with
// probability `prob`.
struct ExpertGuess {
  int32_t expert = 0;
  int32_t tokens = 1;
  double prob = 1;
};

struct PrefetchRequest {
  int32_t layer = 0;                            // the layer the copies are for
  std::vector<ExpertGuess> guesses;             // its predicted experts
  PlacementRule rule = PlacementRule::kHybrid;  // how that layer will be scheduled
  // Times relative to now: when the link is free, and when the target layer's experts are
  // expected to start (its schedule starts there; a copy landing later makes its job wait).
  double link_free_s = 0;
  double layer_start_s = 0;
  int32_t max_copies = 0;  // at most this many copies (free link slots, evictable slots)
  int32_t count = 0;       // score-rank: how many to fetch
};

// Chooses the experts to copy and makes them resident in `cache` (evicting what the cache
// chooses) and pinned, so nothing evicts them before the target layer ran: the caller
// issues their copies in the returned order and unpins them after that layer.
std::vector<int32_t> PlanPrefetch(PrefetchMode mode, const PrefetchRequest& request,
                                  const MoeCostModel& cost, ExpertCache* cache);

}  // namespace moex

#endif  // MOEX_EXPERTS_PREFETCH_H_
