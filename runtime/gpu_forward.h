// The forward pass on a real GPU (`--device cuda[:N]`), with the routed experts of the
// layers that do not fit in GPU memory on the CPU.
//
// Placement (DESIGN.md, the device layer's item 3): the embeddings, attention with its KV
// cache, the routers, the norms, shared experts and the output head live on the GPU; the
// routed experts of the deepest layers that fit in the budget live there too, the other
// layers' experts stay in the mapped file and run on the CPU (the static split of
// llama.cpp's --n-cpu-moe, and of the `layers` expert-cache policy). A CPU layer costs
// two activation copies: the normed input down, the experts' sum up. The dynamic
// scheduler of the simulated device (experts/hybrid_moe.h) does not drive a real GPU yet.
//
// Arithmetic: every operator is a kernels_cuda/ function (F32 activations, weights
// dequantised in registers). The logits differ from the CPU pass's by the CPU's 8-bit
// activation rounding and the order of F32 sums (the golden tests' tolerance), not more.
// Up to kcuda::kGemvMaxTokens tokens (decode) run the picked experts as products that
// read the router's picks on the device (no copy to the host, no wait) and combine them in
// pick order (deterministic); longer batches run the grouped expert kernel, whose atomic
// scatter-add can change the last bits between runs.
//
// The KV cache's positions are the caller's (Forward keeps the ledger in its KvCache, so
// Reserve/Truncate/Clear work as on the CPU); the rows live in device memory.
// Thread-safety: one GpuForward per sequence, used by one thread at a time.
#ifndef MOEX_RUNTIME_GPU_FORWARD_H_
#define MOEX_RUNTIME_GPU_FORWARD_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels_cpu/quant.h"
#include "runtime/model_weights.h"
#include "runtime/moe_event.h"

namespace moex {

struct GpuForwardOptions {
  int device_index = 0;
  // GPU memory for routed experts: a size ("6GiB", "512MiB", bytes) or a share of all of
  // them ("25%"); whole layers are placed. Empty: every layer that fits after the dense
  // weights, the KV cache and the scratch buffers.
  std::string gpu_mem;
  std::string moe_policy = "static-layers";       // static-layers (hybrid: the same, for now),
                                                  // gpu-only, cpu-only
  kcpu::GgmlType kv_type = kcpu::GgmlType::kF16;  // f32, f16, bf16, q8_0, q4_1
  int64_t context = 0;                            // KV positions per layer
};

class GpuForward {
 public:
  // Uploads the model's GPU part. Errors: kUnavailable (no CUDA in this build, no GPU, or
  // the driver's words), kResourceExhausted (the dense weights, KV cache and scratch do
  // not fit; gpu-only experts that do not fit: each size named), kInvalidArgument (a bad
  // option), kUnimplemented (a policy or KV type the GPU pass does not have).
  static absl::StatusOr<std::unique_ptr<GpuForward>> Create(const ModelWeights& weights,
                                                            const GpuForwardOptions& options);
  ~GpuForward();

  // Forward::Eval's contract for `tokens` at positions pos0.. (ids already checked, the
  // positions reserved by the caller); `observer` (may be empty) sees every MoE layer.
  absl::Status Eval(std::span<const int32_t> tokens, int64_t pos0, bool all_logits,
                    std::vector<float>* logits, const RoutingObserver& observer);

  std::string device_name() const;
  std::string moe_policy() const;  // static-layers (also for hybrid), gpu-only, cpu-only
  // Layers whose routed experts are on the GPU (true) or the CPU.
  const std::vector<bool>& expert_layers_on_gpu() const;
  int64_t kv_bytes() const;      // device KV buffers, all layers
  int64_t device_bytes() const;  // everything this pass holds on the GPU
  // Expert runs per layer and side since creation (for DeviceStats).
  const std::vector<int64_t>& layer_gpu_experts() const;
  const std::vector<int64_t>& layer_cpu_experts() const;
  int64_t steps() const;   // Eval calls
  int64_t tokens() const;  // tokens evaluated

  struct Impl;

 private:
  explicit GpuForward(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moex

#endif  // MOEX_RUNTIME_GPU_FORWARD_H_
