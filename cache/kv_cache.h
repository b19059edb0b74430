// The KV cache of one sequence, with compression: the keys and values of every layer,
// KV head and kept position, stored in a chosen element type, and the attention that
// reads them.
//
// Storage is per (layer, KV head): paged blocks of kKvPageTokens positions (cache/kv_pages.h),
// one key row and one value row of head_dim values per position, taken from a page pool
// shared by the cache's heads as a head grows and handed back as eviction or truncation
// empties them, so resident memory follows the number of positions kept, not the context
// size, and a compressing cache in steady decode allocates no row storage. Rows
// are stored as f32, f16, bf16, q8 (Q8_0 blocks: int8 with one scale per 32 values) or
// q4 (Q4_1 blocks: 4 bits with a scale and a minimum per 32 values), quantised per token;
// attention dequantises kept rows on the fly, never a full copy of the cache.
//
// q4kivi (KIVI, Liu et al. 2024, arXiv 2402.02750) quantises keys per channel: each run of
// 32 keys in arrival order becomes a group with a 4-bit code per value and an f16 scale
// and minimum per channel, since keys have outlier channels that a per-token scale would
// spread over the whole row; values stay per token (Q4_1). Keys wait in f16 until 32 have
// arrived (KIVI's residual). Eviction leaves holes in a group: its bytes are released when
// its last member goes, and bytes() counts whole groups. Groups and residual keys are
// paged the same way, in stores of their own.
//
// After each batch of queries, Attend() hands every (layer, KV head) holding more than
// its layer's budget to the policy (cache/kv_policy.h), which picks what to evict from the
// attention statistics gathered here. Layer budgets are even, or PyramidKV's fixed slope,
// or CAKE's split: the batch that first takes the cache past the mean budget measures
// each layer's attention dispersion, and only after the last layer has attended it are
// the budgets set and every layer compressed (the queries of that batch have all been
// answered from the uncompressed cache, so deferring changes no output).
//
// mikv keeps a second pool per head, of q4 (or q8) rows: positions the policy demotes are
// re-quantised into it instead of dropped, and attention reads them there in place. The
// full-precision tier holds `hi` of the budget's rows and the low tier as many rows as the
// rest of the budget's bytes pays for, so the bytes never exceed those of `budget` rows. Keys are
// stored after RoPE, so kept positions keep their original positions. With the `full` policy and
// f32 rows the arithmetic is exactly that of a plain cache (kernels_cpu/attention.h), bit for bit.
//
// The context size bounds the positions of a sequence; appending past it is kOutOfRange,
// never a silent overwrite. Thread-safety: one sequence, one thread at a time (the
// Session's); Attend parallelises over heads internally.
#ifndef MOEX_CACHE_KV_CACHE_H_
#define MOEX_CACHE_KV_CACHE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/kv_pages.h"
#include "cache/kv_policy.h"
#include "kernels_cpu/quant.h"

namespace moex {

// The KV cache's own q4kivi layout (see above); not a ggml block type, so never passed to
// kcpu::GetTypeTraits.
inline constexpr kcpu::GgmlType kKvQ4Kivi = static_cast<kcpu::GgmlType>(0x4b495649);

// "f32", "f16", "bf16", "q8", "q4", "q4kivi" -> the type rows are stored in.
absl::StatusOr<kcpu::GgmlType> ParseKvType(std::string_view name);
const char* KvTypeName(kcpu::GgmlType type);

class KvCache {
 public:
  struct Options {
    int64_t n_layer = 0;
    int64_t n_ctx = 0;  // positions of the sequence
    int64_t n_head_kv = 0;
    int64_t head_dim = 0;
    kcpu::GgmlType type = kcpu::GgmlType::kF32;
    KvPolicyConfig policy;
    // The most bytes of pages the cache may hold (allocated_bytes()); 0: as memory allows.
    int64_t max_bytes = 0;
  };
  // Errors: kInvalidArgument for a bad shape, or a quantised type whose blocks do not
  // divide head_dim.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const Options& options);

  int64_t capacity() const { return o_.n_ctx; }
  int64_t size() const { return n_past_; }    // positions seen (kept or not)
  int64_t budget() const { return budget_; }  // the mean per-layer budget
  // The budget of `layer` (per KV head); for cake, budget() until the split is measured.
  int64_t LayerBudget(int64_t layer) const { return layer_budget_[layer]; }
  bool budgets_measured() const { return measured_; }
  const Options& options() const { return o_; }

  // Checks that n_new more positions fit in the context.
  absl::Status Reserve(int64_t n_new) const;
  // Stores the keys and values of n tokens at positions pos0.. for `layer`: k and v are
  // [n][n_head_kv * head_dim], keys after RoPE. kResourceExhausted, naming the layer, head
  // and bytes held, when a page cannot be had (max_bytes, or memory): the positions stored
  // before stay, and Truncate(pos0) takes them back out.
  absl::Status Append(int64_t layer, int64_t pos0, int64_t n, const float* k, const float* v);
  // Causal attention of n queries q[n][n_head * head_dim] at positions pos0.. over the
  // kept positions of `layer` (query head h reads KV head h / (n_head / n_head_kv));
  // writes out[n][n_head * head_dim]; then lets the policy bring each head within budget.
  void Attend(int64_t layer, const float* q, int64_t n, int64_t pos0, int64_t n_head, float scale,
              float* out);
  // Marks n positions as done (after every layer appended and attended them).
  void Advance(int64_t n) { n_past_ += n; }
  void Clear();
  // Forgets positions >= n (n <= size(); n == size() drops what a failed step appended:
  // its keys and values, not what the step's compression already evicted).
  void Truncate(int64_t n);

  // Bytes of the kept rows now, and the most there have been since creation or Clear.
  int64_t bytes() const { return bytes_; }
  int64_t peak_bytes() const { return peak_bytes_; }
  // Bytes of the pages the cache holds, in use or free for reuse: its memory, kept rows
  // rounded up to whole pages per head (at most kKvPageTokens - 1 rows more per head and
  // store), plus the pages emptied since then (kept for reuse until the cache goes).
  int64_t allocated_bytes() const;
  // Positions kept for (layer, KV head), in position order; and those of them held at low
  // precision (mikv).
  std::vector<int64_t> KeptPositions(int64_t layer, int64_t head) const;
  std::vector<int64_t> LowPositions(int64_t layer, int64_t head) const;
  // Decodes the key and value rows (head_dim values each) of the i-th kept entry of
  // (layer, KV head), as attention reads them.
  void ReadEntry(int64_t layer, int64_t head, int64_t i, float* k, float* v) const;
  // mikv: rows per head allowed at full and at low precision.
  int64_t high_budget() const { return high_budget_; }
  int64_t low_budget() const { return low_budget_; }

 private:
  struct Head {
    // Key and value row of each full-precision entry, in two planes (q4kivi: the value
    // only); mikv's demoted entries' rows; q4kivi's key groups of kKiviGroup positions and
    // the f16 keys still waiting for theirs. Paged (cache/kv_pages.h), rows dense.
    KvRows rows, low_rows, groups, residual;
    // Kept entries, in position order. slot: the entry's row in `rows`, or in `low_rows`
    // where low is 1 (mikv).
    std::vector<int32_t> slot;
    std::vector<int64_t> pos;
    std::vector<float> acc, last;
    std::vector<float> last_sq;  // cake's measuring batch only: sum of squared attention
    std::vector<uint8_t> low;
    int64_t n_low = 0;
    // q4kivi keys: per entry, g * kKiviGroup + j for token j of group g, or -1 - r for
    // row r of the residual; and the entries still in each group.
    std::vector<int32_t> kslot;
    std::vector<int32_t> group_live;
    // Rows to free at the next FreeRows, one flag per row of each store; and its scratch.
    std::vector<uint8_t> dead, dead_low, dead_groups, dead_residual;
    std::vector<int32_t> remap, tmp;
  };
  static constexpr int64_t kKiviGroup = 32;

  explicit KvCache(const Options& o);
  Head& head(int64_t layer, int64_t h) { return heads_[layer * o_.n_head_kv + h]; }
  const Head& head(int64_t layer, int64_t h) const { return heads_[layer * o_.n_head_kv + h]; }
  void AttendHead(Head& hd, int64_t kv_head, const float* q, int64_t n, int64_t pos0,
                  int64_t n_head, float scale, bool track_sq, float* out);
  // Brings a head within `budget` (mikv: within its two tiers); returns the change in
  // bytes.
  int64_t Compress(Head& hd, int64_t budget);
  // mikv: moves entry i to the low-precision pool (buf: head_dim floats of scratch).
  bool Demote(Head& hd, int64_t i, float* buf);  // false: no page for the low row
  // Decodes entry i's key (or value) row into buf, or points into the slot when it is
  // stored as f32.
  const float* ReadRow(const Head& hd, bool key, int64_t i, float* buf) const;
  int64_t HeadBytes(const Head& hd) const;
  // Gives a fresh head its four row stores on the cache's page pools.
  void BindRows(Head& hd);
  // Flags the rows of entry i (key included) to be freed; the entry itself stays until
  // the caller drops it from the entry arrays.
  void Release(Head& hd, int64_t i);
  // Frees the flagged rows (kv_pages.h: rows from the end fill the holes) and rewrites
  // the row indices of the entries that remain.
  void FreeRows(Head& hd);
  // Keeps the first `keep` entries, or those not flagged in `drop`; frees the rest.
  void DropEntries(Head& hd, const uint8_t* drop, int64_t keep);
  // q4kivi: stores a key in the residual; quantises the oldest kKiviGroup residual keys
  // into a group; decodes entry i's key.
  // False when no page can be had.
  bool AppendKiviKey(Head& hd, const float* k);
  bool FormKiviGroup(Head& hd);
  absl::Status OutOfMemory(int64_t layer, int64_t h) const;
  // A new row of one of hd's stores; -1 when no page can be had.
  int32_t NewRow(KvRows& rows);
  const float* ReadKiviKey(const Head& hd, int64_t i, float* buf) const;
  // cake: the last layer has attended the measuring batch; set every layer's budget.
  void SplitBudgets();
  void ResetSplit();

  Options o_;
  int64_t row_bytes_ = 0;
  bool kivi_ = false;
  kcpu::GgmlType row_type_ = kcpu::GgmlType::kF32;  // of Head::rows (kivi: values only)
  // The plane of the value rows in Head::rows (q4kivi keeps only values there).
  int VPlane() const { return kivi_ ? 0 : 1; }
  int64_t group_bytes_ = 0;  // kivi
  int64_t budget_ = 0;
  std::vector<int64_t> layer_budget_;
  // cake: whether the split is set, and each layer's measured preference until it is.
  bool measured_ = true;
  std::vector<double> preference_;
  std::unique_ptr<KvPolicy> policy_;
  // The pages of each row store, shared by every head (declared before heads_, which hand
  // their pages back when destroyed).
  std::atomic<int64_t> bytes_left_{0};  // of max_bytes, when set
  std::unique_ptr<KvPagePool> row_pages_, low_pages_, group_pages_, residual_pages_;
  std::array<KvPagePool*, 4> Pools() const {
    return {row_pages_.get(), low_pages_.get(), group_pages_.get(), residual_pages_.get()};
  }
  std::vector<Head> heads_;
  int64_t n_past_ = 0;
  // mikv's demoted rows: q8 (Q8_0), q4 (Q4_1) or q2 (cache/kv_q2.h).
  int low_bits_ = 4;
  kcpu::GgmlType LowType() const {
    return low_bits_ == 8 ? kcpu::GgmlType::kQ8_0 : kcpu::GgmlType::kQ4_1;
  }
  int64_t low_row_bytes_ = 0;
  int64_t high_budget_ = 0, low_budget_ = 0;
  int64_t bytes_ = 0, peak_bytes_ = 0;
};

}  // namespace moex

#endif  // MOEX_CACHE_KV_CACHE_H_
