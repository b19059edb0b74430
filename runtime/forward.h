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
#include "runtime/hybrid_run.h"
#include "runtime/model_weights.h"
#include "runtime/moe_event.h"

namespace moex {

class GpuForward;

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
  // Runs the pass on a device with the hybrid executor (null: the CPU alone). The numbers
  // are the same either way; the device's clock says how long a GPU would have taken.
  void set_hybrid(HybridRun* hybrid) { hybrid_ = hybrid; }
  // Runs the pass on a real GPU (runtime/gpu_forward.h) instead; this object keeps the
  // checks and the KV cache's positions (its rows live on the GPU).
  void set_gpu(GpuForward* gpu) { gpu_ = gpu; }

 private:
  absl::Status Attention(int64_t il, const float* cur, int64_t n, int64_t pos0, float* out);

  const ModelWeights* w_;
  KvCache* kv_;
  RoutingObserver observer_;
  HybridRun* hybrid_ = nullptr;
  GpuForward* gpu_ = nullptr;
  // Scratch reused across calls to keep decode free of allocations.
  std::vector<float> x_, cur_, q_, k_, v_, attn_, ffn_;
  Routing routing_;
  MoeScratch moe_scratch_;  // the FFN's buffers (MoE and dense layers)
};

}  // namespace moex

#endif  // MOEX_RUNTIME_FORWARD_H_
