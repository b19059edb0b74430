// Routing traces and routing-consistency analysis (SRP, SCH, cache-policy replay).
//
// A trace holds, for independent sequences of tokens, each token's top-k experts in every
// MoE layer (in router order, highest weight first), optionally their weights and the full
// router probabilities. Files are written by TraceWriter (moex trace) in the binary format
// of docs/TRACE_FORMAT.md; traces of other engines come in through ImportCsv /
// ImportMixtralJsonl. AnalyzeTrace computes the measures of "Not All Models Suit Expert
// Offloading" (arXiv 2505.16056; ../shared/docs/ALGORITHMS.md §4) with numbers equal to
// that paper's code, plus replayed cache policies and load statistics.
//
//   auto trace = moex::ReadTrace("run.trace");                  // absl::StatusOr<Trace>
//   moex::LrcOptions opt;                                        // m = 4, 16, 64, 256
//   auto report = moex::AnalyzeTrace(*trace, opt);
//   double srp16 = report->model.srp[1];                         // opt.segment_lengths[1]
#ifndef MOEX_TRACE_H_
#define MOEX_TRACE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex {

struct TraceHeader {
  std::string model;  // free text: the model's name or file
  int32_t num_experts = 0;
  int32_t top_k = 0;
  int32_t num_layers = 0;  // MoE layers, numbered 0..num_layers-1
  bool has_weights = false;
  bool has_probs = false;  // full router probabilities (files only; see ReadTraceOptions)
  // Recorded predictor guesses (format version 2; empty: none). Each guess of layer l made
  // d layers earlier (d = 1..predict_distance, l >= d) holds predict_size expert ids, best
  // first; predict_size 0 means top_k. Layers l < d have no guess (nothing runs before).
  std::vector<std::string> predictors;
  int32_t predict_distance = 0;
  int32_t predict_size = 0;
  int32_t guess_size() const { return predict_size > 0 ? predict_size : top_k; }
};

// A missing guess in Trace::predictions (a layer with no layer d before it).
inline constexpr uint16_t kNoGuess = 0xFFFF;

// A whole trace in memory. Token t of the trace (over all sequences, in order) in layer l
// chose experts[(t * num_layers + l) * top_k + j], j < top_k; weights likewise when
// present; probs[(t * num_layers + l) * num_experts + e] when loaded.
struct Trace {
  TraceHeader header;
  std::vector<std::string> seq_names;
  std::vector<int64_t> seq_start;  // size sequences + 1; sequence s = [start[s], start[s+1])
  std::vector<uint16_t> experts;
  std::vector<float> weights;
  std::vector<float> probs;
  std::vector<uint16_t> predictions;
  int64_t tokens() const { return seq_start.empty() ? 0 : seq_start.back(); }
  size_t PredictionIndex(int64_t t, int p, int d, int l) const {
    const TraceHeader& h = header;
    return ((((static_cast<size_t>(t) * h.predictors.size() + p) * h.predict_distance + d - 1) *
                 h.num_layers +
             l) *
            h.guess_size());
  }
  int64_t sequences() const { return seq_names.size(); }
};

// Writes a trace file one sequence at a time, so recording long runs needs memory for one
// sequence only. Call Add* between BeginSequence and EndSequence, for every layer of every
// token of the sequence (any order of calls; tokens are 0-based within the sequence).
class TraceWriter {
 public:
  static absl::StatusOr<std::unique_ptr<TraceWriter>> Create(const std::string& path,
                                                             const TraceHeader& header);
  ~TraceWriter();
  absl::Status BeginSequence(const std::string& name);
  // `experts` and `weights` hold top_k entries (weights may be null when the header has
  // none); `probs` num_experts entries when the header has them.
  absl::Status Add(int64_t token, int32_t layer, const int32_t* experts, const float* weights,
                   const float* probs);
  // Predictor `predictor` (an index into header.predictors) guessed `experts`
  // (guess_size() distinct ids) for `layer` of `token`, `distance` layers before it
  // (1..predict_distance, <= layer). Every such guess must be added before EndSequence.
  absl::Status AddPrediction(int64_t token, int32_t layer, int32_t predictor, int32_t distance,
                             const int32_t* experts);
  absl::Status EndSequence();
  // Flushes and closes; errors if a sequence is still open or a write failed.
  absl::Status Close();

 private:
  struct Impl;
  explicit TraceWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct ReadTraceOptions {
  bool load_probs = false;  // the full probabilities are large; skipped unless asked for
};

// Reads a trace file. Errors: kNotFound, kDataLoss (bad magic, truncation, ids out of
// range; the message names the file, the sequence and the byte offset), kUnimplemented
// (a newer format version).
absl::StatusOr<Trace> ReadTrace(const std::string& path, const ReadTraceOptions& options = {});
// Only the header (cheap).
absl::StatusOr<TraceHeader> ReadTraceHeader(const std::string& path);

// CSV with header `[seq,]token,layer,experts[,weights]` (experts and weights separated by
// ';'), one row per token and layer, rows in any order. `num_experts` <= 0: largest id + 1.
// Tokens of a sequence must be 0..n-1 each with every layer 0..L-1; a token missing some
// layer at the end of a sequence (a truncated recording) is dropped and counted in
// *dropped_tokens (may be null); elsewhere it is an error. Errors (kInvalidArgument) name
// the line and the reason.
absl::StatusOr<Trace> ImportCsv(const std::string& path, int32_t num_experts,
                                int64_t* dropped_tokens = nullptr);
// The JSON-lines routing dumps of the Mixtral-8x7B traces in ../shared/testdata (one
// object per problem, token and layer: "problem_id", "token_idx", "layer", "experts",
// "gating_probs"). Same rules as ImportCsv, with problem_id as the sequence.
absl::StatusOr<Trace> ImportMixtralJsonl(const std::string& path, int32_t num_experts,
                                         int64_t* dropped_tokens = nullptr);

// Concatenates traces of the same shape (experts, top-k, layers) as separate sequences.
// Recorded predictions are kept only when every trace has the same predictors, distance
// and guess size.
absl::StatusOr<Trace> MergeTraces(std::vector<Trace> traces);

struct LrcOptions {
  std::vector<int32_t> segment_lengths = {4, 16, 64, 256};  // m
  bool policies = true;   // LRU, LFU, score (§2c), Belady replay for C = 1..E
  int32_t bootstrap = 0;  // resamples of the sequences for 95% intervals; 0 = none
  uint64_t seed = 1;
  int32_t threads = 0;  // 0 = all cores
  // Predictor accuracy: the recorded guesses, and previous-token and frequency (computed
  // from the routing, so every trace has them).
  bool predictors = true;
  // Token grouping for prefill: micro-batch sizes B (empty: none). Each sequence is cut
  // into prefill chunks of group_chunk tokens; chunks from the start of the trace up to
  // group_max_tokens tokens are grouped (the greedy is quadratic in the chunk).
  std::vector<int32_t> group_sizes = {16, 64};
  int32_t group_chunk = 1024;
  int64_t group_max_tokens = 1 << 17;
};

// A value with its bootstrap 95% interval (lo = hi = value without bootstrap).
struct Estimate {
  double value = 0, lo = 0, hi = 0;
};

// How well one predictor's guesses (G ids) match the true top-k at one distance: recall =
// hits / (samples * k), the share of the true experts found among the guesses; precision =
// hits / (samples * G), the share of the guesses that are true. NaN without samples.
struct PredictorScore {
  double recall = 0, precision = 0;
  int64_t samples = 0;  // (token, layer) guesses scored
  int64_t hits = 0;
};

// A predictor's scores by distance. Recorded predictors (from the trace's guesses) have
// distances 1..predict_distance; previous-token and frequency, computed from the routing,
// do not depend on the distance and have distance 1 only.
struct PredictorFigures {
  std::string name;
  bool recorded = false;
  std::vector<PredictorScore> by_distance;  // [d - 1]
};

// Token grouping for prefill at one micro-batch size: mean distinct experts per
// (micro-batch, layer), in the tokens' own order and after GroupTokens
// (predictor/token_grouping.h).
struct TokenGroupingFigures {
  int32_t batch = 0;
  int64_t tokens = 0, chunks = 0, micro_batches = 0;
  double distinct_before = 0, distinct_after = 0;
};

enum class Policy { kLru = 0, kLfu = 1, kScore = 2, kBelady = 3 };
inline constexpr int kNumPolicies = 4;
inline constexpr const char* kPolicyNames[kNumPolicies] = {"lru", "lfu", "score", "belady"};

// Figures of one layer, or of the model (pooled over layers). Indices: [i] of
// segment_lengths, [c - 1] for a cache of c experts (c = 1..num_experts).
struct LrcFigures {
  int32_t layer = -1;  // -1: the model
  std::vector<Estimate> srp;
  std::vector<int32_t> srp_threshold;           // the best tau
  std::vector<double> srp_set_size;             // mean |S_tau(s)| at the best tau
  std::vector<std::vector<Estimate>> sch;       // [m][c-1]
  std::vector<std::vector<Estimate>> policies;  // [Policy][c-1] (empty when off)
  // Load: share of accesses per expert (layers only), max/mean and entropy (bits; 1.0 =
  // log2 E when normalised).
  std::vector<double> load;
  double load_max_over_mean = 0, load_entropy_bits = 0, load_entropy_norm = 0;
  // Mean fraction of a token's experts also chosen by the previous token (same sequence).
  double reuse_prev_token = 0;
  // Co-activation with the next layer: for each expert of this layer, the share of its
  // next-layer co-activations that go to its top_k most frequent partners, averaged over
  // accesses (1.0: the next layer's experts are determined by this layer's). -1 for the
  // last layer.
  double coactivation_topk_share = -1;
  // Layers: scores of the guesses for this layer; the model: pooled over layers.
  std::vector<PredictorFigures> predictors;
};

struct LrcReport {
  TraceHeader header;
  int64_t tokens = 0;
  int64_t sequences = 0;
  std::vector<int32_t> segment_lengths;
  int32_t bootstrap = 0;
  LrcFigures model;
  std::vector<LrcFigures> layers;
  std::vector<TokenGroupingFigures> token_grouping;  // one per LrcOptions::group_sizes
};

// Errors: kInvalidArgument (an m < 1, an empty trace).
absl::StatusOr<LrcReport> AnalyzeTrace(const Trace& trace, const LrcOptions& options);

}  // namespace moex

#endif  // MOEX_TRACE_H_
