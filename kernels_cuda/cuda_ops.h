// CUDA kernels of the forward pass: quantised matrix products over GGUF blocks, the expert
// FFN of prefill, the small operators and causal GQA attention over a device KV layout.
// Plain C++ header: no CUDA type leaks out (a stream is a cudaStream_t passed as void*;
// nullptr is the legacy default stream).
//
// Conventions, shared by every function here:
//  - Pointers named d_* or documented as "device" are device memory; scalars and shapes
//    are host values. Activations are F32, row-major, rows packed (stride = width).
//  - Work is queued on `stream` and not waited for; the caller synchronises.
//  - Each function checks its shapes and every CUDA call and launch, and returns an error
//    message naming the kernel and the shape ("" = queued fine). A launch error can also
//    surface at the caller's next synchronisation (CUDA reports faults asynchronously).
//  - Weight matrices are `rows` rows of `cols` values of a GGUF type, each row
//    kcpu::RowBytes(type, cols) bytes after the previous one, blocks exactly as
//    kernels_cpu/blocks.h (ggml-common.h). Supported weight types: kWeightTypes below.
//  - Results match the kernels_cpu references computed on the dequantised weights in
//    exact arithmetic to F32 rounding: the kernels dequantise in registers with the same
//    expression order as kernels_cpu/quant.cc (so a dequantised weight is bit-identical)
//    and accumulate in F32. Unlike kcpu::MatMul, activations are NOT quantised to 8 bits,
//    so GPU and CPU results differ by the CPU path's activation rounding (~1 %).
//  - Not yet: integer (dp4a) or tensor-core (mma) products, CUDA-graph capture of a
//    layer; the tiled kernel is plain F32 SIMT.
// Thread-safety: the functions hold no state; calls on different streams may run
// concurrently (prefill attention sets its kernel's shared-memory limit, an idempotent
// per-process attribute, before each launch).
#ifndef MOEX_KERNELS_CUDA_CUDA_OPS_H_
#define MOEX_KERNELS_CUDA_CUDA_OPS_H_

#include <cstdint>
#include <string>

#include "kernels_cpu/quant.h"

namespace moex::kcuda {

using kcpu::GgmlType;

// The weight types the matrix kernels read.
inline constexpr GgmlType kWeightTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16,
                                            GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_K,
                                            GgmlType::kQ5_K, GgmlType::kQ6_K};
bool IsSupportedWeightType(GgmlType type);

// ---- matrix products ---------------------------------------------------------------------

// Which kernel MatMul runs. kAuto: the warp-per-row GEMV for n_tokens <= kGemvMaxTokens,
// else the tiled kernel. The explicit choices exist for tests and benchmarks.
enum class MatMulPath { kAuto, kGemv, kTiled };
inline constexpr int64_t kGemvMaxTokens = 8;

// y[t][r] = sum_c W[r][c] * x[t][c] for t < n_tokens, r < rows.
// w: device weights; x: device [n_tokens][cols]; y: device [n_tokens][rows], overwritten.
// cols must be a multiple of the type's block size (any cols for F32/F16/BF16).
std::string MatMul(GgmlType type, const void* w, int64_t rows, int64_t cols, const float* x,
                   int64_t n_tokens, float* y, void* stream, MatMulPath path = MatMulPath::kAuto);

// The products of selected experts, without the host knowing which (decode reads the
// router's picks from device memory, so no copy to the host and no wait):
//   y[i][r] = sum_c W_{ids[i]}[r][c] * x[(i / x_group) * x_stride + c]   for i < n_sel
// w: device, n_expert matrices of rows x cols back to back (a GGUF expert stack);
// ids: device int32 [n_sel] (an id outside 0..n_expert-1 gives NaN rows: never silent);
// y: device [n_sel][rows]. The gate/up products of t tokens with k picks each are
// x_group = k, x_stride = cols (each token's row read by its k picks); the down products
// x_group = 1, x_stride = cols (each pick its own activation). Each row is the GEMV's
// (kGemv) result bit for bit. n_sel <= 65535.
std::string MatMulSelected(GgmlType type, const void* w, int64_t n_expert, int64_t rows,
                           int64_t cols, const int32_t* ids, int64_t n_sel, const float* x,
                           int64_t x_group, int64_t x_stride, float* y, void* stream);

// out[i] = dequantised row ids[i] of `table` (rows of `cols` values of `type`), for
// i < n_ids: an embedding lookup. ids: device int32 (each < table_rows, else the row is
// NaN-filled and the call still succeeds: ids are not read on the host). out: device
// [n_ids][cols]. Dequantisation is bit-identical to kcpu::DequantizeRow.
std::string GetRows(GgmlType type, const void* table, int64_t table_rows, int64_t cols,
                    const int32_t* ids, int64_t n_ids, float* out, void* stream);

// ---- expert FFN (prefill) -------------------------------------------------------------------

// The routed experts of one MoE layer on tokens grouped by expert:
//   for each entry i (a (token, expert) pair of the routing):
//     a_i = silu(Wgate[e] x[tok_i]) * (Wup[e] x[tok_i])           (n_ff values)
//     out[tok_i] += weight_i * (Wdown[e] a_i)                      (n_embd values)
// Entries are grouped by expert: expert e owns entries offsets[e] .. offsets[e+1]-1.
struct ExpertFfnArgs {
  GgmlType gate_up_type = GgmlType::kF32;  // gate and up share a type (as GGUF files do)
  GgmlType down_type = GgmlType::kF32;
  const void* gate = nullptr;  // device: n_expert x [n_ff][n_embd], experts back to back
  const void* up = nullptr;    // device: n_expert x [n_ff][n_embd]
  const void* down = nullptr;  // device: n_expert x [n_embd][n_ff]
  int64_t n_expert = 0, n_embd = 0, n_ff = 0;
  const float* x = nullptr;  // device [n_tokens][n_embd]
  int64_t n_tokens = 0;
  const int32_t* offsets = nullptr;    // device [n_expert + 1], offsets[0] = 0, non-decreasing
  const int32_t* token_ids = nullptr;  // device [n_entries]: token of each entry (< n_tokens)
  const float* weights = nullptr;      // device [n_entries]: combine weight of each entry
  int64_t n_entries = 0;               // host copy of offsets[n_expert]
  int64_t max_entries_per_expert = 0;  // host: max over e of offsets[e+1] - offsets[e]
  float* out = nullptr;                // device [n_tokens][n_embd], accumulated into (+=)
  // Optional device scratch of at least ExpertFfnWorkspaceBytes; null: ExpertFfn takes it
  // from cudaMallocAsync on the stream (whose default pool may return it to the driver at
  // each synchronisation, so callers in a loop should pass their own).
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};
int64_t ExpertFfnWorkspaceBytes(const ExpertFfnArgs& args);
// Reads each expert's weight tiles once per tile of up to 32 of its tokens (the tiled
// kernel, with the token rows gathered through token_ids). The scatter-add uses F32
// atomics, so when several entries of a token land in `out` the order of their additions,
// and with it the last bits of the sum, may vary from run to run; use
// MatMul + SwiGlu + CombineExperts where bitwise reproducibility matters.
// Scratch: n_entries * n_ff floats (args.workspace).
std::string ExpertFfn(const ExpertFfnArgs& args, void* stream);

// ---- small operators --------------------------------------------------------------------

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w for each of n_rows rows of n values
// (w: device [n] or nullptr for no scale). out may equal x.
std::string RmsNorm(const float* x, const float* w, int64_t n_rows, int64_t n, float eps,
                    float* out, void* stream);

// Rotates, in place, the first n_rot dims of each head of x [n_tokens][n_heads * head_dim];
// token t is at position pos0 + t. neox=false pairs (2i, 2i+1), neox=true (i, i + n_rot/2),
// as kcpu::Rope. The frequencies are computed on the host with kcpu::Rope's expression, so
// the angles are bit-identical to the CPU's; n_rot must be even and <= 256.
std::string Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                 int64_t pos0, float freq_base, bool neox, void* stream);

// Router: for each of n_tokens rows of logits [n_tokens][n_expert], probs = softmax(logits)
// (written to `probs` [n_tokens][n_expert] when non-null), then the top_k experts by
// probability (ties to the lower id, as experts/moe_layer.cc) into experts [n_tokens][top_k]
// (int32) and their probabilities into weights [n_tokens][top_k], divided by their sum when
// norm_topk. n_expert <= 1024, top_k <= min(n_expert, 32).
std::string RouterTopK(const float* logits, int64_t n_tokens, int64_t n_expert, int64_t top_k,
                       bool norm_topk, float* probs, int32_t* experts, float* weights,
                       void* stream);

// gate[i] = silu(gate[i]) * up[i] for i < n.
std::string SwiGlu(float* gate, const float* up, int64_t n, void* stream);

// The weighted combine of decode: out[t][c] (+)= sum_j weights[t][j] * y[t * k + j][c],
// j = 0..k-1 in order (deterministic). y: device [n_tokens * k][n]; out: [n_tokens][n],
// overwritten unless accumulate.
std::string CombineExperts(const float* y, const float* weights, int64_t n_tokens, int64_t k,
                           int64_t n, bool accumulate, float* out, void* stream);

// y[r][c] += g_r * x[r * x_stride + c] for r < n_rows, c < n, where g_r = sigmoid(
// gate_logits[r]) (device [n_rows]) or 1 when gate_logits is null. The three uses of the
// forward pass: the residual add (x_stride = n), a bias on every row (x_stride = 0) and
// Qwen2-MoE's gated shared expert. n_rows <= 65535 per call.
std::string AddRows(float* y, const float* x, int64_t n_rows, int64_t n, int64_t x_stride,
                    const float* gate_logits, void* stream);

// ---- attention over the device KV layout --------------------------------------------------

// The device KV layout of one layer: K and V are separate buffers, each n_head_kv slabs of
// `capacity` rows; row j of KV head h is at byte (h * capacity + j) * row_bytes, where
// row_bytes = kcpu::RowBytes(type, head_dim). Row j holds position j: rows are contiguous
// per (layer, KV head) and in position order. Types: kF32, kF16, kBF16, kQ8_0 (KvCache's
// "q8"), kQ4_1 ("q4"); head_dim a multiple of 32 and <= 256.
struct KvLayout {
  GgmlType type = GgmlType::kF16;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  int64_t capacity = 0;
};
bool IsSupportedKvType(GgmlType type);
// Bytes of one of the K or V buffers of a layer.
int64_t KvBufferBytes(const KvLayout& kv);

// Stores the keys and values of n_tokens tokens (k, v: device [n_tokens][n_head_kv *
// head_dim], keys after RoPE) at rows pos0 .. pos0 + n_tokens - 1, quantised as
// kcpu::QuantizeRow does: F32/F16/BF16/Q8_0 rows bit-identical, Q4_1 scales too, and a Q4_1
// code may differ by one step where the host compiler fused (x - m) * id + 0.5 into an FMA
// and the GPU did not round the same way.
std::string KvStore(const KvLayout& kv, const float* k, const float* v, int64_t n_tokens,
                    int64_t pos0, void* k_cache, void* v_cache, void* stream);

// Which attention kernel runs. kAuto: flash-decoding for n_tokens <= 4, else the tiled
// prefill kernel.
enum class AttentionPath { kAuto, kDecode, kPrefill };

// Causal GQA attention, as kcpu::CausalAttention: query t (q: device [n_tokens][n_head *
// head_dim], at position pos0 + t) attends rows 0 .. pos0 + t of the cache (so rows
// 0 .. pos0 + n_tokens - 1 must be stored); query head h reads KV head h / (n_head /
// n_head_kv); out: device [n_tokens][n_head * head_dim]. Decode splits the KV length into
// chunks over blocks and reduces the chunks' partial softmaxes in a second kernel (scratch
// from `workspace`, or from cudaMallocAsync when null: see ExpertFfnArgs::workspace);
// prefill walks KV tiles of 32 rows per block of 16 queries.
std::string Attention(const KvLayout& kv, const void* k_cache, const void* v_cache, const float* q,
                      int64_t n_tokens, int64_t pos0, int64_t n_head, float scale, float* out,
                      void* stream, AttentionPath path = AttentionPath::kAuto,
                      void* workspace = nullptr, int64_t workspace_bytes = 0);
// Bytes of scratch Attention needs for these arguments (0 for the prefill kernel).
int64_t AttentionWorkspaceBytes(const KvLayout& kv, int64_t n_tokens, int64_t pos0, int64_t n_head,
                                AttentionPath path = AttentionPath::kAuto);

}  // namespace moex::kcuda

#endif  // MOEX_KERNELS_CUDA_CUDA_OPS_H_
