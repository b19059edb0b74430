// Causal grouped-query attention over a KV cache, reference CPU version.
// Thread-safety: pure; parallel over (token, head) internally.
#ifndef MOEX_KERNELS_CPU_ATTENTION_H_
#define MOEX_KERNELS_CPU_ATTENTION_H_

#include <cstdint>

namespace moex::kcpu {

struct AttentionShape {
  int64_t n_head = 0;
  int64_t n_head_kv = 0;  // divides n_head; query head h reads kv head h / (n_head / n_head_kv)
  int64_t head_dim = 0;
  float scale = 1.0f;  // usually 1 / sqrt(head_dim)
};

// For each of n_tokens queries q[t] (n_head * head_dim values, row stride
// n_head*head_dim) at position pos0 + t, attends to cache positions 0..pos0+t of k and v
// (row stride kv_stride floats; n_head_kv * head_dim values used) and writes
// out[t] (n_head * head_dim values).
void CausalAttention(const AttentionShape& s, const float* q, int64_t n_tokens, int64_t pos0,
                     const float* k, const float* v, int64_t kv_stride, float* out);

}  // namespace moex::kcpu

#endif  // MOEX_KERNELS_CPU_ATTENTION_H_
