// AnalyzeTrace: SRP, SCH, policy replay, load statistics and bootstrap intervals over a
// whole trace (include/moex/trace.h).
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
#include "moex/trace.h"
#include "runtime/trace/lrc_internal.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"
#include "tbb/task_arena.h"

namespace moex {
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
  arena.execute([&] {
    tbb::parallel_for(int64_t{0}, S, [&](int64_t s) {
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
        tbb::parallel_for(0, g, [&](int gl) {
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
    tbb::parallel_for(0, L, [&](int l) {
      rep.layers[l].layer = l;
      FiguresOf(lay, layer_counts[l].data(), &rep.layers[l]);
      LoadStats(tr, l, &rep.layers[l]);
    });
  });

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
  arena.execute([&] {
    tbb::parallel_for(0, B, [&](int b) {
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
