#include "experts/prefetch.h"

#include <algorithm>
#include <string>

namespace moex {

const char* PrefetchModeName(PrefetchMode mode) {
  switch (mode) {
    case PrefetchMode::kNone:
      return "none";
    case PrefetchMode::kImpact:
      return "impact";
    case PrefetchMode::kScoreRank:
      return "score-rank";
  }
  return "?";
}

absl::StatusOr<PrefetchMode> ParsePrefetchMode(std::string_view name) {
  for (PrefetchMode m : {PrefetchMode::kNone, PrefetchMode::kImpact, PrefetchMode::kScoreRank}) {
    if (name == PrefetchModeName(m)) return m;
  }
  return absl::InvalidArgumentError("unknown prefetch mode '" + std::string(name) +
                                    "' (none, impact, score-rank)");
}

namespace {

// Expected finish of the target layer when `extra` experts land at the given times.
double GuessedFinish(const PrefetchRequest& r, const ExpertCache& cache, const MoeCostModel& cost,
                     const std::vector<std::pair<int32_t, double>>& extra) {
  std::vector<ExpertJob> jobs;
  jobs.reserve(r.guesses.size());
  for (const ExpertGuess& g : r.guesses) {
    ExpertJob j{g.expert, g.tokens, cache.Resident(r.layer, g.expert), 0};
    for (const auto& [e, land] : extra) {
      if (e == g.expert) j = ExpertJob{g.expert, g.tokens, true, std::max(0.0, land)};
    }
    jobs.push_back(j);
  }
  // On-demand copies of the target layer queue behind the prefetches on the link, and can
  // only use the slots the prefetches left (those stay pinned until the layer ran).
  ResourceClock start;
  start.link_s = std::max(0.0, r.link_free_s + cost.Copy() * extra.size() - r.layer_start_s);
  const int32_t slots_left = std::max(0, r.max_copies - static_cast<int32_t>(extra.size()));
  return ScheduleLayer(jobs, cost, r.rule, slots_left, start).finish_s;
}

bool Guessed(const PrefetchRequest& r, int32_t expert, double at_least) {
  for (const ExpertGuess& g : r.guesses) {
    if (g.expert == expert && g.prob >= at_least) return true;
  }
  return false;
}

}  // namespace

std::vector<int32_t> PlanPrefetch(PrefetchMode mode, const PrefetchRequest& r,
                                  const MoeCostModel& cost, ExpertCache* cache) {
  std::vector<int32_t> out;
  if (mode == PrefetchMode::kNone || r.max_copies <= 0) return out;
  auto admit = [&](int32_t e) {
    auto victim = cache->ChooseVictim(r.layer, e);
    if (!victim.ok()) return false;
    if (!cache->Insert(r.layer, e).ok()) return false;
    cache->Pin(r.layer, e);
    out.push_back(e);
    return true;
  };

  if (mode == PrefetchMode::kScoreRank) {
    std::vector<int32_t> order;
    for (int32_t e = 0; e < cache->num_experts(); ++e) {
      if (!cache->Resident(r.layer, e)) order.push_back(e);
    }
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return cache->KeepValue(r.layer, a) > cache->KeepValue(r.layer, b);
    });
    for (int32_t e : order) {
      if (static_cast<int32_t>(out.size()) >= std::min(r.count, r.max_copies)) break;
      // Never evict something the cache values more than the newcomer.
      auto victim = cache->ChooseVictim(r.layer, e);
      if (victim.ok() && *victim >= 0 &&
          cache->KeepValue(r.layer, *victim) >= cache->KeepValue(r.layer, e)) {
        break;
      }
      if (!admit(e)) break;
    }
    return out;
  }

  // Impact: greedy by expected gain, re-evaluated after each choice (each copy pushes the
  // later ones back on the link).
  std::vector<std::pair<int32_t, double>> landed;  // chosen experts and landing times
  double base = GuessedFinish(r, *cache, cost, landed);
  while (static_cast<int32_t>(out.size()) < r.max_copies) {
    int32_t best = -1;
    double best_gain = 0, best_finish = base;
    const double land = r.link_free_s + cost.Copy() * (landed.size() + 1) - r.layer_start_s;
    for (const ExpertGuess& g : r.guesses) {
      if (cache->Resident(r.layer, g.expert)) continue;
      auto with = landed;
      with.emplace_back(g.expert, land);
      const double finish = GuessedFinish(r, *cache, cost, with);
      const double gain = g.prob * (base - finish);
      if (gain > best_gain) best = g.expert, best_gain = gain, best_finish = finish;
    }
    if (best < 0) break;
    double prob = 0;
    for (const ExpertGuess& g : r.guesses) {
      if (g.expert == best) prob = g.prob;
    }
    // Never evict an expert the target layer is as likely to use.
    auto victim = cache->ChooseVictim(r.layer, best);
    if (!victim.ok() || (*victim >= 0 && Guessed(r, *victim, prob))) break;
    if (!admit(best)) break;
    landed.emplace_back(best, land);
    base = best_finish;
  }
  return out;
}

}  // namespace moex
