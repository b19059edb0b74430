// The CPU forward pass of a decoder-only (MoE) transformer: the reference executor.
//
// Eval() runs a batch of tokens (a prefill of many, or a one-token decode) through every
// layer, appending their keys and values to the KV cache, and returns logits. The
// layer is assembled from the architecture's table row (runtime/arch.h): RoPE style,
// q/k norm placement, biases, dense or MoE FFN, shared expert.
// Thread-safety: one Forward per sequence, used by one thread at a time; the model
// weights it reads may be shared.
#ifndef MOEX_RUNTIME_FORWARD_H_
#define MOEX_RUNTIME_FORWARD_H_

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "cache/kv_cache.h"
#include "experts/moe_layer.h"
#include "runtime/model_weights.h"

namespace moex {

// Called after each MoE layer's routing with the layer index, the routing and the
// position of the batch's first token. For traces, predictors and statistics.
using RoutingObserver = std::function<void(int64_t layer, const Routing& routing, int64_t pos0)>;

class Forward {
 public:
  // REQUIRES: `weights` and `kv` outlive this object; kv's shape matches the model.
  Forward(const ModelWeights* weights, KvCache* kv) : w_(weights), kv_(kv) {}

  // Evaluates `tokens` at positions kv->size() onwards. logits gets n_vocab floats per
  // token when `all_logits`, else those of the last token only. Errors: a token id out
  // of range (kInvalidArgument) or a context overflow (kOutOfRange); the cache is left
  // unchanged on error.
  absl::Status Eval(std::span<const int32_t> tokens, bool all_logits, std::vector<float>* logits);

  void set_routing_observer(RoutingObserver obs) { observer_ = std::move(obs); }

 private:
  void Attention(int64_t il, const float* cur, int64_t n, int64_t pos0, float* out);

  const ModelWeights* w_;
  KvCache* kv_;
  RoutingObserver observer_;
  // Scratch reused across calls to keep decode free of allocations.
  std::vector<float> x_, cur_, q_, k_, v_, attn_, ffn_;
  Routing routing_;
};

}  // namespace moex

#endif  // MOEX_RUNTIME_FORWARD_H_
