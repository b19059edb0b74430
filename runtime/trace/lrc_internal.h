// The building blocks of AnalyzeTrace, on one layer of one sequence: routing given as
// ids[t * k + j] (token t's j-th expert, router order). Exposed for the tests, which check
// them against brute-force definitions.
#ifndef MOEX_RUNTIME_TRACE_LRC_INTERNAL_H_
#define MOEX_RUNTIME_TRACE_LRC_INTERNAL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/trace.h"

namespace moex::lrc {

// SRP: adds to hist[c] (size m + 1) the number of (segment, expert) pairs in which the
// expert is chosen c times, over all segments of m consecutive tokens (T - m + 1 of them;
// none when T < m). O(T k) whatever m.
void AddSrpHistogram(const uint16_t* ids, int64_t T, int k, int E, int m, uint64_t* hist);

struct SrpResult {
  double srp = 0;       // NaN when there is no segment
  int threshold = 0;    // the best tau
  double set_size = 0;  // mean |S_tau(s)| at that tau
};
SrpResult SrpFromHistogram(const uint64_t* hist, int m, int E);

// SCH: adds to stat[r] (size E) the number of accesses found at rank r of the paper's
// lazily sorted priority stack (ljcleo/moe-lrc, calc_fsf); hits(C) = stat[0] + ... +
// stat[C-1]. A first access counts at rank = number of distinct experts seen before.
// Runs AddSchRanksAvx512 where the CPU has AVX-512 and the keys fit, else the linked one.
void AddSchRanks(const uint16_t* ids, int64_t T, int k, int E, int m, uint64_t* stat);
// The portable coding: the reference's linked lists and update rules, transcribed.
void AddSchRanksLinked(const uint16_t* ids, int64_t T, int k, int E, int m, uint64_t* stat);
// The same ranks from one data-parallel pass per access (lrc_avx512.cc explains why it
// equals the reference). Call only where the CPU has AVX-512 (F, BW, VL, DQ). Returns false,
// adding nothing, when the packed keys cannot hold T * k stamps beside the ids and counts.
bool AddSchRanksAvx512(const uint16_t* ids, int64_t T, int k, int E, int m, uint64_t* stat);

// A cache policy replayed for every C at once (all four are priority algorithms, so a
// cache of C+1 experts always holds the cache of C: one Mattson stack pass). stat[d] counts
// accesses at stack depth d (a first access at depth = distinct experts so far, as SCH
// does: a cache with a free slot holds it). `weights` (T*k) and `probs` (T*E) may be null;
// the score policy uses the top-2k probabilities when present, else the top-k weights,
// else 1/k each.
void AddPolicyDepths(Policy policy, const uint16_t* ids, const float* weights, const float* probs,
                     int64_t T, int k, int E, uint64_t* stat);
// The true experts (top-k) found among a guess of g ids; ids distinct within each.
int GuessHits(const uint16_t* guess, int g, const uint16_t* truth, int k);
// Recall hits / (samples * k) and precision hits / (samples * g); NaN without samples.
PredictorScore MakeScore(int64_t hits, int64_t samples, int k, int g);

// previous-token: token t's guess in a layer is token t-1's experts there (same
// sequence; a sequence's first token has none).
void PreviousTokenCounts(const Trace& tr, int layer, int64_t* hits, int64_t* samples);
// frequency: token t's guess is the k experts the layer used most on every token before it
// in the trace (earlier sequences included; ties to the lower id); the trace's first token
// has none.
void FrequencyCounts(const Trace& tr, int layer, int64_t* hits, int64_t* samples);

// Fills model->predictors and each layer's (layers has num_layers entries): the recorded
// predictors, then previous-token and frequency unless recorded under those names. Runs
// on the calling TBB arena.
void ScorePredictors(const Trace& tr, std::vector<LrcFigures>* layers, LrcFigures* model);

// Token grouping at each of options.group_sizes (see LrcOptions).
absl::StatusOr<std::vector<TokenGroupingFigures>> TokenGrouping(const Trace& tr,
                                                                const LrcOptions& options);

}  // namespace moex::lrc

#endif  // MOEX_RUNTIME_TRACE_LRC_INTERNAL_H_
