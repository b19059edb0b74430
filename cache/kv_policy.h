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
//   pyramid    PyramidKV (Cai et al. 2024, arXiv 2406.02069): per-layer budgets falling
//              linearly with depth, from 2B - B/beta at the first layer to B/beta at the
//              last, each layer then evicting with `score` (snapkv or h2o)
//   cake       CAKE (Qin et al. 2025, arXiv 2503.12491): per-layer budgets proportional to
//              each layer's preference H^(1/tau1) * V^(1/tau2), H the entropy of the
//              attention the last batch paid (spatial dispersion) and V the variance of it
//              across that batch's queries (temporal shift), measured when the cache first
//              outgrows B ("prefill end"), each layer then evicting with `score`
//   mikv       MiKV (Yang et al. 2024, arXiv 2402.18096): within the bytes of B rows of the
//              cache's type, the best-scored `hi` share stays at full precision and the
//              next ones are kept at `bits` (2, 4 or 8) instead of dropped
// Budgets are per KV head, in tokens: `budget=N`, or `budget=0.25` for a fraction of the
// context; for pyramid and cake, B is the mean over layers and the layers' budgets sum to
// at most n_layer * B. Thread-safety: policies are immutable; calls from several threads
// are fine.
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
  int64_t budget = 0;            // tokens per KV head; 0: see budget_fraction
  double budget_fraction = 0;    // of the context when budget == 0; both 0: no limit
  int64_t sinks = 4;             // streaming: positions kept from the start
  int64_t window = -1;           // recent positions always kept; -1: the policy's default
  int64_t pool = 7;              // snapkv: max-pool kernel over neighbouring positions
  std::string score = "snapkv";  // pyramid, cake, mikv: how a layer ranks its entries
  double beta = 20;              // pyramid: the last layer's budget is B / beta
  double tau1 = 1, tau2 = 1;     // cake: exponents 1/tau of entropy and variance
  double hi = 0.5;               // mikv: share of the byte budget kept at full precision
  int64_t bits = 4;              // mikv: precision of the demoted rows (2, 4 or 8)

  bool layered() const { return name == "pyramid" || name == "cake"; }

  // The budget in tokens for a context of n_ctx (n_ctx when there is no limit).
  int64_t BudgetFor(int64_t n_ctx) const;
  std::string ToString() const;
};

// Parses "NAME[:key=value,...]" (keys: budget, sinks, window, pool, score, beta, tau1,
// tau2, hi, bits). kInvalidArgument for an unknown policy or key, or a value out of
// range; the message names it.
absl::StatusOr<KvPolicyConfig> ParseKvPolicy(std::string_view spec);

// Per-layer budgets (tokens per KV head) for n_layer layers of a context of n_ctx, summing
// to at most n_layer * config.BudgetFor(n_ctx), each in [1, n_ctx]. pyramid: linear in
// depth; cake: proportional to `preference` (one value >= 0 per layer; all zero or empty
// gives an even split); any other policy: BudgetFor(n_ctx) for every layer.
std::vector<int64_t> LayerBudgets(const KvPolicyConfig& config, int64_t n_layer, int64_t n_ctx,
                                  std::span<const double> preference);

// CAKE's preference of one KV head from one batch of n_queries queries: `last` and
// `last_sq` are, per cached entry, the sum over the queries of the attention it received
// and of its square. Returns H^(1/tau1) * V^(1/tau2), H the entropy of the mean attention
// and V the summed variance of the attention across the queries.
double CakePreference(std::span<const float> last, std::span<const float> last_sq,
                      int64_t n_queries, double tau1, double tau2);

// The kept entries of one (layer, KV head), in position order.
struct KvHeadView {
  std::span<const int64_t> pos;
  std::span<const float> acc;    // attention mass received since the entry was cached
  std::span<const float> last;   // attention mass received from the last batch of queries
  std::span<const uint8_t> low;  // 1 where the entry is held at low precision (mikv); may be empty
};

class KvPolicy {
 public:
  virtual ~KvPolicy() = default;
  // Appends to *evict the indices (into the view, ascending) of entries to drop so that
  // exactly `budget` remain. REQUIRES: view.pos.size() > budget.
  virtual void SelectEvictions(const KvHeadView& view, int64_t budget,
                               std::vector<int32_t>* evict) const = 0;
  // For policies that demote (mikv): with at most `high` entries at full precision and
  // `low` at low precision, appends to *evict the entries to drop and to *demote the
  // full-precision entries to move to low precision (indices ascending). An entry already
  // low stays low or goes. The default evicts down to `high`.
  virtual void SelectTiers(const KvHeadView& view, int64_t high, int64_t low,
                           std::vector<int32_t>* evict, std::vector<int32_t>* demote) const;
  // False for `full`: the cache then never asks.
  virtual bool evicts() const { return true; }
  virtual bool demotes() const { return false; }
};

std::unique_ptr<KvPolicy> MakeKvPolicy(const KvPolicyConfig& config);

}  // namespace moex

#endif  // MOEX_CACHE_KV_POLICY_H_
