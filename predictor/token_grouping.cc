#include "predictor/token_grouping.h"

#include <climits>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace moex {
namespace {

absl::Status CheckRouting(const ChunkRouting& r) {
  if (r.tokens < 0 || r.tokens > INT32_MAX || r.layers < 1 || r.k < 1 || r.num_experts < r.k) {
    return absl::InvalidArgumentError(absl::StrCat("token grouping: bad shape: ", r.tokens,
                                                   " tokens, ", r.layers, " layers, top-", r.k,
                                                   " of ", r.num_experts, " experts"));
  }
  if (r.experts.size() != static_cast<size_t>(r.tokens) * r.layers * r.k) {
    return absl::InvalidArgumentError(absl::StrCat("token grouping: ", r.experts.size(),
                                                   " expert ids for ", r.tokens, " tokens"));
  }
  for (int32_t e : r.experts) {
    if (e < 0 || e >= r.num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("token grouping: expert id ", e));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<int64_t> DistinctExperts(const ChunkRouting& r, std::span<const int32_t> order,
                                        int32_t batch) {
  if (absl::Status st = CheckRouting(r); !st.ok()) return st;
  if (batch < 1) return absl::InvalidArgumentError("token grouping: micro-batch size < 1");
  if (static_cast<int64_t>(order.size()) != r.tokens) {
    return absl::InvalidArgumentError("token grouping: the order is not a permutation");
  }
  std::vector<uint8_t> seen(r.tokens, 0);
  for (int32_t t : order) {
    if (t < 0 || t >= r.tokens || seen[t]) {
      return absl::InvalidArgumentError("token grouping: the order is not a permutation");
    }
    seen[t] = 1;
  }
  const int64_t pairs = static_cast<int64_t>(r.layers) * r.num_experts;
  // stamp[l * E + e] = the last micro-batch (+1) that used expert e in layer l.
  std::vector<int64_t> stamp(pairs, 0);
  int64_t distinct = 0;
  for (int64_t i = 0; i < r.tokens; ++i) {
    const int64_t mb = i / batch + 1;
    const int32_t* ids = &r.experts[static_cast<size_t>(order[i]) * r.layers * r.k];
    for (int32_t l = 0; l < r.layers; ++l) {
      for (int32_t j = 0; j < r.k; ++j) {
        int64_t& s = stamp[static_cast<int64_t>(l) * r.num_experts + ids[l * r.k + j]];
        if (s != mb) {
          s = mb;
          ++distinct;
        }
      }
    }
  }
  return distinct;
}

absl::StatusOr<std::vector<int32_t>> GroupTokens(const ChunkRouting& r, int32_t batch) {
  if (absl::Status st = CheckRouting(r); !st.ok()) return st;
  if (batch < 1) return absl::InvalidArgumentError("token grouping: micro-batch size < 1");
  const int32_t T = static_cast<int32_t>(r.tokens);
  const int32_t per_token = r.layers * r.k;  // (layer, expert) pairs of a token, all distinct
  const int64_t pairs = static_cast<int64_t>(r.layers) * r.num_experts;
  auto pair_of = [&](int32_t t, int32_t i) {
    return static_cast<int64_t>(i / r.k) * r.num_experts +
           r.experts[static_cast<size_t>(t) * per_token + i];
  };
  // Which tokens use each (layer, expert) pair, as one array with offsets.
  std::vector<int64_t> first(pairs + 1, 0);
  for (int32_t t = 0; t < T; ++t) {
    for (int32_t i = 0; i < per_token; ++i) ++first[pair_of(t, i) + 1];
  }
  std::partial_sum(first.begin(), first.end(), first.begin());
  std::vector<int32_t> users(first.back());
  {
    std::vector<int64_t> fill(first.begin(), first.end() - 1);
    for (int32_t t = 0; t < T; ++t) {
      for (int32_t i = 0; i < per_token; ++i) users[fill[pair_of(t, i)]++] = t;
    }
  }

  std::vector<int32_t> order;
  order.reserve(T);
  std::vector<uint8_t> placed(T, 0), in_batch(pairs, 0);
  std::vector<int32_t> fresh(T);  // pairs of a token the current micro-batch does not use
  std::vector<int64_t> touched;
  int32_t seed = 0;  // every token before it is placed
  while (static_cast<int32_t>(order.size()) < T) {
    for (int64_t q : touched) in_batch[q] = 0;
    touched.clear();
    while (placed[seed]) ++seed;
    for (int32_t t = seed; t < T; ++t) fresh[t] = per_token;
    int32_t u = seed;
    for (int32_t n = 0; n < batch && u >= 0; ++n) {
      placed[u] = 1;
      order.push_back(u);
      for (int32_t i = 0; i < per_token; ++i) {
        const int64_t q = pair_of(u, i);
        if (in_batch[q]) continue;
        in_batch[q] = 1;
        touched.push_back(q);
        for (int64_t x = first[q]; x < first[q + 1]; ++x) --fresh[users[x]];
      }
      u = -1;
      int32_t best = INT32_MAX;
      for (int32_t t = seed; t < T; ++t) {
        if (!placed[t] && fresh[t] < best) {
          best = fresh[t];
          u = t;
        }
      }
    }
  }

  std::vector<int32_t> identity(T);
  std::iota(identity.begin(), identity.end(), 0);
  absl::StatusOr<int64_t> grouped = DistinctExperts(r, order, batch);
  if (!grouped.ok()) return grouped.status();
  absl::StatusOr<int64_t> plain = DistinctExperts(r, identity, batch);
  if (!plain.ok()) return plain.status();
  // Greedy is not optimal; where it loses to the order the tokens came in, keep that.
  return *plain <= *grouped ? identity : order;
}

}  // namespace moex
