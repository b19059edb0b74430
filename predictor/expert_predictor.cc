#include "predictor/expert_predictor.h"

#include <algorithm>
#include <numeric>

#include "kernels_cpu/ops.h"

namespace moex {
namespace {

// Top-k of n_expert scores, best first, ties to the lower id.
void TopK(const float* s, int64_t n_expert, int64_t k, int32_t* out) {
  std::vector<int32_t> order(n_expert);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [s](int32_t a, int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
  std::copy_n(order.begin(), k, out);
}

}  // namespace

void GateTopK(const WeightMatrix& router, const float* h, int64_t n, int64_t k,
              std::vector<int32_t>* out) {
  // Softmax is monotone, so the top-k of the logits is the top-k of the probabilities.
  std::vector<float> logits(n * router.rows);
  kcpu::MatMul(router.type, router.data, router.rows, router.cols, h, n, logits.data());
  out->resize(n * k);
  for (int64_t t = 0; t < n; ++t)
    TopK(logits.data() + t * router.rows, router.rows, k, out->data() + t * k);
}

double RecallAtK(const int32_t* pred, const int32_t* truth, int64_t k) {
  int64_t hits = 0;
  for (int64_t i = 0; i < k; ++i) {
    hits += std::find(pred, pred + k, truth[i]) != pred + k;
  }
  return static_cast<double>(hits) / k;
}

PredictorMeter::PredictorMeter(std::vector<PredictorLayer> layers, int64_t n_embd, int64_t n_expert,
                               int64_t top_k, float rms_eps, int max_distance)
    : layers_(std::move(layers)),
      n_layer_(static_cast<int64_t>(layers_.size())),
      n_embd_(n_embd),
      n_expert_(n_expert),
      k_(top_k),
      eps_(rms_eps),
      max_distance_(max_distance),
      scores_(kNumPredictors * (max_distance + 1) * n_layer_),
      pending_(kNumPredictors * (max_distance + 1) * n_layer_),
      last_token_(n_layer_),
      counts_(n_layer_, std::vector<int64_t>(n_expert, 0)) {}

void PredictorMeter::NewSequence() {
  for (auto& v : last_token_) v.clear();
  for (auto& v : pending_) v.clear();
}

PredictorMeter::Score PredictorMeter::ModelScore(int predictor, int distance) const {
  Score s;
  for (int64_t l = 0; l < n_layer_; ++l) {
    s.recall_sum += score(predictor, distance, l).recall_sum;
    s.samples += score(predictor, distance, l).samples;
  }
  return s;
}

void PredictorMeter::OnLayer(int64_t layer, int64_t n, const float* moe_input,
                             const float* residual, const int32_t* experts) {
  const int D = max_distance_;
  // 1. Score the cross-layer guesses made for this layer.
  for (int p = 0; p < 2; ++p) {
    for (int d = 1; d <= D; ++d) {
      std::vector<int32_t>& g = pending_[(p * (D + 1) + d) * n_layer_ + layer];
      if (static_cast<int64_t>(g.size()) != n * k_) continue;
      Score& s = score_mut(p, d, layer);
      for (int64_t t = 0; t < n; ++t)
        s.recall_sum += RecallAtK(g.data() + t * k_, experts + t * k_, k_);
      s.samples += n;
      g.clear();
    }
  }
  // 2. Same-layer predictors, from what was known before each token: the previous
  // token's experts, and the layer's frequencies before this batch.
  Score& prev = score_mut(2, 1, layer);
  std::vector<int32_t>& last = last_token_[layer];
  for (int64_t t = 0; t < n; ++t) {
    const int32_t* before = t > 0 ? experts + (t - 1) * k_ : (last.empty() ? nullptr : last.data());
    if (before == nullptr) continue;
    prev.recall_sum += RecallAtK(before, experts + t * k_, k_);
    ++prev.samples;
  }
  last.assign(experts + (n - 1) * k_, experts + n * k_);
  std::vector<int64_t>& c = counts_[layer];
  const int64_t total = std::accumulate(c.begin(), c.end(), int64_t{0});
  if (total > 0) {
    std::vector<float> f(c.begin(), c.end());
    std::vector<int32_t> top(k_);
    TopK(f.data(), n_expert_, k_, top.data());
    Score& fs = score_mut(3, 1, layer);
    for (int64_t t = 0; t < n; ++t) fs.recall_sum += RecallAtK(top.data(), experts + t * k_, k_);
    fs.samples += n;
  }
  for (int64_t i = 0; i < n * k_; ++i) ++c[experts[i]];

  // 3. Guess the later layers' experts from this layer's hidden states.
  for (int d = 1; d <= D && layer + d < n_layer_; ++d) {
    const PredictorLayer& target = layers_[layer + d];
    std::vector<int32_t>& gate = pending_[(0 * (D + 1) + d) * n_layer_ + layer + d];
    GateTopK(target.router, moe_input, n, k_, &gate);
    normed_.resize(n * n_embd_);
    for (int64_t t = 0; t < n; ++t) {
      kcpu::RmsNorm(residual + t * n_embd_, target.ffn_norm, n_embd_, eps_,
                    normed_.data() + t * n_embd_);
    }
    std::vector<int32_t>& resid = pending_[(1 * (D + 1) + d) * n_layer_ + layer + d];
    GateTopK(target.router, normed_.data(), n, k_, &resid);
    if (sink_) {
      sink_(0, d, layer + d, n, gate.data());
      sink_(1, d, layer + d, n, resid.data());
    }
  }
}

}  // namespace moex
