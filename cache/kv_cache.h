// The KV cache of one sequence: keys and values of every layer and position, F32.
//
// Capacity is fixed at creation (the context size); appending past it is a
// kOutOfRange error naming the limit, never a silent overwrite. Compression policies
// (StreamingLLM, H2O, SnapKV, quantised KV: issue "KV-cache compression") will sit
// behind this class, which is why attention reads it through K()/V() and a length.
// Thread-safety: one sequence, one thread at a time (the Session's).
#ifndef MOEX_CACHE_KV_CACHE_H_
#define MOEX_CACHE_KV_CACHE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex {

class KvCache {
 public:
  // kv_dim = n_head_kv * head_dim. Errors: kResourceExhausted when the cache cannot be
  // allocated (the message gives the bytes asked for).
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(int64_t n_layer, int64_t n_ctx,
                                                         int64_t kv_dim);

  int64_t capacity() const { return n_ctx_; }
  int64_t size() const { return n_past_; }
  int64_t kv_dim() const { return kv_dim_; }
  int64_t bytes() const { return 2 * n_layer_ * n_ctx_ * kv_dim_ * int64_t{sizeof(float)}; }

  // Checks that n_new more positions fit.
  absl::Status Reserve(int64_t n_new) const;
  // Rows of layer `layer`, position 0 first, kv_dim() floats per row.
  float* K(int64_t layer) { return data_.get() + (2 * layer) * n_ctx_ * kv_dim_; }
  float* V(int64_t layer) { return data_.get() + (2 * layer + 1) * n_ctx_ * kv_dim_; }
  // Marks n_new positions as written (after every layer wrote them).
  void Advance(int64_t n_new) { n_past_ += n_new; }
  void Clear() { n_past_ = 0; }
  // Forgets every position from n on (a no-op when n >= size()).
  void Truncate(int64_t n) {
    if (n >= 0 && n < n_past_) n_past_ = n;
  }

 private:
  KvCache(int64_t n_layer, int64_t n_ctx, int64_t kv_dim)
      : n_layer_(n_layer), n_ctx_(n_ctx), kv_dim_(kv_dim) {}
  int64_t n_layer_, n_ctx_, kv_dim_;
  int64_t n_past_ = 0;
  std::unique_ptr<float[]> data_;
};

}  // namespace moex

#endif  // MOEX_CACHE_KV_CACHE_H_
