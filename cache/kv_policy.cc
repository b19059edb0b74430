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

// Keeps the `window` most recent entries (the view is in position order) and, among the
// others, the budget - window with the highest score; ties go to the more recent entry.
void KeepRecentAndTop(const KvHeadView& v, int64_t budget, int64_t window,
                      const std::vector<float>& score, std::vector<int32_t>* evict) {
  const int64_t n = static_cast<int64_t>(v.pos.size());
  window = std::clamp<int64_t>(window, 0, budget);
  std::vector<char> keep(n, 0);
  for (int64_t i = n - window; i < n; ++i) keep[i] = 1;
  std::vector<int32_t> rest(n - window);
  std::iota(rest.begin(), rest.end(), 0);
  const int64_t top = budget - window;
  std::partial_sort(rest.begin(), rest.begin() + top, rest.end(), [&](int32_t a, int32_t b) {
    return score[a] > score[b] || (score[a] == score[b] && a > b);
  });
  for (int64_t i = 0; i < top; ++i) keep[rest[i]] = 1;
  EvictUnmarked(keep, evict);
}

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

class H2oPolicy : public KvPolicy {
 public:
  explicit H2oPolicy(int64_t window) : window_(window) {}
  void SelectEvictions(const KvHeadView& v, int64_t budget,
                       std::vector<int32_t>* evict) const override {
    // H2O's split: half recent window, half heavy hitters.
    const int64_t window = window_ < 0 ? budget / 2 : window_;
    KeepRecentAndTop(v, budget, window, std::vector<float>(v.acc.begin(), v.acc.end()), evict);
  }

 private:
  int64_t window_;
};

class SnapKvPolicy : public KvPolicy {
 public:
  SnapKvPolicy(int64_t window, int64_t pool) : window_(window), pool_(pool) {}
  void SelectEvictions(const KvHeadView& v, int64_t budget,
                       std::vector<int32_t>* evict) const override {
    const int64_t n = static_cast<int64_t>(v.pos.size());
    const int64_t window = window_ < 0 ? budget / 4 : window_;
    // Votes of the last queries, max-pooled over neighbouring entries (SnapKV §4.2:
    // pooling keeps the context around a chosen position).
    std::vector<float> pooled(n);
    const int64_t half = pool_ / 2;
    for (int64_t i = 0; i < n; ++i) {
      float m = v.last[i];
      for (int64_t j = std::max<int64_t>(0, i - half); j <= std::min(n - 1, i + half); ++j) {
        m = std::max(m, v.last[j]);
      }
      pooled[i] = m;
    }
    KeepRecentAndTop(v, budget, window, pooled, evict);
  }

 private:
  int64_t window_, pool_;
};

}  // namespace

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
  if (name == "snapkv") s += absl::StrCat(",pool=", pool);
  return s;
}

absl::StatusOr<KvPolicyConfig> ParseKvPolicy(std::string_view spec_sv) {
  const std::string spec(spec_sv);
  KvPolicyConfig c;
  const size_t colon = spec.find(':');
  c.name = spec.substr(0, colon);
  if (c.name != "full" && c.name != "streaming" && c.name != "h2o" && c.name != "snapkv") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown KV policy '", c.name, "' (known: full, streaming, h2o, snapkv)"));
  }
  if (colon == std::string::npos) return c;
  for (absl::string_view kv : absl::StrSplit(spec.substr(colon + 1), ',', absl::SkipEmpty())) {
    const std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
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
    } else {
      return absl::InvalidArgumentError(absl::StrCat("KV policy '", spec, "': unknown key '", p[0],
                                                     "' (budget, sinks, window, pool)"));
    }
  }
  return c;
}

std::unique_ptr<KvPolicy> MakeKvPolicy(const KvPolicyConfig& c) {
  if (c.name == "streaming") return std::make_unique<StreamingPolicy>(c.sinks, c.window);
  if (c.name == "h2o") return std::make_unique<H2oPolicy>(c.window);
  if (c.name == "snapkv") return std::make_unique<SnapKvPolicy>(c.window, c.pool);
  return std::make_unique<FullPolicy>();
}

}  // namespace moex
