// Picks the next token from logits: repetition penalty, then top-k, top-p (nucleus),
// min-p, temperature, and a draw; greedy when temperature <= 0. The order and the
// penalty rule follow llama.cpp's defaults so that the same flags mean the same thing.
// Thread-safety: one Sampler per sequence (it owns the random state).
#ifndef MOEX_RUNTIME_SAMPLER_H_
#define MOEX_RUNTIME_SAMPLER_H_

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "moex/moex.h"

namespace moex {

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& opts) : opts_(opts), rng_(opts.seed) {}

  // `logits` (n_vocab values) is modified (penalties applied). `history` holds the
  // tokens seen so far, most recent last.
  int32_t Sample(std::span<float> logits, std::span<const int32_t> history);

 private:
  SamplingOptions opts_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;  // scratch
};

}  // namespace moex

#endif  // MOEX_RUNTIME_SAMPLER_H_
