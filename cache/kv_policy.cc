#include "cache/kv_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace moex {
namespace {

class FullPolicy : public KvPolicy {
 public:
  void SelectEvictions(const KvHeadView&, int64_t, std::vector<int32_t>*) const override {}
  bool evicts() const override { return false; }
};

// Marks for eviction every entry not in `keep` (a boolean per entry).
void EvictUnmarked(const std::vector<char>& keep, std::vector<int32_t>* evict) {
  for (size_t i = 0; i < keep.size(); ++i) {
    if (!keep[i]) evict->push_back(static_cast<int32_t>(i));
  }
}

// Entries in the order a scored policy would keep them: the `window` most recent first
// (the view is in position order), then the others by score, ties to the more recent
// entry. Only the first `need` of the tail are sorted.
std::vector<int32_t> RankRecentAndTop(const KvHeadView& v, int64_t window,
                                      const std::vector<float>& score, int64_t need) {
  const int64_t n = static_cast<int64_t>(v.pos.size());
  window = std::clamp<int64_t>(window, 0, n);
  std::vector<int32_t> order;
  order.reserve(n);
  for (int64_t i = n - 1; i >= n - window; --i) order.push_back(static_cast<int32_t>(i));
  std::vector<int32_t> rest(n - window);
  std::iota(rest.begin(), rest.end(), 0);
  const int64_t top = std::clamp<int64_t>(need - window, 0, n - window);
  std::partial_sort(rest.begin(), rest.begin() + top, rest.end(), [&](int32_t a, int32_t b) {
    return score[a] > score[b] || (score[a] == score[b] && a > b);
  });
  order.insert(order.end(), rest.begin(), rest.end());
  return order;
}

// Keeps the `window` most recent entries and, among the others, the budget - window with
// the highest score.
void KeepRecentAndTop(const KvHeadView& v, int64_t budget, int64_t window,
                      const std::vector<float>& score, std::vector<int32_t>* evict) {
  const std::vector<int32_t> order =
      RankRecentAndTop(v, std::clamp<int64_t>(window, 0, budget), score, budget);
  std::vector<char> keep(v.pos.size(), 0);
  for (int64_t i = 0; i < budget; ++i) keep[order[i]] = 1;
  EvictUnmarked(keep, evict);
}

// A policy that ranks entries by a score with a recent window always first: h2o, snapkv,
// and the layers of pyramid and cake, and the tiers of mikv.
class ScoredPolicy : public KvPolicy {
 public:
  void SelectEvictions(const KvHeadView& v, int64_t budget,
                       std::vector<int32_t>* evict) const override {
    KeepRecentAndTop(v, budget, Window(budget), Score(v), evict);
  }
  virtual int64_t Window(int64_t budget) const = 0;
  virtual std::vector<float> Score(const KvHeadView& v) const = 0;
};

class StreamingPolicy : public KvPolicy {
 public:
  StreamingPolicy(int64_t sinks, int64_t window) : sinks_(sinks), window_(window) {}
  void SelectEvictions(const KvHeadView& v, int64_t budget,
                       std::vector<int32_t>* evict) const override {
    const int64_t n = static_cast<int64_t>(v.pos.size());
    const int64_t sinks = std::min(sinks_, budget);
    const int64_t window = window_ < 0 ? budget - sinks : std::min(window_, budget - sinks);
    // Entries [sinks, n - window) go; if sinks + window < budget the oldest of the
    // evicted range are kept to fill it.
    const int64_t fill = budget - sinks - window;
    for (int64_t i = sinks + fill; i < n - window; ++i) evict->push_back(static_cast<int32_t>(i));
  }

 private:
  int64_t sinks_, window_;
};

class H2oPolicy : public ScoredPolicy {
 public:
  explicit H2oPolicy(int64_t window) : window_(window) {}
  // H2O's split: half recent window, half heavy hitters.
  int64_t Window(int64_t budget) const override { return window_ < 0 ? budget / 2 : window_; }
  std::vector<float> Score(const KvHeadView& v) const override {
    return std::vector<float>(v.acc.begin(), v.acc.end());
  }

 private:
  int64_t window_;
};

class SnapKvPolicy : public ScoredPolicy {
 public:
  SnapKvPolicy(int64_t window, int64_t pool) : window_(window), pool_(pool) {}
  int64_t Window(int64_t budget) const override { return window_ < 0 ? budget / 4 : window_; }
  // Votes of the last queries, max-pooled over neighbouring entries (SnapKV §4.2: pooling
  // keeps the context around a chosen position).
  std::vector<float> Score(const KvHeadView& v) const override {
    const int64_t n = static_cast<int64_t>(v.pos.size());
    std::vector<float> pooled(n);
    const int64_t half = pool_ / 2;
    for (int64_t i = 0; i < n; ++i) {
      float m = v.last[i];
      for (int64_t j = std::max<int64_t>(0, i - half); j <= std::min(n - 1, i + half); ++j) {
        m = std::max(m, v.last[j]);
      }
      pooled[i] = m;
    }
    return pooled;
  }

 private:
  int64_t window_, pool_;
};

// MiKV: walks the inner policy's ranking (its window sized for the full-precision part);
// full-precision entries fill the `high` tier, then every further entry, full precision
// or already demoted, takes a `low` place while there is one; the rest go.
class MikvPolicy : public KvPolicy {
 public:
  explicit MikvPolicy(std::unique_ptr<ScoredPolicy> inner) : inner_(std::move(inner)) {}
  void SelectEvictions(const KvHeadView& v, int64_t budget,
                       std::vector<int32_t>* evict) const override {
    inner_->SelectEvictions(v, budget, evict);
  }
  void SelectTiers(const KvHeadView& v, int64_t high, int64_t low, std::vector<int32_t>* evict,
                   std::vector<int32_t>* demote) const override {
    const int64_t n = static_cast<int64_t>(v.pos.size());
    const std::vector<int32_t> order = RankRecentAndTop(
        v, std::clamp<int64_t>(inner_->Window(high), 0, high), inner_->Score(v), n);
    std::vector<char> tier(n, 0);  // 0 evict, 1 low, 2 high
    int64_t n_high = 0, n_low = 0;
    for (int32_t i : order) {
      const bool is_low = !v.low.empty() && v.low[i];
      if (!is_low && n_high < high) {
        tier[i] = 2;
        ++n_high;
      } else if (n_low < low) {
        tier[i] = 1;
        ++n_low;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const bool is_low = !v.low.empty() && v.low[i];
      if (tier[i] == 0) evict->push_back(static_cast<int32_t>(i));
      if (tier[i] == 1 && !is_low) demote->push_back(static_cast<int32_t>(i));
    }
  }
  bool demotes() const override { return true; }

 private:
  std::unique_ptr<ScoredPolicy> inner_;
};

std::unique_ptr<ScoredPolicy> MakeScorer(const KvPolicyConfig& c) {
  if (c.score == "h2o") return std::make_unique<H2oPolicy>(c.window);
  return std::make_unique<SnapKvPolicy>(c.window, c.pool);
}

// Splits `total` into integers proportional to `weight`, each in [lo, hi] (water-filling:
// a share beyond a bound is clamped and the rest re-split among the others), the sum at
// most `total`; rounding remainders go to the largest fractional parts.
std::vector<int64_t> SplitProportional(int64_t total, const std::vector<double>& weight, int64_t lo,
                                       int64_t hi) {
  const int64_t n = static_cast<int64_t>(weight.size());
  lo = std::min(lo, total / n);
  std::vector<double> share(n, -1);  // -1: not yet fixed
  int64_t fixed_total = 0;
  for (bool changed = true; changed;) {
    changed = false;
    double w = 0;
    int64_t free_n = 0;
    for (int64_t l = 0; l < n; ++l) {
      if (share[l] < 0) w += weight[l], ++free_n;
    }
    if (free_n == 0) break;
    const double left = static_cast<double>(total - fixed_total);
    for (int64_t l = 0; l < n; ++l) {
      if (share[l] >= 0) continue;
      const double s = w > 0 ? left * weight[l] / w : left / free_n;
      // One bound per pass: the shares of the others change once it is fixed.
      if (s < lo || s > hi) {
        share[l] = s < lo ? lo : hi;
        fixed_total += static_cast<int64_t>(share[l]);
        changed = true;
        break;
      }
    }
    if (!changed) {
      for (int64_t l = 0; l < n; ++l) {
        if (share[l] < 0) share[l] = w > 0 ? left * weight[l] / w : left / free_n;
      }
    }
  }
  std::vector<int64_t> out(n);
  int64_t sum = 0;
  for (int64_t l = 0; l < n; ++l) sum += out[l] = static_cast<int64_t>(std::floor(share[l]));
  std::vector<int64_t> by_frac(n);
  std::iota(by_frac.begin(), by_frac.end(), 0);
  std::stable_sort(by_frac.begin(), by_frac.end(),
                   [&](int64_t a, int64_t b) { return share[a] - out[a] > share[b] - out[b]; });
  for (int64_t k = 0; k < n && sum < total; ++k) {
    if (out[by_frac[k]] < hi) ++out[by_frac[k]], ++sum;
  }
  return out;
}

}  // namespace

void KvPolicy::SelectTiers(const KvHeadView& v, int64_t high, int64_t, std::vector<int32_t>* evict,
                           std::vector<int32_t>*) const {
  if (static_cast<int64_t>(v.pos.size()) > high) SelectEvictions(v, high, evict);
}

std::vector<int64_t> LayerBudgets(const KvPolicyConfig& c, int64_t n_layer, int64_t n_ctx,
                                  std::span<const double> preference) {
  const int64_t b = c.BudgetFor(n_ctx);
  if (!c.layered() || n_layer <= 1) return std::vector<int64_t>(n_layer, b);
  std::vector<double> weight(n_layer, 1.0);
  if (c.name == "pyramid") {
    // PyramidKV §3: an arithmetic sequence from k0 = 2B - B/beta down to B/beta, mean B.
    const double k_last = b / std::max(1.0, c.beta), k0 = 2.0 * b - k_last;
    for (int64_t l = 0; l < n_layer; ++l) weight[l] = k0 - (k0 - k_last) * l / (n_layer - 1);
  } else if (static_cast<int64_t>(preference.size()) == n_layer) {
    double sum = 0;
    for (double p : preference) sum += std::max(0.0, p);
    if (sum > 0) {
      for (int64_t l = 0; l < n_layer; ++l) weight[l] = std::max(0.0, preference[l]);
    }
  }
  return SplitProportional(n_layer * b, weight, 1, n_ctx);
}

double CakePreference(std::span<const float> last, std::span<const float> last_sq,
                      int64_t n_queries, double tau1, double tau2) {
  if (n_queries <= 0) return 0;
  double h = 0, var = 0;
  const double inv = 1.0 / static_cast<double>(n_queries);
  for (size_t j = 0; j < last.size(); ++j) {
    const double mean = last[j] * inv;
    if (mean > 0) h -= mean * std::log(mean);
    var += std::max(0.0, last_sq[j] * inv - mean * mean);
  }
  return std::pow(h, 1.0 / tau1) * std::pow(var, 1.0 / tau2);
}

int64_t KvPolicyConfig::BudgetFor(int64_t n_ctx) const {
  if (name == "full") return n_ctx;
  if (budget > 0) return std::min(budget, n_ctx);
  if (budget_fraction > 0) {
    return std::clamp<int64_t>(static_cast<int64_t>(std::ceil(budget_fraction * n_ctx)), 1, n_ctx);
  }
  return n_ctx;
}

std::string KvPolicyConfig::ToString() const {
  std::string s = name;
  if (name == "full") return s;
  s += budget > 0 ? absl::StrCat(":budget=", budget)
                  : absl::StrCat(":budget=", budget_fraction > 0 ? budget_fraction : 1.0);
  if (name == "streaming") s += absl::StrCat(",sinks=", sinks);
  if (window >= 0) s += absl::StrCat(",window=", window);
  if (name == "snapkv" || (name != "h2o" && name != "streaming" && score == "snapkv")) {
    s += absl::StrCat(",pool=", pool);
  }
  if (name == "pyramid" || name == "cake" || name == "mikv") s += ",score=" + score;
  if (name == "pyramid") s += absl::StrCat(",beta=", beta);
  if (name == "cake") s += absl::StrCat(",tau1=", tau1, ",tau2=", tau2);
  if (name == "mikv") s += absl::StrCat(",hi=", hi, ",bits=", bits);
  return s;
}

absl::StatusOr<KvPolicyConfig> ParseKvPolicy(std::string_view spec_sv) {
  const std::string spec(spec_sv);
  KvPolicyConfig c;
  const size_t colon = spec.find(':');
  c.name = spec.substr(0, colon);
  if (c.name != "full" && c.name != "streaming" && c.name != "h2o" && c.name != "snapkv" &&
      c.name != "pyramid" && c.name != "cake" && c.name != "mikv") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown KV policy '", c.name,
                     "' (known: full, streaming, h2o, snapkv, pyramid, cake, mikv)"));
  }
  if (colon == std::string::npos) return c;
  for (absl::string_view kv : absl::StrSplit(spec.substr(colon + 1), ',', absl::SkipEmpty())) {
    const std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    // The one key whose value is a word: the ranking a layered or tiered policy uses.
    if (p.size() == 2 && p[0] == "score") {
      if (p[1] != "snapkv" && p[1] != "h2o") {
        return absl::InvalidArgumentError(
            absl::StrCat("KV policy '", spec, "': score is snapkv or h2o, got '", p[1], "'"));
      }
      c.score = p[1];
      continue;
    }
    double value = 0;
    if (p.size() != 2 || !absl::SimpleAtod(p[1], &value) || value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV policy '", spec, "': expected key=value with a number >= 0, got '",
                       std::string(kv), "'"));
    }
    if (p[0] == "budget") {
      if (value > 0 && value < 1) {
        c.budget_fraction = value;
      } else {
        c.budget = static_cast<int64_t>(value);
        if (c.budget != value || c.budget < 1) {
          return absl::InvalidArgumentError(absl::StrCat(
              "KV policy '", spec, "': budget is a token count >= 1 or a fraction in (0, 1)"));
        }
      }
    } else if (p[0] == "sinks") {
      c.sinks = static_cast<int64_t>(value);
    } else if (p[0] == "window") {
      c.window = static_cast<int64_t>(value);
    } else if (p[0] == "pool") {
      c.pool = std::max<int64_t>(1, static_cast<int64_t>(value));
    } else if (p[0] == "beta" && value >= 1) {
      c.beta = value;
    } else if ((p[0] == "tau1" || p[0] == "tau2") && value > 0) {
      (p[0] == "tau1" ? c.tau1 : c.tau2) = value;
    } else if (p[0] == "hi" && value > 0 && value <= 1) {
      c.hi = value;
    } else if (p[0] == "bits" && (value == 2 || value == 4 || value == 8)) {
      c.bits = static_cast<int64_t>(value);
    } else if (p[0] == "beta" || p[0] == "tau1" || p[0] == "tau2" || p[0] == "hi" ||
               p[0] == "bits") {
      return absl::InvalidArgumentError(
          absl::StrCat("KV policy '", spec, "': ", p[0],
                       " out of range (beta >= 1, tau1/tau2 > 0, hi in (0, 1], bits 2, 4 or 8)"));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("KV policy '", spec, "': unknown key '", p[0],
                       "' (budget, sinks, window, pool, score, beta, tau1, tau2, hi, bits)"));
    }
  }
  return c;
}

std::unique_ptr<KvPolicy> MakeKvPolicy(const KvPolicyConfig& c) {
  if (c.name == "streaming") return std::make_unique<StreamingPolicy>(c.sinks, c.window);
  if (c.name == "h2o") return std::make_unique<H2oPolicy>(c.window);
  if (c.name == "snapkv") return std::make_unique<SnapKvPolicy>(c.window, c.pool);
  // Layered policies evict within each layer's budget, which the cache sets (LayerBudgets).
  if (c.layered()) return MakeScorer(c);
  if (c.name == "mikv") return std::make_unique<MikvPolicy>(MakeScorer(c));
  return std::make_unique<FullPolicy>();
}

}  // namespace moex
