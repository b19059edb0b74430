// Token grouping for prefill (ExpertFlow's token scheduling, arXiv 2410.17954;
// ../shared/docs/ALGORITHMS.md §3): a prefill chunk's MoE work is per token, so within a
// layer its tokens may run in any order; run in micro-batches of B tokens, each
// micro-batch loads every expert any of its tokens uses. Reordering the tokens so that a
// micro-batch's tokens share experts loads fewer distinct experts per micro-batch (fewer
// expert copies to a GPU, fewer expert weight reads on a CPU).
//
// GroupTokens builds micro-batches greedily: each starts with the first token not yet
// placed and grows by the token that adds the fewest (layer, expert) pairs the micro-batch
// does not use yet (ties: the earlier token). One order serves all layers, so micro-batches
// can flow through the layers as a pipeline. It returns the original order when that uses
// no more distinct experts than the greedy one, so grouping never makes it worse.
#ifndef MOEX_PREDICTOR_TOKEN_GROUPING_H_
#define MOEX_PREDICTOR_TOKEN_GROUPING_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace moex {

// The routing of a chunk of tokens: token t chose experts[(t * layers + l) * k + j] in
// layer l (k distinct ids per layer, each < num_experts).
struct ChunkRouting {
  std::span<const int32_t> experts;
  int64_t tokens = 0;
  int32_t layers = 0, k = 0, num_experts = 0;
};

// Distinct experts of micro-batch i in layer l, summed over every micro-batch and layer,
// for the tokens run in `order` (a permutation of 0..tokens-1) in micro-batches of
// `batch` (the last one may be shorter): order[i * batch .. (i + 1) * batch).
absl::StatusOr<int64_t> DistinctExperts(const ChunkRouting& r, std::span<const int32_t> order,
                                        int32_t batch);

// The order in which to run the chunk's tokens in micro-batches of `batch` (see above).
// Errors (kInvalidArgument): batch < 1, a shape that does not match `experts`, an id out of
// range.
absl::StatusOr<std::vector<int32_t>> GroupTokens(const ChunkRouting& r, int32_t batch);

}  // namespace moex

#endif  // MOEX_PREDICTOR_TOKEN_GROUPING_H_
