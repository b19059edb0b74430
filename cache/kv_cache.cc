#include "cache/kv_cache.h"

#include <new>

#include "absl/strings/str_cat.h"

namespace moex {

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(int64_t n_layer, int64_t n_ctx,
                                                         int64_t kv_dim) {
  if (n_layer <= 0 || n_ctx <= 0 || kv_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: bad shape layers=", n_layer,
                                                   " ctx=", n_ctx, " kv_dim=", kv_dim));
  }
  const int64_t bytes = 2 * n_layer * n_ctx * kv_dim * static_cast<int64_t>(sizeof(float));
  std::unique_ptr<KvCache> c(new KvCache(n_layer, n_ctx, kv_dim));
  const size_t n = static_cast<size_t>(bytes / sizeof(float));
  // nothrow: moex reports exhaustion as a Status instead of terminating.
  c->data_.reset(new (std::nothrow) float[n]);
  if (c->data_ == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache: cannot allocate ", bytes, " bytes for a context of ", n_ctx,
                     " tokens; use a smaller context (-c)"));
  }
  // Not zero-filled: attention reads only positions already written, and untouched pages
  // of a large context never become resident.
  return c;
}
absl::Status KvCache::Reserve(int64_t n_new) const {
  if (n_past_ + n_new > n_ctx_) {
    return absl::OutOfRangeError(absl::StrCat("context overflow: ", n_past_, " tokens in the cache + ",
                                              n_new, " new > context size ", n_ctx_,
                                              " (raise it with -c)"));
  }
  return absl::OkStatus();
}

}  // namespace moex
