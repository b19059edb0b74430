#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace moex {

int32_t Sampler::Sample(std::span<float> logits, std::span<const int32_t> history) {
  const int64_t n = static_cast<int64_t>(logits.size());
  if (opts_.repeat_penalty != 1.0f && opts_.repeat_last_n != 0) {
    const size_t last = opts_.repeat_last_n < 0
                            ? history.size()
                            : std::min<size_t>(history.size(), opts_.repeat_last_n);
    std::unordered_set<int32_t> seen(history.end() - last, history.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= n) continue;
      float& l = logits[t];
      l = l > 0 ? l / opts_.repeat_penalty : l * opts_.repeat_penalty;
    }
  }
  if (opts_.temperature <= 0.0f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }

  cand_.resize(n);
  for (int64_t i = 0; i < n; ++i) cand_[i] = {logits[i], static_cast<int32_t>(i)};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = cand_.size();
  if (opts_.top_k > 0 && static_cast<size_t>(opts_.top_k) < keep) {
    keep = opts_.top_k;
    std::partial_sort(cand_.begin(), cand_.begin() + keep, cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  cand_.resize(keep);

  // Softmax at temperature 1 for the top-p / min-p cuts (as llama.cpp does), then the
  // temperature shapes the final draw.
  std::vector<double> p(keep);
  const double mx = cand_[0].first;
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += (p[i] = std::exp(cand_[i].first - mx));
  for (double& v : p) v /= sum;
  if (opts_.top_p < 1.0f) {
    double acc = 0;
    size_t i = 0;
    for (; i < keep; ++i) {
      acc += p[i];
      if (acc >= opts_.top_p) break;
    }
    keep = std::min(keep, i + 1);
  }
  if (opts_.min_p > 0.0f) {
    size_t i = 1;
    while (i < keep && p[i] >= opts_.min_p * p[0]) ++i;
    keep = i;
  }
  std::vector<double> w(keep);
  for (size_t i = 0; i < keep; ++i) {
    w[i] = std::exp((cand_[i].first - mx) / opts_.temperature);
  }
  std::discrete_distribution<size_t> dist(w.begin(), w.end());
  return cand_[dist(rng_)].second;
}

}  // namespace moex
