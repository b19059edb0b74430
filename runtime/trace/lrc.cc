// AnalyzeTrace: SRP, SCH, policy replay, load statistics and bootstrap intervals over a
// whole trace, predictor accuracy and token grouping (include/moex/trace.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels_cpu/parallel.h"
#include "moex/trace.h"
#include "predictor/token_grouping.h"
#include "runtime/trace/lrc_internal.h"
#include "tbb/blocked_range.h"
#include "tbb/task_arena.h"

namespace moex {

// ---- predictor accuracy and token grouping ---------------------------------------------

namespace lrc {

int GuessHits(const uint16_t* guess, int g, const uint16_t* truth, int k) {
  int hits = 0;
  for (int i = 0; i < k; ++i) hits += std::find(guess, guess + g, truth[i]) != guess + g;
  return hits;
}

PredictorScore MakeScore(int64_t hits, int64_t samples, int k, int g) {
  PredictorScore s;
  s.hits = hits;
  s.samples = samples;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  s.recall = samples > 0 ? static_cast<double>(hits) / (static_cast<double>(samples) * k) : nan;
  s.precision = samples > 0 ? static_cast<double>(hits) / (static_cast<double>(samples) * g) : nan;
  return s;
}

void PreviousTokenCounts(const Trace& tr, int layer, int64_t* hits, int64_t* samples) {
  const int L = tr.header.num_layers, k = tr.header.top_k;
  for (int64_t s = 0; s < tr.sequences(); ++s) {
    for (int64_t t = tr.seq_start[s] + 1; t < tr.seq_start[s + 1]; ++t) {
      *hits +=
          GuessHits(&tr.experts[((t - 1) * L + layer) * k], k, &tr.experts[(t * L + layer) * k], k);
      ++*samples;
    }
  }
}

void FrequencyCounts(const Trace& tr, int layer, int64_t* hits, int64_t* samples) {
  const int L = tr.header.num_layers, k = tr.header.top_k, E = tr.header.num_experts;
  // The experts ranked by (uses so far descending, id ascending), kept sorted as counts
  // grow by one: a counted expert only moves up, so a few swaps per use keep it exact
  // instead of a top-k over E per token.
  std::vector<int64_t> count(E, 0);
  std::vector<uint16_t> rank(E);
  std::vector<int32_t> pos(E);
  std::iota(rank.begin(), rank.end(), 0);
  std::iota(pos.begin(), pos.end(), 0);
  auto before = [&](int a, int b) {
    return count[a] > count[b] || (count[a] == count[b] && a < b);
  };
  for (int64_t t = 0; t < tr.tokens(); ++t) {
    const uint16_t* truth = &tr.experts[(t * L + layer) * k];
    if (t > 0) {  // the first token of the trace has no history to guess from
      *hits += GuessHits(rank.data(), k, truth, k);
      ++*samples;
    }
    for (int j = 0; j < k; ++j) {
      const int e = truth[j];
      ++count[e];
      while (pos[e] > 0 && before(e, rank[pos[e] - 1])) {
        const int other = rank[pos[e] - 1];
        std::swap(rank[pos[e]], rank[pos[e] - 1]);
        --pos[e];
        ++pos[other];
      }
    }
  }
}

void ScorePredictors(const Trace& tr, std::vector<LrcFigures>* layers, LrcFigures* model) {
  const TraceHeader& h = tr.header;
  const int L = h.num_layers, k = h.top_k, G = h.guess_size();
  const int P = static_cast<int>(h.predictors.size()), D = h.predict_distance;
  const bool recorded = P > 0 && tr.predictions.size() == tr.PredictionIndex(tr.tokens(), 0, 1, 0);
  struct Spec {
    std::string name;
    bool recorded;
    int index, distances, guess;
  };
  std::vector<Spec> specs;
  for (int p = 0; recorded && p < P; ++p) specs.push_back({h.predictors[p], true, p, D, G});
  for (const char* name : {"previous-token", "frequency"}) {
    if (std::find_if(specs.begin(), specs.end(), [&](const Spec& s) { return s.name == name; }) ==
        specs.end()) {
      specs.push_back({name, false, -1, 1, k});
    }
  }
  // hits[layer][spec][d - 1], samples likewise.
  std::vector<std::vector<std::vector<int64_t>>> hits(L), samples(L);
  ParallelFor(0, L, [&](int l) {
    hits[l].resize(specs.size());
    samples[l].resize(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      const Spec& sp = specs[i];
      hits[l][i].assign(sp.distances, 0);
      samples[l][i].assign(sp.distances, 0);
      if (!sp.recorded) {
        (sp.name == "frequency" ? FrequencyCounts : PreviousTokenCounts)(tr, l, &hits[l][i][0],
                                                                         &samples[l][i][0]);
        continue;
      }
      for (int d = 1; d <= std::min(l, D); ++d) {
        for (int64_t t = 0; t < tr.tokens(); ++t) {
          hits[l][i][d - 1] += GuessHits(&tr.predictions[tr.PredictionIndex(t, sp.index, d, l)], G,
                                         &tr.experts[(t * L + l) * k], k);
        }
        samples[l][i][d - 1] += tr.tokens();
      }
    }
  });
  model->predictors.clear();
  for (size_t i = 0; i < specs.size(); ++i) {
    PredictorFigures pooled{specs[i].name, specs[i].recorded, {}};
    for (int d = 1; d <= specs[i].distances; ++d) {
      int64_t all_hits = 0, all_samples = 0;
      for (int l = 0; l < L; ++l) {
        all_hits += hits[l][i][d - 1];
        all_samples += samples[l][i][d - 1];
      }
      pooled.by_distance.push_back(MakeScore(all_hits, all_samples, k, specs[i].guess));
    }
    model->predictors.push_back(pooled);
  }
  for (int l = 0; l < L; ++l) {
    LrcFigures& f = (*layers)[l];
    f.predictors.clear();
    for (size_t i = 0; i < specs.size(); ++i) {
      PredictorFigures pf{specs[i].name, specs[i].recorded, {}};
      for (int d = 1; d <= specs[i].distances; ++d) {
        pf.by_distance.push_back(
            MakeScore(hits[l][i][d - 1], samples[l][i][d - 1], k, specs[i].guess));
      }
      f.predictors.push_back(pf);
    }
  }
}

absl::StatusOr<std::vector<TokenGroupingFigures>> TokenGrouping(const Trace& tr,
                                                                const LrcOptions& opt) {
  const TraceHeader& h = tr.header;
  const int L = h.num_layers, k = h.top_k;
  if (opt.group_chunk < 1) return absl::InvalidArgumentError("token grouping: chunk < 1");
  for (int32_t b : opt.group_sizes) {
    if (b < 1) return absl::InvalidArgumentError("token grouping: micro-batch size < 1");
  }
  // Prefill chunks: each sequence cut into group_chunk tokens, from the trace's start.
  std::vector<std::pair<int64_t, int64_t>> chunks;  // [first token, end)
  int64_t taken = 0;
  for (int64_t s = 0; s < tr.sequences() && taken < opt.group_max_tokens; ++s) {
    for (int64_t t = tr.seq_start[s]; t < tr.seq_start[s + 1] && taken < opt.group_max_tokens;
         t += opt.group_chunk) {
      const int64_t end = std::min(tr.seq_start[s + 1], t + opt.group_chunk);
      chunks.emplace_back(t, end);
      taken += end - t;
    }
  }
  const size_t nb = opt.group_sizes.size();
  // [chunk][size]: distinct experts before, after.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> res(
      chunks.size(), std::vector<std::pair<int64_t, int64_t>>(nb));
  std::vector<absl::Status> errors(chunks.size());
  ParallelFor(size_t{0}, chunks.size(), [&](size_t c) {
    const auto [t0, t1] = chunks[c];
    const std::vector<int32_t> ids(tr.experts.begin() + t0 * L * k,
                                   tr.experts.begin() + t1 * L * k);
    const ChunkRouting r{ids, t1 - t0, L, k, h.num_experts};
    std::vector<int32_t> identity(t1 - t0);
    std::iota(identity.begin(), identity.end(), 0);
    for (size_t i = 0; i < nb; ++i) {
      absl::StatusOr<std::vector<int32_t>> order = GroupTokens(r, opt.group_sizes[i]);
      absl::StatusOr<int64_t> before = DistinctExperts(r, identity, opt.group_sizes[i]);
      if (!order.ok() || !before.ok()) {
        errors[c] = order.ok() ? before.status() : order.status();
        return;
      }
      absl::StatusOr<int64_t> after = DistinctExperts(r, *order, opt.group_sizes[i]);
      if (!after.ok()) {
        errors[c] = after.status();
        return;
      }
      res[c][i] = {*before, *after};
    }
  });
  for (const absl::Status& st : errors) {
    if (!st.ok()) return st;
  }
  std::vector<TokenGroupingFigures> out;
  for (size_t i = 0; i < nb; ++i) {
    TokenGroupingFigures f;
    f.batch = opt.group_sizes[i];
    f.chunks = static_cast<int64_t>(chunks.size());
    int64_t before = 0, after = 0;
    for (size_t c = 0; c < chunks.size(); ++c) {
      const int64_t n = chunks[c].second - chunks[c].first;
      f.tokens += n;
      f.micro_batches += (n + f.batch - 1) / f.batch;
      before += res[c][i].first;
      after += res[c][i].second;
    }
    const double cells = static_cast<double>(f.micro_batches) * L;
    f.distinct_before = cells > 0 ? before / cells : 0;
    f.distinct_after = cells > 0 ? after / cells : 0;
    out.push_back(f);
  }
  return out;
}

}  // namespace lrc

// ---- SRP, SCH, policies, load -----------------------------------------------------------

namespace {

// Every additive count of one layer (of one sequence, or pooled): the figures are ratios
// of sums of these, so pooling over sequences and layers, and bootstrap resampling of
// sequences, are sums of Counts.
struct Layout {
  std::vector<int> ms;
  int E = 0, policies = 0;
  std::vector<size_t> srp_off, sch_off, pol_off;
  size_t accesses = 0, size = 0;
  Layout(const std::vector<int>& m, int num_experts, bool with_policies)
      : ms(m), E(num_experts), policies(with_policies ? kNumPolicies : 0) {
    for (int mi : ms) {
      srp_off.push_back(size);
      size += mi + 1;
    }
    for (size_t i = 0; i < ms.size(); ++i) {
      sch_off.push_back(size);
      size += E;
    }
    for (int p = 0; p < policies; ++p) {
      pol_off.push_back(size);
      size += E;
    }
    accesses = size++;
  }
};

void CountsOf(const Layout& lay, const uint16_t* ids, const float* w, const float* probs, int64_t T,
              int k, uint64_t* out) {
  for (size_t i = 0; i < lay.ms.size(); ++i) {
    lrc::AddSrpHistogram(ids, T, k, lay.E, lay.ms[i], out + lay.srp_off[i]);
    lrc::AddSchRanks(ids, T, k, lay.E, lay.ms[i], out + lay.sch_off[i]);
  }
  for (int p = 0; p < lay.policies; ++p) {
    lrc::AddPolicyDepths(static_cast<Policy>(p), ids, w, probs, T, k, lay.E, out + lay.pol_off[p]);
  }
  out[lay.accesses] += static_cast<uint64_t>(T) * k;
}

// The ratios of one Counts vector. Values only (intervals are filled in by the caller).
void FiguresOf(const Layout& lay, const uint64_t* c, LrcFigures* f) {
  const size_t nm = lay.ms.size();
  f->srp.assign(nm, {});
  f->srp_threshold.assign(nm, 0);
  f->srp_set_size.assign(nm, 0);
  f->sch.assign(nm, std::vector<Estimate>(lay.E));
  f->policies.assign(lay.policies, std::vector<Estimate>(lay.E));
  const double acc = static_cast<double>(c[lay.accesses]);
  for (size_t i = 0; i < nm; ++i) {
    const lrc::SrpResult r = lrc::SrpFromHistogram(c + lay.srp_off[i], lay.ms[i], lay.E);
    f->srp[i].value = r.srp;
    f->srp_threshold[i] = r.threshold;
    f->srp_set_size[i] = r.set_size;
  }
  auto rates = [&](const uint64_t* stat, std::vector<Estimate>* out) {
    uint64_t hits = 0;
    for (int C = 1; C <= lay.E; ++C) {
      hits += stat[C - 1];
      (*out)[C - 1].value = acc > 0 ? hits / acc : std::numeric_limits<double>::quiet_NaN();
    }
  };
  for (size_t i = 0; i < nm; ++i) rates(c + lay.sch_off[i], &f->sch[i]);
  for (int p = 0; p < lay.policies; ++p) rates(c + lay.pol_off[p], &f->policies[p]);
}

// Flattens the figures' values into one vector (for the bootstrap), and back.
void Flatten(const LrcFigures& f, std::vector<double>* v) {
  v->clear();
  for (const Estimate& e : f.srp) v->push_back(e.value);
  for (const auto& row : f.sch) {
    for (const Estimate& e : row) v->push_back(e.value);
  }
  for (const auto& row : f.policies) {
    for (const Estimate& e : row) v->push_back(e.value);
  }
}
void SetIntervals(const std::vector<double>& lo, const std::vector<double>& hi, LrcFigures* f) {
  size_t i = 0;
  auto set = [&](Estimate& e) {
    e.lo = lo[i];
    e.hi = hi[i];
    ++i;
  };
  for (Estimate& e : f->srp) set(e);
  for (auto& row : f->sch) {
    for (Estimate& e : row) set(e);
  }
  for (auto& row : f->policies) {
    for (Estimate& e : row) set(e);
  }
}
void NoIntervals(LrcFigures* f) {
  auto set = [](Estimate& e) { e.lo = e.hi = e.value; };
  for (Estimate& e : f->srp) set(e);
  for (auto& row : f->sch) {
    for (Estimate& e : row) set(e);
  }
  for (auto& row : f->policies) {
    for (Estimate& e : row) set(e);
  }
}

// Load, reuse and next-layer co-activation of one layer.
void LoadStats(const Trace& tr, int layer, LrcFigures* f) {
  const TraceHeader& h = tr.header;
  const int E = h.num_experts, k = h.top_k, L = h.num_layers;
  std::vector<uint64_t> load(E, 0);
  const bool next = layer + 1 < L;
  std::vector<uint32_t> co(next ? static_cast<size_t>(E) * E : 0, 0);
  uint64_t shared = 0, pairs = 0;
  for (int64_t s = 0; s < tr.sequences(); ++s) {
    for (int64_t t = tr.seq_start[s]; t < tr.seq_start[s + 1]; ++t) {
      const uint16_t* cur = &tr.experts[(t * L + layer) * k];
      for (int j = 0; j < k; ++j) ++load[cur[j]];
      if (t > tr.seq_start[s]) {
        const uint16_t* prev = &tr.experts[((t - 1) * L + layer) * k];
        for (int j = 0; j < k; ++j) {
          for (int i = 0; i < k; ++i) shared += cur[j] == prev[i];
        }
        ++pairs;
      }
      if (next) {
        const uint16_t* nx = &tr.experts[(t * L + layer + 1) * k];
        for (int j = 0; j < k; ++j) {
          for (int i = 0; i < k; ++i) ++co[static_cast<size_t>(cur[j]) * E + nx[i]];
        }
      }
    }
  }
  const double total = std::accumulate(load.begin(), load.end(), 0.0);
  f->load.resize(E);
  double mx = 0, ent = 0;
  for (int e = 0; e < E; ++e) {
    const double p = total > 0 ? load[e] / total : 0;
    f->load[e] = p;
    mx = std::max(mx, p);
    if (p > 0) ent -= p * std::log2(p);
  }
  f->load_max_over_mean = mx * E;
  f->load_entropy_bits = ent;
  f->load_entropy_norm = E > 1 ? ent / std::log2(E) : 1.0;
  f->reuse_prev_token = pairs > 0 ? shared / (static_cast<double>(pairs) * k) : 0;
  if (next) {
    double top = 0, all = 0;
    std::vector<uint32_t> row(E);
    for (int e = 0; e < E; ++e) {
      std::copy(co.begin() + static_cast<size_t>(e) * E,
                co.begin() + static_cast<size_t>(e + 1) * E, row.begin());
      std::partial_sort(row.begin(), row.begin() + k, row.end(), std::greater<uint32_t>());
      top += std::accumulate(row.begin(), row.begin() + k, 0.0);
      all += std::accumulate(row.begin(), row.end(), 0.0);
    }
    f->coactivation_topk_share = all > 0 ? top / all : 0;
  }
}

}  // namespace

absl::StatusOr<LrcReport> AnalyzeTrace(const Trace& tr, const LrcOptions& opt) {
  const TraceHeader& h = tr.header;
  if (tr.tokens() <= 0 || h.num_layers < 1 || h.top_k < 1 || h.num_experts < h.top_k) {
    return absl::InvalidArgumentError("empty trace");
  }
  if (tr.experts.size() != static_cast<size_t>(tr.tokens()) * h.num_layers * h.top_k) {
    return absl::InvalidArgumentError("trace: expert array does not match its shape");
  }
  if (!h.predictors.empty() && tr.predictions.size() != tr.PredictionIndex(tr.tokens(), 0, 1, 0)) {
    return absl::InvalidArgumentError("trace: prediction array does not match its shape");
  }
  for (int m : opt.segment_lengths) {
    if (m < 1 || m > (1 << 20)) {
      return absl::InvalidArgumentError(absl::StrCat("segment length ", m, " out of range"));
    }
  }
  const int E = h.num_experts, k = h.top_k, L = h.num_layers;
  const int64_t S = tr.sequences();
  const Layout lay(opt.segment_lengths, E, opt.policies);
  const bool keep_seq = opt.bootstrap > 0;
  // Counts per layer (pooled), and per (sequence, layer) when bootstrapping.
  std::vector<std::vector<uint64_t>> layer_counts(L, std::vector<uint64_t>(lay.size, 0));
  std::vector<uint64_t> seq_counts(keep_seq ? S * L * lay.size : 0, 0);

  LrcReport rep;
  rep.header = h;
  rep.tokens = tr.tokens();
  rep.sequences = S;
  rep.segment_lengths = opt.segment_lengths;
  rep.bootstrap = opt.bootstrap;
  rep.layers.resize(L);

  const bool has_w = h.has_weights && tr.weights.size() == tr.experts.size();
  const bool has_p = h.has_probs && tr.probs.size() == static_cast<size_t>(tr.tokens()) * L * E;
  tbb::task_arena arena(opt.threads > 0 ? opt.threads : tbb::task_arena::automatic);
  // Sequences outside, layers inside: a sequence's routing (token-major in the trace) is
  // transposed into layer-major order while it is in cache, instead of every layer
  // striding through the whole trace (that gather was a tenth of the time on a 1M-token
  // trace). Both loops are parallel, so one long sequence still uses every core; a long
  // sequence is transposed a group of layers at a time, so the copy stays within
  // kTransposeBytes. The counts are integer sums, so the order in which tasks add them
  // changes nothing.
  constexpr size_t kTransposeBytes = size_t{64} << 20;
  std::vector<std::mutex> layer_mu(L);
  ArenaExecute(arena, [&] {
    ParallelFor(int64_t{0}, S, [&](int64_t s) {
      const int64_t t0 = tr.seq_start[s], T = tr.seq_start[s + 1] - t0;
      if (T == 0) return;  // an empty sequence counts nothing (found by fuzz_trace)
      const size_t layer_bytes = static_cast<size_t>(T) * k * (2 + (has_w ? 4 : 0));
      const int group = static_cast<int>(
          std::clamp<size_t>(kTransposeBytes / std::max<size_t>(layer_bytes, 1), 1, L));
      std::vector<uint16_t> ids(static_cast<size_t>(group) * T * k);
      std::vector<float> w(has_w ? ids.size() : 0);
      for (int l0 = 0; l0 < L; l0 += group) {
        const int g = std::min(group, L - l0);
        for (int64_t t = 0; t < T; ++t) {
          for (int l = 0; l < g; ++l) {
            const size_t cell = static_cast<size_t>(t0 + t) * L + l0 + l;
            const size_t dst = (static_cast<size_t>(l) * T + t) * k;
            std::copy_n(&tr.experts[cell * k], k, &ids[dst]);
            if (has_w) std::copy_n(&tr.weights[cell * k], k, &w[dst]);
          }
        }
        ParallelFor(0, g, [&](int gl) {
          const int l = l0 + gl;
          std::vector<float> p(has_p ? static_cast<size_t>(T) * E : 0);
          for (int64_t t = 0; has_p && t < T; ++t) {
            std::copy_n(&tr.probs[(static_cast<size_t>(t0 + t) * L + l) * E], E, &p[t * E]);
          }
          std::vector<uint64_t> local(lay.size, 0);
          const size_t off = static_cast<size_t>(gl) * T * k;
          CountsOf(lay, &ids[off], has_w ? &w[off] : nullptr, has_p ? p.data() : nullptr, T, k,
                   local.data());
          if (keep_seq) {
            std::copy(local.begin(), local.end(), &seq_counts[(s * L + l) * lay.size]);
          }
          std::lock_guard<std::mutex> lock(layer_mu[l]);
          for (size_t i = 0; i < lay.size; ++i) layer_counts[l][i] += local[i];
        });
      }
    });
    ParallelFor(0, L, [&](int l) {
      rep.layers[l].layer = l;
      FiguresOf(lay, layer_counts[l].data(), &rep.layers[l]);
      LoadStats(tr, l, &rep.layers[l]);
    });
  });

  if (opt.predictors)
    ArenaExecute(arena, [&] { lrc::ScorePredictors(tr, &rep.layers, &rep.model); });
  if (!opt.group_sizes.empty()) {
    absl::StatusOr<std::vector<TokenGroupingFigures>> g;
    ArenaExecute(arena, [&] { g = lrc::TokenGrouping(tr, opt); });
    if (!g.ok()) return g.status();
    rep.token_grouping = *std::move(g);
  }

  std::vector<uint64_t> model(lay.size, 0);
  for (int l = 0; l < L; ++l) {
    for (size_t i = 0; i < lay.size; ++i) model[i] += layer_counts[l][i];
  }
  FiguresOf(lay, model.data(), &rep.model);
  // Model-level load statistics: means over layers.
  for (const LrcFigures& f : rep.layers) {
    rep.model.load_max_over_mean += f.load_max_over_mean / L;
    rep.model.load_entropy_bits += f.load_entropy_bits / L;
    rep.model.load_entropy_norm += f.load_entropy_norm / L;
    rep.model.reuse_prev_token += f.reuse_prev_token / L;
  }
  if (L > 1) {
    rep.model.coactivation_topk_share = 0;
    for (int l = 0; l + 1 < L; ++l) {
      rep.model.coactivation_topk_share += rep.layers[l].coactivation_topk_share / (L - 1);
    }
  }

  if (!keep_seq) {
    NoIntervals(&rep.model);
    for (LrcFigures& f : rep.layers) NoIntervals(&f);
    return rep;
  }
  // Bootstrap over sequences (the paper resamples its samples): B replicates, each S
  // sequences drawn with replacement; the basic interval [2v - q97.5, 2v - q2.5].
  const int B = opt.bootstrap;
  std::mt19937_64 rng(opt.seed);
  std::uniform_int_distribution<int64_t> pick(0, S - 1);
  std::vector<std::vector<int64_t>> draws(B, std::vector<int64_t>(S));
  for (auto& d : draws) {
    for (int64_t& x : d) x = pick(rng);
  }
  // [figure set: layers then model][replicate][value]
  std::vector<std::vector<std::vector<double>>> reps(L + 1, std::vector<std::vector<double>>(B));
  ArenaExecute(arena, [&] {
    ParallelFor(0, B, [&](int b) {
      std::vector<uint64_t> lc(lay.size), mc(lay.size, 0);
      LrcFigures f;
      for (int l = 0; l < L; ++l) {
        std::fill(lc.begin(), lc.end(), 0);
        for (int64_t s : draws[b]) {
          const uint64_t* c = &seq_counts[(s * L + l) * lay.size];
          for (size_t i = 0; i < lay.size; ++i) lc[i] += c[i];
        }
        for (size_t i = 0; i < lay.size; ++i) mc[i] += lc[i];
        FiguresOf(lay, lc.data(), &f);
        Flatten(f, &reps[l][b]);
      }
      FiguresOf(lay, mc.data(), &f);
      Flatten(f, &reps[L][b]);
    });
  });
  const int lo_i = std::clamp(static_cast<int>(std::lround(B * 0.025)), 0, B - 1);
  const int hi_i = B - 1 - lo_i;
  for (int g = 0; g <= L; ++g) {
    LrcFigures& f = g < L ? rep.layers[g] : rep.model;
    std::vector<double> v;
    Flatten(f, &v);
    std::vector<double> lo(v.size()), hi(v.size()), col(B);
    for (size_t i = 0; i < v.size(); ++i) {
      for (int b = 0; b < B; ++b) col[b] = reps[g][b][i];
      std::sort(col.begin(), col.end());
      lo[i] = std::max(0.0, 2 * v[i] - col[hi_i]);
      hi[i] = std::min(1.0, 2 * v[i] - col[lo_i]);
    }
    SetIntervals(lo, hi, &f);
  }
  return rep;
}

}  // namespace moex
