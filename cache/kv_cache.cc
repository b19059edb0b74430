#include "cache/kv_cache.h"

#include <algorithm>
#include <atomic>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "cache/kv_q2.h"
#include "kernels_cpu/ops.h"
#include "kernels_cpu/parallel.h"

namespace moex {

using kcpu::GgmlType;

namespace {

// A row of `type` as floats: f32 rows in place, others decoded into buf.
const float* DecodeRow(GgmlType type, const uint8_t* r, float* buf, int64_t hd) {
  if (type == GgmlType::kF32) return reinterpret_cast<const float*>(r);
  kcpu::DequantizeRow(type, r, buf, hd);
  return buf;
}

}  // namespace

absl::StatusOr<GgmlType> ParseKvType(std::string_view name) {
  if (name == "f32") return GgmlType::kF32;
  if (name == "f16") return GgmlType::kF16;
  if (name == "bf16") return GgmlType::kBF16;
  if (name == "q8") return GgmlType::kQ8_0;
  if (name == "q4") return GgmlType::kQ4_1;
  if (name == "q4kivi") return kKvQ4Kivi;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown KV type '", std::string(name), "' (f32, f16, bf16, q8, q4, q4kivi)"));
}

const char* KvTypeName(GgmlType type) {
  if (type == kKvQ4Kivi) return "q4kivi";  // our own tag, outside the GGML enumeration
  switch (type) {
    case GgmlType::kF16:
      return "f16";
    case GgmlType::kBF16:
      return "bf16";
    case GgmlType::kQ8_0:
      return "q8";
    case GgmlType::kQ4_1:
      return "q4";
    default:
      return "f32";
  }
}

KvCache::KvCache(const Options& o) : o_(o) {}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const Options& o) {
  if (o.n_layer <= 0 || o.n_ctx <= 0 || o.n_head_kv <= 0 || o.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: bad shape layers=", o.n_layer,
                                                   " ctx=", o.n_ctx, " kv heads=", o.n_head_kv,
                                                   " head dim=", o.head_dim));
  }
  const bool kivi = o.type == kKvQ4Kivi;
  const kcpu::TypeTraits& tt = kcpu::GetTypeTraits(kivi ? GgmlType::kQ4_1 : o.type);
  if (o.head_dim % tt.block_elems != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV type ", KvTypeName(o.type), " stores blocks of ", tt.block_elems,
                     " values, which do not divide the head dimension ", o.head_dim, "; use f16"));
  }
  std::unique_ptr<KvCache> c(new KvCache(o));
  c->kivi_ = kivi;
  c->row_type_ = tt.type;
  c->row_bytes_ = kcpu::RowBytes(tt, o.head_dim);
  // A group: kKiviGroup rows of 4-bit codes, then an f16 scale and minimum per channel.
  c->group_bytes_ = kKiviGroup * o.head_dim / 2 + 2 * o.head_dim * 2;
  c->budget_ = o.policy.BudgetFor(o.n_ctx);
  c->policy_ = MakeKvPolicy(o.policy);
  c->high_budget_ = c->budget_;
  if (c->policy_->demotes()) {
    if (kivi) {
      return absl::InvalidArgumentError(absl::StrCat(
          "KV policy ", o.policy.ToString(), " demotes rows to q4, which q4kivi rows already are"));
    }
    c->low_bits_ = static_cast<int>(o.policy.bits);
    if (c->low_bits_ == 2) {
      c->low_row_bytes_ = o.head_dim % kQ2Group == 0 ? Q2RowBytes(o.head_dim) : 0;
    } else {
      const kcpu::TypeTraits& lt = kcpu::GetTypeTraits(c->LowType());
      c->low_row_bytes_ = o.head_dim % lt.block_elems == 0 ? kcpu::RowBytes(lt, o.head_dim) : 0;
    }
    if (c->low_row_bytes_ == 0 || c->low_row_bytes_ >= c->row_bytes_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "KV policy ", o.policy.ToString(), ": its q", c->low_bits_, " rows of ", o.head_dim,
          " values are no smaller than the cache's ", KvTypeName(o.type),
          " rows (or do not fit the head dimension); use f16 rows, or bits=4 with q8 rows"));
    }
    c->high_budget_ = std::clamp<int64_t>(std::llround(c->budget_ * o.policy.hi), 1, c->budget_);
    c->low_budget_ = (c->budget_ - c->high_budget_) * c->row_bytes_ / c->low_row_bytes_;
  }
  // A row of a store is one position's bytes in it (a key plane and a value plane), so a
  // page holds kKvPageTokens positions; a q4kivi group is kKiviGroup positions already, a
  // page of its own.
  c->bytes_left_ = o.max_bytes;
  std::atomic<int64_t>* left = o.max_bytes > 0 ? &c->bytes_left_ : nullptr;
  constexpr int kTokens = static_cast<int>(kKvPageTokens);
  c->row_pages_ = std::make_unique<KvPagePool>(c->row_bytes_, kTokens, kivi ? 1 : 2, left);
  c->low_pages_ = std::make_unique<KvPagePool>(c->low_row_bytes_, kTokens, 2, left);
  c->group_pages_ = std::make_unique<KvPagePool>(c->group_bytes_, 1, 1, left);
  c->residual_pages_ = std::make_unique<KvPagePool>(o.head_dim * 2, kTokens, 1, left);
  c->heads_.resize(o.n_layer * o.n_head_kv);
  for (Head& s : c->heads_) c->BindRows(s);
  c->ResetSplit();
  return c;
}

void KvCache::BindRows(Head& s) {
  s.rows = KvRows(row_pages_.get());
  s.low_rows = KvRows(low_pages_.get());
  s.groups = KvRows(group_pages_.get());
  s.residual = KvRows(residual_pages_.get());
}

absl::Status KvCache::Reserve(int64_t n_new) const {
  if (n_past_ + n_new > o_.n_ctx) {
    return absl::OutOfRangeError(
        absl::StrCat("context overflow: ", n_past_, " tokens in the cache + ", n_new,
                     " new > context size ", o_.n_ctx, " (raise it with -c)"));
  }
  return absl::OkStatus();
}

absl::Status KvCache::Append(int64_t layer, int64_t pos0, int64_t n, const float* k,
                             const float* v) {
  const int64_t hd = o_.head_dim, kv_dim = o_.n_head_kv * hd;
  for (int64_t h = 0; h < o_.n_head_kv; ++h) {
    Head& s = head(layer, h);
    const int64_t before = HeadBytes(s);
    for (int64_t t = 0; t < n; ++t) {
      const int32_t slot = NewRow(s.rows);
      const float* kt = k + t * kv_dim + h * hd;
      if (slot < 0 || (kivi_ && !AppendKiviKey(s, kt))) {
        if (slot >= 0) s.rows.PopBack();
        bytes_ += HeadBytes(s) - before;
        peak_bytes_ = std::max(peak_bytes_, bytes_);
        return OutOfMemory(layer, h);
      }
      if (!kivi_) kcpu::QuantizeRow(row_type_, kt, s.rows.row(slot, 0), hd);
      kcpu::QuantizeRow(row_type_, v + t * kv_dim + h * hd, s.rows.row(slot, VPlane()), hd);
      s.slot.push_back(slot);
      s.pos.push_back(pos0 + t);
      s.acc.push_back(0.0f);
      s.last.push_back(0.0f);
      s.low.push_back(0);
    }
    // Without memory for a group the keys wait in f16, exact; the next append that needs
    // a page reports the shortage.
    while (s.residual.size() >= kKiviGroup && FormKiviGroup(s)) {
    }
    bytes_ += HeadBytes(s) - before;
  }
  peak_bytes_ = std::max(peak_bytes_, bytes_);
  return absl::OkStatus();
}

int32_t KvCache::NewRow(KvRows& rows) {
  int32_t r = rows.Append();
  if (r < 0 && o_.max_bytes > 0) {
    // Under a byte limit, pages waiting in the other stores' pools (emptied by eviction,
    // demotion or grouping) are freed first, their bytes back to the limit.
    for (KvPagePool* p : Pools()) p->Trim();
    r = rows.Append();
  }
  return r;
}

absl::Status KvCache::OutOfMemory(int64_t layer, int64_t h) const {
  return absl::ResourceExhaustedError(absl::StrCat(
      "KV cache: no memory for another page of layer ", layer, " KV head ", h, " (",
      allocated_bytes(), " bytes of pages held",
      o_.max_bytes > 0 ? absl::StrCat(", limit ", o_.max_bytes) : std::string(),
      "); use a smaller context (-c), --kv-type q8 or q4, or a KV policy with a budget"));
}

bool KvCache::AppendKiviKey(Head& s, const float* k) {
  const int32_t r = NewRow(s.residual);
  if (r < 0) return false;
  uint16_t* dst = reinterpret_cast<uint16_t*>(s.residual.row(r));
  for (int64_t c = 0; c < o_.head_dim; ++c) dst[c] = kcpu::FloatToHalf(k[c]);
  s.kslot.push_back(-1 - r);
  return true;
}

bool KvCache::FormKiviGroup(Head& s) {
  const int64_t hd = o_.head_dim;
  const int32_t g = NewRow(s.groups);
  if (g < 0) return false;
  s.group_live.push_back(0);
  // The oldest residual keys, in position order.
  std::vector<int32_t>& members = s.tmp;
  members.clear();
  for (int32_t i = 0; i < static_cast<int32_t>(s.kslot.size()) && members.size() < kKiviGroup;
       ++i) {
    if (s.kslot[i] < 0) members.push_back(i);
  }
  auto res = [&](int32_t i) {
    return reinterpret_cast<const uint16_t*>(s.residual.row(-1 - s.kslot[i]));
  };
  uint8_t* base = s.groups.row(g);
  uint16_t* scale = reinterpret_cast<uint16_t*>(base + kKiviGroup * hd / 2);
  uint16_t* minimum = scale + hd;
  std::fill(base, base + kKiviGroup * hd / 2, 0);
  for (int64_t c = 0; c < hd; ++c) {
    float lo = INFINITY, hi = -INFINITY;
    for (int32_t i : members) {
      const float x = kcpu::HalfToFloat(res(i)[c]);
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
    // Codes are computed against the stored (f16-rounded) scale and minimum, so that the
    // rounding of those adds no error beyond half a step.
    scale[c] = kcpu::FloatToHalf((hi - lo) / 15.0f);
    minimum[c] = kcpu::FloatToHalf(lo);
    const float d = kcpu::HalfToFloat(scale[c]), m = kcpu::HalfToFloat(minimum[c]);
    const float id = d > 0 ? 1.0f / d : 0.0f;
    for (int64_t j = 0; j < static_cast<int64_t>(members.size()); ++j) {
      const float x = kcpu::HalfToFloat(res(members[j])[c]);
      const int code = std::clamp(static_cast<int>(std::lround((x - m) * id)), 0, 15);
      base[j * hd / 2 + c / 2] |= static_cast<uint8_t>(code << (c % 2 ? 4 : 0));
    }
  }
  s.dead_residual.assign(s.residual.size(), 0);
  for (int64_t j = 0; j < static_cast<int64_t>(members.size()); ++j) {
    int32_t& ks = s.kslot[members[j]];
    s.dead_residual[-1 - ks] = 1;
    ks = g * kKiviGroup + static_cast<int32_t>(j);
  }
  s.group_live[g] = static_cast<int32_t>(members.size());
  FreeRows(s);
  return true;
}

const float* KvCache::ReadKiviKey(const Head& s, int64_t i, float* buf) const {
  const int64_t hd = o_.head_dim;
  const int32_t ks = s.kslot[i];
  if (ks < 0) {
    const uint16_t* r = reinterpret_cast<const uint16_t*>(s.residual.row(-1 - ks));
    for (int64_t c = 0; c < hd; ++c) buf[c] = kcpu::HalfToFloat(r[c]);
    return buf;
  }
  const uint8_t* base = s.groups.row(ks / kKiviGroup);
  const uint8_t* codes = base + (ks % kKiviGroup) * hd / 2;
  const uint16_t* scale = reinterpret_cast<const uint16_t*>(base + kKiviGroup * hd / 2);
  const uint16_t* minimum = scale + hd;
  for (int64_t c = 0; c < hd; ++c) {
    const int code = (codes[c / 2] >> (c % 2 ? 4 : 0)) & 15;
    buf[c] = code * kcpu::HalfToFloat(scale[c]) + kcpu::HalfToFloat(minimum[c]);
  }
  return buf;
}

int64_t KvCache::HeadBytes(const Head& s) const {
  const int64_t n = static_cast<int64_t>(s.slot.size());
  if (kivi_) {
    return n * row_bytes_ + int64_t{s.groups.size()} * group_bytes_ +
           int64_t{s.residual.size()} * o_.head_dim * 2;
  }
  return 2 * ((n - s.n_low) * row_bytes_ + s.n_low * low_row_bytes_);
}

void KvCache::Release(Head& s, int64_t i) {
  std::vector<uint8_t>& dead = s.low[i] ? s.dead_low : s.dead;
  dead.resize((s.low[i] ? s.low_rows : s.rows).size(), 0);
  dead[s.slot[i]] = 1;
  s.n_low -= s.low[i];
  if (!kivi_) return;
  const int32_t ks = s.kslot[i];
  if (ks < 0) {
    s.dead_residual.resize(s.residual.size(), 0);
    s.dead_residual[-1 - ks] = 1;
  } else if (--s.group_live[ks / kKiviGroup] == 0) {
    s.dead_groups.resize(s.groups.size(), 0);
    s.dead_groups[ks / kKiviGroup] = 1;
  }
}

void KvCache::FreeRows(Head& s) {
  // Frees the flagged rows of one store; returns the remap, or null when none was flagged.
  auto remove = [&](KvRows& rows, std::vector<uint8_t>& dead) -> const std::vector<int32_t>* {
    dead.resize(rows.size(), 0);
    const bool any = std::find(dead.begin(), dead.end(), 1) != dead.end();
    if (any) rows.Remove(dead, &s.remap);
    dead.clear();
    return any ? &s.remap : nullptr;
  };
  const int64_t n = static_cast<int64_t>(s.slot.size());
  for (const bool low : {false, true}) {
    if (const std::vector<int32_t>* m =
            remove(low ? s.low_rows : s.rows, low ? s.dead_low : s.dead)) {
      for (int64_t i = 0; i < n; ++i) {
        if (s.low[i] == low) s.slot[i] = (*m)[s.slot[i]];
      }
    }
  }
  if (!kivi_) return;
  if (const std::vector<int32_t>* m = remove(s.residual, s.dead_residual)) {
    for (int32_t& ks : s.kslot) {
      if (ks < 0) ks = -1 - (*m)[-1 - ks];
    }
  }
  if (const std::vector<int32_t>* m = remove(s.groups, s.dead_groups)) {
    for (int32_t& ks : s.kslot) {
      if (ks >= 0) ks = (*m)[ks / kKiviGroup] * kKiviGroup + ks % kKiviGroup;
    }
    s.tmp.assign(s.groups.size(), 0);
    for (size_t g = 0; g < m->size(); ++g) {
      if ((*m)[g] >= 0) s.tmp[(*m)[g]] = s.group_live[g];
    }
    s.group_live.swap(s.tmp);
  }
}

void KvCache::DropEntries(Head& s, const uint8_t* drop, int64_t keep) {
  const int64_t n = static_cast<int64_t>(s.slot.size());
  int64_t w = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (drop != nullptr ? drop[i] != 0 : i >= keep) {
      Release(s, i);
      continue;
    }
    if (kivi_) s.kslot[w] = s.kslot[i];
    s.slot[w] = s.slot[i];
    s.pos[w] = s.pos[i];
    s.acc[w] = s.acc[i];
    s.last[w] = s.last[i];
    s.low[w] = s.low[i];
    ++w;
  }
  s.slot.resize(w);
  s.pos.resize(w);
  s.acc.resize(w);
  s.last.resize(w);
  s.low.resize(w);
  if (kivi_) s.kslot.resize(w);
  FreeRows(s);
}

const float* KvCache::ReadRow(const Head& s, bool key, int64_t i, float* buf) const {
  const int64_t hd = o_.head_dim;
  if (key && kivi_) return ReadKiviKey(s, i, buf);
  if (s.low[i]) {
    const uint8_t* r = s.low_rows.row(s.slot[i], key ? 0 : 1);
    if (low_bits_ == 2) {
      DequantizeRowQ2(r, buf, hd);
    } else {
      kcpu::DequantizeRow(LowType(), r, buf, hd);
    }
    return buf;
  }
  return DecodeRow(row_type_, s.rows.row(s.slot[i], key ? 0 : VPlane()), buf, hd);
}

void KvCache::AttendHead(Head& s, int64_t kvh, const float* q, int64_t n, int64_t pos0,
                         int64_t n_head, float scale, bool track_sq, float* out) {
  const int64_t hd = o_.head_dim, group = n_head / o_.n_head_kv, q_stride = n_head * hd;
  const int64_t m = static_cast<int64_t>(s.slot.size());
  // Rows are read in place and dequantised one at a time into an L1-sized buffer, never
  // as a copy of the cache. Queries go in tiles so that each row, once decoded, serves
  // every query of the tile (all of them in decode) and the score matrix stays small.
  constexpr int64_t kTile = 32;
  const int64_t tile = std::min(kTile, n);
  // Per-thread scratch, grown once, so decode allocates nothing here. Nothing below can
  // run other TBB work on this thread (no parallel calls), so no nested AttendHead can
  // take these buffers while they are in use. Score tiles beyond 4 MiB (a long prefill)
  // are allocated per call instead, so no worker keeps that much for the session.
  thread_local std::vector<float> row, tls_scores;
  thread_local std::vector<int64_t> visible;
  std::vector<float> big_scores;
  if (row.size() < static_cast<size_t>(hd)) row.resize(hd);
  if (visible.size() < static_cast<size_t>(tile)) visible.resize(tile);
  const size_t n_scores = static_cast<size_t>(tile * group * m);
  std::vector<float>& score_buf = n_scores <= (size_t{1} << 20) ? tls_scores : big_scores;
  if (score_buf.size() < n_scores) score_buf.resize(n_scores);
  float* const scores = score_buf.data();
  std::fill(s.last.begin(), s.last.end(), 0.0f);
  if (track_sq) s.last_sq.assign(m, 0.0f);
  // Rows of one type in one store (no mikv tier, no q4kivi keys) are read here directly;
  // the general ReadRow costs a tenth of a short row's attention in calls and reloads.
  const bool plain = !kivi_ && s.n_low == 0;
  const KvRows::Plane keys = s.rows.plane(0), values = s.rows.plane(VPlane());
  const int32_t* const slot = s.slot.data();
  const GgmlType type = row_type_;
  float* const buf = row.data();
  for (int64_t t0 = 0; t0 < n; t0 += tile) {
    const int64_t nt = std::min(tile, n - t0);
    // Entries are in position order, so each query's causal mask keeps a prefix.
    int64_t max_visible = 0;
    for (int64_t t = 0; t < nt; ++t) {
      visible[t] = std::upper_bound(s.pos.begin(), s.pos.end(), pos0 + t0 + t) - s.pos.begin();
      max_visible = std::max(max_visible, visible[t]);
    }
    for (int64_t i = 0; i < max_visible; ++i) {
      const float* k =
          plain ? DecodeRow(type, keys.row(slot[i]), buf, hd) : ReadRow(s, true, i, row.data());
      for (int64_t t = 0; t < nt; ++t) {
        if (i >= visible[t]) continue;
        for (int64_t g = 0; g < group; ++g) {
          const float* qh = q + (t0 + t) * q_stride + (kvh * group + g) * hd;
          scores[(t * group + g) * m + i] = kcpu::Dot(qh, k, hd) * scale;
        }
      }
    }
    for (int64_t t = 0; t < nt; ++t) {
      for (int64_t g = 0; g < group; ++g) {
        kcpu::Softmax(scores + (t * group + g) * m, visible[t]);
        float* oh = out + (t0 + t) * q_stride + (kvh * group + g) * hd;
        std::fill(oh, oh + hd, 0.0f);
      }
    }
    for (int64_t i = 0; i < max_visible; ++i) {
      const float* v =
          plain ? DecodeRow(type, values.row(slot[i]), buf, hd) : ReadRow(s, false, i, row.data());
      for (int64_t t = 0; t < nt; ++t) {
        if (i >= visible[t]) continue;
        for (int64_t g = 0; g < group; ++g) {
          const float p = scores[(t * group + g) * m + i];
          kcpu::Axpy(p, v, out + (t0 + t) * q_stride + (kvh * group + g) * hd, hd);
          s.acc[i] += p;
          s.last[i] += p;
          if (track_sq) s.last_sq[i] += p * p;
        }
      }
    }
  }
}

void KvCache::Attend(int64_t layer, const float* q, int64_t n, int64_t pos0, int64_t n_head,
                     float scale, float* out) {
  // cake, before its split: the batch that takes the layer past the mean budget measures
  // it, and compression waits for the last layer (see the header).
  const bool measuring = !measured_ && static_cast<int64_t>(head(layer, 0).slot.size()) > budget_;
  const bool compress = policy_->evicts() && measured_;
  std::atomic<int64_t> delta{0};
  ParallelFor(int64_t{0}, o_.n_head_kv, [&](int64_t h) {
    Head& s = head(layer, h);
    AttendHead(s, h, q, n, pos0, n_head, scale, measuring, out);
    if (compress) delta += Compress(s, layer_budget_[layer]);
  });
  bytes_ += delta.load();
  if (!measuring) return;
  const int64_t group = n_head / o_.n_head_kv;
  double pref = 0;
  for (int64_t h = 0; h < o_.n_head_kv; ++h) {
    const Head& s = head(layer, h);
    pref += CakePreference(s.last, s.last_sq, n * group, o_.policy.tau1, o_.policy.tau2);
  }
  preference_[layer] = pref / o_.n_head_kv;
  if (layer == o_.n_layer - 1) SplitBudgets();
}

void KvCache::SplitBudgets() {
  layer_budget_ = LayerBudgets(o_.policy, o_.n_layer, o_.n_ctx, preference_);
  measured_ = true;
  std::atomic<int64_t> delta{0};
  ParallelFor(int64_t{0}, o_.n_layer * o_.n_head_kv, [&](int64_t i) {
    Head& s = heads_[i];
    s.last_sq = {};
    delta += Compress(s, layer_budget_[i / o_.n_head_kv]);
  });
  bytes_ += delta.load();
}

void KvCache::ResetSplit() {
  measured_ = o_.policy.name != "cake" || !policy_->evicts();
  preference_.assign(o_.n_layer, 0.0);
  layer_budget_ = LayerBudgets(o_.policy, o_.n_layer, o_.n_ctx, {});
}

int64_t KvCache::Compress(Head& s, int64_t budget) {
  const int64_t n = static_cast<int64_t>(s.slot.size());
  std::vector<int32_t> evict, demote;
  const KvHeadView view{s.pos, s.acc, s.last, s.low};
  if (policy_->demotes()) {
    if (n - s.n_low <= high_budget_ && s.n_low <= low_budget_) return 0;
    policy_->SelectTiers(view, high_budget_, low_budget_, &evict, &demote);
  } else {
    if (n <= budget) return 0;
    policy_->SelectEvictions(view, budget, &evict);
  }
  const int64_t before = HeadBytes(s);
  std::vector<uint8_t> drop(n, 0);
  for (int32_t i : evict) drop[i] = 1;
  if (!demote.empty()) {
    // Without memory for a low-precision row the entry is dropped instead: the cache
    // stays within its budget and attention goes on.
    std::vector<float> buf(o_.head_dim);
    for (int32_t i : demote) {
      if (!Demote(s, i, buf.data())) drop[i] = 1;
    }
  }
  DropEntries(s, drop.data(), 0);
  return HeadBytes(s) - before;
}

bool KvCache::Demote(Head& s, int64_t i, float* buf) {
  const int64_t hd = o_.head_dim;
  const int32_t slot = NewRow(s.low_rows);
  if (slot < 0) return false;
  for (bool key : {true, false}) {
    const float* x = ReadRow(s, key, i, buf);
    uint8_t* dst = s.low_rows.row(slot, key ? 0 : 1);
    if (low_bits_ == 2) {
      QuantizeRowQ2(x, dst, hd);
    } else {
      kcpu::QuantizeRow(LowType(), x, dst, hd);
    }
  }
  // The full-precision row is freed with the evictions that follow (FreeRows).
  s.dead.resize(s.rows.size(), 0);
  s.dead[s.slot[i]] = 1;
  s.slot[i] = slot;
  s.low[i] = 1;
  ++s.n_low;
  return true;
}

void KvCache::Clear() {
  // Pages go back to the pools, for the next conversation to take.
  for (Head& s : heads_) {
    s = Head{};
    BindRows(s);
  }
  n_past_ = 0;
  bytes_ = 0;
  peak_bytes_ = 0;
  ResetSplit();
}

void KvCache::Truncate(int64_t n) {
  // n == n_past_ still drops what a failed step appended beyond it.
  if (n < 0 || n > n_past_) return;
  const bool undo = n == n_past_;
  for (Head& s : heads_) {
    const size_t keep = std::lower_bound(s.pos.begin(), s.pos.end(), n) - s.pos.begin();
    const int64_t before = HeadBytes(s);
    DropEntries(s, nullptr, static_cast<int64_t>(keep));
    bytes_ += HeadBytes(s) - before;
  }
  n_past_ = n;
  // Back to where cake had not measured: the next batch past the mean measures again. A
  // failed step's undo keeps a split it already made (its layers were compressed to it).
  if (!measured_ || (!undo && n <= budget_)) ResetSplit();
}

int64_t KvCache::allocated_bytes() const {
  int64_t bytes = 0;
  for (const KvPagePool* p : Pools()) bytes += p->bytes();
  return bytes;
}

std::vector<int64_t> KvCache::KeptPositions(int64_t layer, int64_t h) const {
  return head(layer, h).pos;
}

std::vector<int64_t> KvCache::LowPositions(int64_t layer, int64_t h) const {
  const Head& s = head(layer, h);
  std::vector<int64_t> out;
  for (size_t i = 0; i < s.pos.size(); ++i) {
    if (s.low[i]) out.push_back(s.pos[i]);
  }
  return out;
}

void KvCache::ReadEntry(int64_t layer, int64_t h, int64_t i, float* k, float* v) const {
  const Head& s = head(layer, h);
  const int64_t hd = o_.head_dim;
  const float* kr = ReadRow(s, true, i, k);
  if (kr != k) std::copy(kr, kr + hd, k);
  const float* vr = ReadRow(s, false, i, v);
  if (vr != v) std::copy(vr, vr + hd, v);
}

}  // namespace moex
