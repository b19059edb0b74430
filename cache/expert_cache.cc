// The GPU expert cache (expert_cache.h): per-layer slot pools and the eviction policies of
// ../shared/docs/ALGORITHMS.md §2c, with the victim order of the trace analysis
// (runtime/trace/lrc_algorithms.cc, AddPolicyDepths) so that a replay reproduces its hit
// rates exactly.
#include "cache/expert_cache.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace moex {
namespace {

constexpr const char* kPolicyNames[] = {"score", "lru", "lfu", "static", "layers", "belady"};
constexpr int kNumPolicies = 6;

// The score policy keeps V = S * scale with scale = (1 - a)^-n after n routings of the
// layer, so the decay of the experts not listed costs nothing (O(listed) per routing);
// renormalised before it overflows. With a = 0.5 the scaling is by powers of two, exact,
// so the comparisons are those of the analysis, which does the same.
constexpr double kRenormalizeAbove = 1e200;

}  // namespace

const char* ExpertCachePolicyName(ExpertCachePolicy policy) {
  const int i = static_cast<int>(policy);
  return i >= 0 && i < kNumPolicies ? kPolicyNames[i] : "?";
}

absl::StatusOr<ExpertCachePolicy> ParseExpertCachePolicy(std::string_view name) {
  for (int i = 0; i < kNumPolicies; ++i) {
    if (name == kPolicyNames[i]) return static_cast<ExpertCachePolicy>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown expert cache policy \"",
                                                 std::string(name),
                                                 "\" (score, lru, lfu, static, layers, belady)"));
}

// ---- splitting slots over layers ---------------------------------------------------------

std::vector<int32_t> SplitSlotsEvenly(int64_t total, int32_t layers, int32_t experts) {
  if (layers <= 0) return {};
  std::vector<int32_t> out(layers, 0);
  if (experts <= 0 || total <= 0) return out;
  const int64_t t = std::min<int64_t>(total, int64_t{layers} * experts);
  const int64_t base = t / layers, rem = t % layers;  // base == experts implies rem == 0
  for (int32_t l = 0; l < layers; ++l) out[l] = static_cast<int32_t>(base + (l < rem ? 1 : 0));
  return out;
}

std::vector<int32_t> SplitSlotsByWeight(int64_t total, int32_t experts,
                                        const std::vector<double>& weight) {
  const int32_t layers = static_cast<int32_t>(weight.size());
  if (layers == 0) return {};
  std::vector<int32_t> out(layers, 0);
  if (experts <= 0 || total <= 0) return out;
  int64_t left = std::min<int64_t>(total, int64_t{layers} * experts);
  // `!(w > 0)` also catches NaN.
  std::vector<int32_t> active, idle;
  for (int32_t l = 0; l < layers; ++l) (weight[l] > 0 ? active : idle).push_back(l);
  // Water-filling: a layer whose share reaches the cap is fixed at the cap and the rest is
  // shared again among the others, until every share is below the cap.
  std::vector<long double> quota(layers, 0);
  bool capped = true;
  while (capped && !active.empty() && left > 0) {
    capped = false;
    long double sum = 0;
    for (int32_t l : active) sum += weight[l];
    std::vector<int32_t> still;
    for (int32_t l : active) {
      quota[l] = static_cast<long double>(left) * weight[l] / sum;
      if (quota[l] >= experts) {
        out[l] = experts;
        capped = true;
      } else {
        still.push_back(l);
      }
    }
    if (capped) {
      for (int32_t l : active) {
        if (out[l] == experts) left -= experts;
      }
      active = std::move(still);
    }
  }
  if (!active.empty() && left > 0) {
    // Largest remainder: floors first, then one more slot to the largest fractions. Every
    // quota is below the cap, so floor + 1 fits.
    int64_t given = 0;
    std::vector<std::pair<long double, int32_t>> frac;
    for (int32_t l : active) {
      const long double f = std::floor(quota[l]);
      out[l] = static_cast<int32_t>(f);
      given += out[l];
      frac.emplace_back(quota[l] - f, l);
    }
    // Rounding of the quotas may leave the floors a unit above `left`: take it back from
    // the smallest fractions.
    std::stable_sort(frac.begin(), frac.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    for (auto it = frac.rbegin(); given > left && it != frac.rend(); ++it) {
      if (out[it->second] > 0) {
        --out[it->second];
        --given;
      }
    }
    for (size_t i = 0; given < left && i < frac.size(); ++i) {
      if (out[frac[i].second] < experts) {
        ++out[frac[i].second];
        ++given;
      }
    }
    left -= given;
  }
  if (left > 0 && !idle.empty()) {
    // The weighted layers are full: the overflow goes to the others, evenly.
    const std::vector<int32_t> even =
        SplitSlotsEvenly(left, static_cast<int32_t>(idle.size()), experts);
    for (size_t i = 0; i < idle.size(); ++i) out[idle[i]] = even[i];
  }
  return out;
}

std::vector<int32_t> SplitSlotsWholeLayers(int64_t total, int32_t layers, int32_t experts) {
  if (layers <= 0) return {};
  std::vector<int32_t> out(layers, 0);
  if (experts <= 0 || total <= 0) return out;
  const int64_t full = std::min<int64_t>(total / experts, layers);
  for (int64_t i = 0; i < full; ++i) out[layers - 1 - i] = experts;
  return out;
}

// ---- the cache ---------------------------------------------------------------------------

struct ExpertCache::Impl {
  ExpertCacheOptions opt;
  int32_t L = 0, E = 0;
  int64_t step = 0;
  uint64_t clock = 0;  // access counter: strict recency order within a step

  // Per layer.
  std::vector<int64_t> slot_begin;  // the layer's slots are slot_expert[begin, begin + cap)
  std::vector<int32_t> resident;    // how many
  std::vector<double> scale;        // score: (1 - a)^-routings since the last renormalisation
  std::vector<Stats> stats;
  // Per slot.
  std::vector<int32_t> slot_expert;  // -1: free
  // Per (layer, expert), index layer * E + expert.
  std::vector<int32_t> slot_of;  // -1: absent
  std::vector<int32_t> pins;
  std::vector<int64_t> last_step;  // last use or insertion; INT64_MIN: never
  std::vector<uint64_t> stamp;     // clock at the last use; 0: never used
  std::vector<int64_t> uses;       // LFU: every access, hit or miss
  std::vector<double> value;       // score: S * scale[layer]

  size_t Cell(int32_t layer, int32_t expert) const {
    assert(layer >= 0 && layer < L && expert >= 0 && expert < E);
    return static_cast<size_t>(layer) * E + expert;
  }
  int32_t Capacity(int32_t layer) const { return opt.slots[layer]; }

  // Eviction rank of a resident: compared lexicographically, the lowest is the victim.
  // Current step first (not for LRU, where recency is the whole order), then the policy's
  // value (score: S; LFU: uses; Belady: minus the next use), then recency, then the id.
  struct Rank {
    bool current = false;
    double real = 0;
    int64_t integer = 0;
    int64_t last = 0;
    uint64_t stamp = 0;
    int32_t id = 0;
    bool operator<(const Rank& o) const {
      if (current != o.current) return o.current;
      if (real != o.real) return real < o.real;
      if (integer != o.integer) return integer < o.integer;
      if (last != o.last) return last < o.last;
      if (stamp != o.stamp) return stamp < o.stamp;
      return id < o.id;
    }
  };
  Rank RankOf(int32_t layer, int32_t expert) const {
    const size_t c = Cell(layer, expert);
    Rank r;
    r.last = last_step[c];
    r.stamp = stamp[c];
    r.id = expert;
    switch (opt.policy) {
      case ExpertCachePolicy::kLfu:
        r.integer = uses[c];
        break;
      case ExpertCachePolicy::kScore:
        r.real = value[c];
        break;
      case ExpertCachePolicy::kBelady:
        // INT64_MAX (never) negates to INT64_MIN + 1: still the lowest.
        r.integer = -opt.next_use(layer, expert, step);
        break;
      default:
        break;
    }
    r.current = opt.policy != ExpertCachePolicy::kLru && r.last == step;
    return r;
  }
};

ExpertCache::ExpertCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ExpertCache::ExpertCache(ExpertCache&&) noexcept = default;
ExpertCache& ExpertCache::operator=(ExpertCache&&) noexcept = default;
ExpertCache::~ExpertCache() = default;

absl::StatusOr<ExpertCache> ExpertCache::Create(ExpertCacheOptions options) {
  const int32_t L = options.num_layers, E = options.num_experts;
  if (L <= 0 || E <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert cache: ", L, " layers of ", E, " experts (need at least one)"));
  }
  if (options.slots.size() != static_cast<size_t>(L)) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert cache: ", options.slots.size(), " slot counts for ", L, " layers"));
  }
  for (int32_t l = 0; l < L; ++l) {
    const int32_t s = options.slots[l];
    if (s < 0 || s > E) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert cache: layer ", l, " has ", s, " slots (0..", E, ")"));
    }
    if (options.policy == ExpertCachePolicy::kLayers && s != 0 && s != E) {
      return absl::InvalidArgumentError(absl::StrCat("expert cache: policy layers holds whole ",
                                                     "layers, but layer ", l, " has ", s,
                                                     " slots (0 or ", E, ")"));
    }
  }
  if (!(options.score_alpha > 0 && options.score_alpha < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert cache: score_alpha ", options.score_alpha, " outside (0, 1)"));
  }
  if (options.policy == ExpertCachePolicy::kStatic &&
      options.frequency.size() != static_cast<size_t>(L) * E) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert cache: policy static needs a frequency table of ",
                     static_cast<int64_t>(L) * E, " entries, got ", options.frequency.size()));
  }
  if (options.policy == ExpertCachePolicy::kBelady && !options.next_use) {
    return absl::InvalidArgumentError("expert cache: policy belady needs a next_use oracle");
  }

  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.opt = std::move(options);
  m.L = L;
  m.E = E;
  m.slot_begin.resize(L + 1, 0);
  for (int32_t l = 0; l < L; ++l) m.slot_begin[l + 1] = m.slot_begin[l] + m.opt.slots[l];
  m.resident.assign(L, 0);
  m.scale.assign(L, 1.0);
  m.stats.assign(L, Stats{});
  m.slot_expert.assign(m.slot_begin[L], -1);
  const size_t cells = static_cast<size_t>(L) * E;
  m.slot_of.assign(cells, -1);
  m.pins.assign(cells, 0);
  m.last_step.assign(cells, std::numeric_limits<int64_t>::min());
  m.stamp.assign(cells, 0);
  m.uses.assign(cells, 0);
  m.value.assign(cells, 0.0);

  auto place = [&m](int32_t layer, int32_t expert) {
    const int32_t s = m.resident[layer]++;
    m.slot_expert[m.slot_begin[layer] + s] = expert;
    m.slot_of[m.Cell(layer, expert)] = s;
  };
  if (m.opt.policy == ExpertCachePolicy::kStatic) {
    // Each layer's most frequent experts (ties: lower id), placed in id order.
    std::vector<int32_t> order(E);
    for (int32_t l = 0; l < L; ++l) {
      const double* f = &m.opt.frequency[static_cast<size_t>(l) * E];
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [f](int32_t a, int32_t b) { return f[a] > f[b]; });
      std::vector<int32_t> keep(order.begin(), order.begin() + m.opt.slots[l]);
      std::sort(keep.begin(), keep.end());
      for (int32_t e : keep) place(l, e);
    }
  } else if (m.opt.policy == ExpertCachePolicy::kLayers) {
    for (int32_t l = 0; l < L; ++l) {
      for (int32_t e = 0; e < m.opt.slots[l]; ++e) place(l, e);
    }
  }
  return ExpertCache(std::move(impl));
}

ExpertCachePolicy ExpertCache::policy() const { return impl_->opt.policy; }
int32_t ExpertCache::num_layers() const { return impl_->L; }
int32_t ExpertCache::num_experts() const { return impl_->E; }
int32_t ExpertCache::capacity(int32_t layer) const {
  assert(layer >= 0 && layer < impl_->L);
  return impl_->Capacity(layer);
}
int32_t ExpertCache::size(int32_t layer) const {
  assert(layer >= 0 && layer < impl_->L);
  return impl_->resident[layer];
}
bool ExpertCache::Resident(int32_t layer, int32_t expert) const {
  return impl_->slot_of[impl_->Cell(layer, expert)] >= 0;
}
int32_t ExpertCache::Slot(int32_t layer, int32_t expert) const {
  return impl_->slot_of[impl_->Cell(layer, expert)];
}
std::vector<int32_t> ExpertCache::ResidentExperts(int32_t layer) const {
  const Impl& m = *impl_;
  assert(layer >= 0 && layer < m.L);
  std::vector<int32_t> out;
  out.reserve(m.resident[layer]);
  for (int64_t s = m.slot_begin[layer]; s < m.slot_begin[layer + 1]; ++s) {
    if (m.slot_expert[s] >= 0) out.push_back(m.slot_expert[s]);
  }
  return out;
}

void ExpertCache::SetStep(int64_t step) {
  assert(step >= impl_->step);
  impl_->step = std::max(impl_->step, step);
}
int64_t ExpertCache::step() const { return impl_->step; }

void ExpertCache::ObserveRouting(int32_t layer, const int32_t* experts, const float* scores,
                                 int32_t n) {
  Impl& m = *impl_;
  if (m.opt.policy != ExpertCachePolicy::kScore) return;
  assert(layer >= 0 && layer < m.L);
  const double a = m.opt.score_alpha;
  double& scale = m.scale[layer];
  double* v = &m.value[static_cast<size_t>(layer) * m.E];
  // S <- (1 - a) S for all, then + a s for the listed: in V = S * scale the decay is the
  // scale's growth alone. The expression order is the analysis's (AddPolicyDepths), so
  // the sums round alike.
  scale /= (1 - a);
  if (scale > kRenormalizeAbove) {
    for (int32_t e = 0; e < m.E; ++e) v[e] /= scale;
    scale = 1.0;
  }
  for (int32_t i = 0; i < n; ++i) {
    assert(experts[i] >= 0 && experts[i] < m.E);
    v[experts[i]] += a * scores[i] * scale;
  }
}

bool ExpertCache::Access(int32_t layer, int32_t expert) {
  Impl& m = *impl_;
  const size_t c = m.Cell(layer, expert);
  const bool hit = m.slot_of[c] >= 0;
  Stats& st = m.stats[layer];
  (hit ? st.hits : st.misses) += 1;
  m.last_step[c] = m.step;
  m.stamp[c] = ++m.clock;
  ++m.uses[c];
  return hit;
}

double ExpertCache::KeepValue(int32_t layer, int32_t expert) const {
  const Impl& m = *impl_;
  const size_t c = m.Cell(layer, expert);
  switch (m.opt.policy) {
    case ExpertCachePolicy::kScore:
      return m.value[c] / m.scale[layer];
    case ExpertCachePolicy::kLru:
      return static_cast<double>(m.last_step[c]);
    case ExpertCachePolicy::kLfu:
      // The fraction orders equal counts by recency and stays below the next count.
      return static_cast<double>(m.uses[c]) +
             static_cast<double>(m.stamp[c]) / (static_cast<double>(m.clock) + 1.0);
    case ExpertCachePolicy::kStatic:
      return m.opt.frequency[c];
    case ExpertCachePolicy::kLayers:
      return m.Capacity(layer) > 0 ? 1.0 : 0.0;
    case ExpertCachePolicy::kBelady:
      return -static_cast<double>(m.opt.next_use(layer, expert, m.step));
  }
  return 0;
}

absl::StatusOr<int32_t> ExpertCache::ChooseVictim(int32_t layer, int32_t expert) const {
  const Impl& m = *impl_;
  if (layer < 0 || layer >= m.L || expert < 0 || expert >= m.E) {
    return absl::OutOfRangeError(absl::StrCat("expert cache: layer ", layer, " expert ", expert,
                                              " outside ", m.L, " x ", m.E));
  }
  if (m.opt.policy == ExpertCachePolicy::kStatic || m.opt.policy == ExpertCachePolicy::kLayers) {
    return absl::FailedPreconditionError(absl::StrCat(
        "expert cache: policy ", ExpertCachePolicyName(m.opt.policy), " has fixed contents"));
  }
  if (m.slot_of[m.Cell(layer, expert)] >= 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("expert cache: layer ", layer, " expert ", expert, " is already resident"));
  }
  const int32_t cap = m.Capacity(layer);
  if (cap == 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("expert cache: layer ", layer, " has no slots"));
  }
  if (m.resident[layer] < cap) return -1;
  const int32_t* slots = &m.slot_expert[m.slot_begin[layer]];
  int32_t victim = -1;
  Impl::Rank lowest;
  for (int32_t s = 0; s < cap; ++s) {
    const int32_t e = slots[s];
    if (m.pins[m.Cell(layer, e)] > 0) continue;
    const Impl::Rank r = m.RankOf(layer, e);
    if (victim < 0 || r < lowest) {
      victim = e;
      lowest = r;
    }
  }
  if (victim < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("expert cache: all ", cap, " slots of layer ", layer, " are pinned"));
  }
  return victim;
}

absl::StatusOr<int32_t> ExpertCache::Insert(int32_t layer, int32_t expert) {
  absl::StatusOr<int32_t> victim = ChooseVictim(layer, expert);
  if (!victim.ok()) return victim.status();
  Impl& m = *impl_;
  int32_t* slots = &m.slot_expert[m.slot_begin[layer]];
  int32_t slot;
  if (*victim >= 0) {
    slot = m.slot_of[m.Cell(layer, *victim)];
    m.slot_of[m.Cell(layer, *victim)] = -1;
    ++m.stats[layer].evictions;
  } else {
    slot = static_cast<int32_t>(std::find(slots, slots + m.Capacity(layer), -1) - slots);
    ++m.resident[layer];
  }
  slots[slot] = expert;
  const size_t c = m.Cell(layer, expert);
  m.slot_of[c] = slot;
  // Recent, not used: an expert accessed at this step keeps its place in the access order.
  m.last_step[c] = m.step;
  ++m.stats[layer].insertions;
  return *victim;
}

void ExpertCache::Pin(int32_t layer, int32_t expert) { ++impl_->pins[impl_->Cell(layer, expert)]; }

void ExpertCache::Unpin(int32_t layer, int32_t expert) {
  int32_t& p = impl_->pins[impl_->Cell(layer, expert)];
  if (p > 0) --p;
}

bool ExpertCache::Pinned(int32_t layer, int32_t expert) const {
  return impl_->pins[impl_->Cell(layer, expert)] > 0;
}

ExpertCache::Stats ExpertCache::stats() const {
  Stats total;
  for (const Stats& s : impl_->stats) {
    total.hits += s.hits;
    total.misses += s.misses;
    total.insertions += s.insertions;
    total.evictions += s.evictions;
  }
  return total;
}

ExpertCache::Stats ExpertCache::layer_stats(int32_t layer) const {
  assert(layer >= 0 && layer < impl_->L);
  return impl_->stats[layer];
}

}  // namespace moex
