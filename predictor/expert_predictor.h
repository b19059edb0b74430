// Guessing which experts later layers will use, from what is known at layer l, and
// measuring how good the guesses are.
//
// Predictors (../shared/docs/ALGORITHMS.md §3):
//   cross-layer-gate        Fate (arXiv 2502.12224): layer l+d's router applied to layer
//                           l's FFN-normed MoE input: top-k of W_{l+d} . h_l.
//   cross-layer-gate-resid  the same on layer l's residual stream after attention,
//                           normalised with layer l+d's ffn_norm (what l+d would see if
//                           the layers in between changed nothing).
//   previous-token          the experts the previous token used in the same layer.
//   frequency               the k experts the layer has used most so far.
// All return k expert ids per token, best first. The meter compares each guess with the
// true routing when the target layer runs, as recall@k: the share of the true top-k among
// the k guessed (with k guessed and k true, precision equals recall).
// Thread-safety: PredictorMeter belongs to one sequence (one thread at a time).
#ifndef MOEX_PREDICTOR_EXPERT_PREDICTOR_H_
#define MOEX_PREDICTOR_EXPERT_PREDICTOR_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "runtime/core/tensor_view.h"

namespace moex {

// What predictors need of each MoE layer.
struct PredictorLayer {
  WeightMatrix router;              // [n_expert][n_embd]
  const float* ffn_norm = nullptr;  // [n_embd]
};

// Top-k ids (best first, ties to the lower id) of router . h for n tokens of h
// ([n][router.cols]); out gets n * k ids.
void GateTopK(const WeightMatrix& router, const float* h, int64_t n, int64_t k,
              std::vector<int32_t>* out);

// Recall@k of `pred` against `truth` (k ids each).
double RecallAtK(const int32_t* pred, const int32_t* truth, int64_t k);

class PredictorMeter {
 public:
  static constexpr const char* kNames[] = {"cross-layer-gate", "cross-layer-gate-resid",
                                           "previous-token", "frequency"};
  static constexpr int kNumPredictors = 4;

  // `max_distance`: predict layers l+1 .. l+max_distance.
  PredictorMeter(std::vector<PredictorLayer> layers, int64_t n_embd, int64_t n_expert,
                 int64_t top_k, float rms_eps, int max_distance);

  // One MoE layer of a batch, in layer order: the hidden states it saw and its true
  // routing (k ids per token). Scores the guesses made earlier for this layer, then
  // makes the guesses of the later layers.
  void OnLayer(int64_t layer, int64_t n_tokens, const float* moe_input, const float* residual,
               const int32_t* experts);
  // Forgets the previous token (a new sequence starts); keeps the statistics.
  void NewSequence();

  // Receives each cross-layer guess as OnLayer makes it (for recording in a trace):
  // predictor 0 or 1 (kNames), the distance, the layer guessed, and k ids per token of the
  // batch, best first (valid during the call). Empty: none.
  using GuessSink = std::function<void(int predictor, int distance, int64_t layer, int64_t n_tokens,
                                       const int32_t* ids)>;
  void set_guess_sink(GuessSink sink) { sink_ = std::move(sink); }

  struct Score {
    double recall_sum = 0;
    int64_t samples = 0;
    double recall() const { return samples ? recall_sum / samples : 0; }
  };
  // [predictor][distance][layer]: layer = target layer; distance 1..max_distance.
  const Score& score(int predictor, int distance, int64_t layer) const {
    return scores_[(predictor * (max_distance_ + 1) + distance) * n_layer_ + layer];
  }
  // Pooled over target layers.
  Score ModelScore(int predictor, int distance) const;
  int max_distance() const { return max_distance_; }
  int64_t n_layer() const { return n_layer_; }

 private:
  Score& score_mut(int predictor, int distance, int64_t layer) {
    return scores_[(predictor * (max_distance_ + 1) + distance) * n_layer_ + layer];
  }

  std::vector<PredictorLayer> layers_;
  int64_t n_layer_, n_embd_, n_expert_, k_;
  float eps_;
  int max_distance_;
  std::vector<Score> scores_;
  // pending_[(predictor * (D+1) + d) * L + target]: guesses for `target` made d layers
  // earlier, k ids per token of the current batch.
  std::vector<std::vector<int32_t>> pending_;
  std::vector<std::vector<int32_t>> last_token_;  // per layer: previous token's k ids
  std::vector<std::vector<int64_t>> counts_;      // per layer: uses of each expert so far
  std::vector<float> normed_;                     // scratch
  GuessSink sink_;
};

}  // namespace moex

#endif  // MOEX_PREDICTOR_EXPERT_PREDICTOR_H_
