// KV-cache compression policies: which cached positions of one layer's KV head stay when
// the cache is over its budget. One interface for every attention layer (the CPU path
// now, CUDA later): after each batch of queries the cache calls SelectEvictions for each
// (layer, KV head) holding more than `budget` positions.
//
// What a policy sees, per kept entry in position order: its original position, the
// attention mass it received from every query since it entered the cache (H2O's
// "accumulated attention"), and the mass from the most recent batch of queries alone
// (SnapKV's observation window: the end of a prefill, or the last chunk).
//
// Policies (../shared/docs/ALGORITHMS.md §5):
//   full       never evicts
//   streaming  StreamingLLM (Xiao et al. 2023): the first `sinks` positions + the most
//              recent `window`
//   h2o        H2O (Zhang et al. 2023, arXiv 2306.14048): the most recent `window` + the
//              heavy hitters, highest accumulated attention
//   snapkv     SnapKV (Li et al. 2024, arXiv 2404.14469): the most recent `window` + the
//              positions the last batch's queries voted for, votes max-pooled over
//              `pool` neighbours so that a chosen position keeps its context
// Budgets are per KV head, in tokens: `budget=N`, or `budget=0.25` for a fraction of the
// context. Thread-safety: policies are immutable; calls from several threads are fine.
#ifndef MOEX_CACHE_KV_POLICY_H_
#define MOEX_CACHE_KV_POLICY_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace moex {

struct KvPolicyConfig {
  std::string name = "full";
  int64_t budget = 0;          // tokens per KV head; 0: see budget_fraction
  double budget_fraction = 0;  // of the context when budget == 0; both 0: no limit
  int64_t sinks = 4;           // streaming: positions kept from the start
  int64_t window = -1;         // recent positions always kept; -1: the policy's default
  int64_t pool = 7;            // snapkv: max-pool kernel over neighbouring positions

  // The budget in tokens for a context of n_ctx (n_ctx when there is no limit).
  int64_t BudgetFor(int64_t n_ctx) const;
  std::string ToString() const;
};

// Parses "NAME[:key=value,...]" (keys: budget, sinks, window, pool). kInvalidArgument for
// an unknown policy or key, or a value out of range; the message names it.
absl::StatusOr<KvPolicyConfig> ParseKvPolicy(std::string_view spec);

// The kept entries of one (layer, KV head), in position order.
struct KvHeadView {
  std::span<const int64_t> pos;
  std::span<const float> acc;   // attention mass received since the entry was cached
  std::span<const float> last;  // attention mass received from the last batch of queries
};

class KvPolicy {
 public:
  virtual ~KvPolicy() = default;
  // Appends to *evict the indices (into the view, ascending) of entries to drop so that
  // exactly `budget` remain. REQUIRES: view.pos.size() > budget.
  virtual void SelectEvictions(const KvHeadView& view, int64_t budget,
                               std::vector<int32_t>* evict) const = 0;
  // False for `full`: the cache then never asks.
  virtual bool evicts() const { return true; }
};

std::unique_ptr<KvPolicy> MakeKvPolicy(const KvPolicyConfig& config);

}  // namespace moex

#endif  // MOEX_CACHE_KV_POLICY_H_
