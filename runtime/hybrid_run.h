// A model run on a device with the hybrid executor: the bridge between the forward pass
// and HybridMoe (experts/hybrid_moe.h).
//
// The forward pass computes everything on the host as before; this object tells the device
// what each piece costs and where it runs: the dense part of every layer (attention with
// its KV reads, router, norms, shared expert) and the output head on the GPU stream, the
// routed experts where the scheduler puts them. On the simulated device that gives the
// time a GPU of the profile would take while the tokens stay those of a CPU run, bit for
// bit (the experts' outputs are combined in expert order whatever side ran them).
//
// The prefetcher's guesses for layer l + 1 come from the cross-layer gate (Fate): layer
// l + 1's router applied to layer l's input, its top-k.
#ifndef MOEX_RUNTIME_HYBRID_RUN_H_
#define MOEX_RUNTIME_HYBRID_RUN_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "experts/hybrid_moe.h"
#include "experts/moe_layer.h"
#include "runtime/device/device.h"
#include "runtime/model_weights.h"

namespace moex {

struct HybridRunOptions {
  std::string device = "cpu";  // "sim:PROFILE" (cuda runs runtime/gpu_forward.h)
  std::string cpu_profile;     // the host side on sim: a profile name, "host" (calibrated)
  std::string gpu_mem;         // expert slots: "6GiB", "25%" of the experts; empty: what fits
  std::string moe_policy = "hybrid";
  std::string cache_policy, prefetch;  // empty: the policy's own
  int64_t context = 0;                 // KV positions the device must hold
};

class HybridRun {
 public:
  // Errors: kInvalidArgument (a bad option; a dense model; a device other than sim),
  // kNotFound (a profile), kResourceExhausted (weights + KV + slots beyond the device's
  // memory, naming each).
  static absl::StatusOr<std::unique_ptr<HybridRun>> Create(const ModelWeights& weights,
                                                           const HybridRunOptions& options);

  // Hooks of Forward::Eval, in order: one step of n tokens whose attention reads
  // `kv_positions` positions per layer.
  void BeginStep(int64_t n_tokens, int64_t kv_positions);
  absl::Status Dense(int64_t layer);
  // Runs layer `layer`'s routed experts through the scheduler (a MoeForward dispatcher).
  absl::Status Moe(int64_t layer, const Routing& routing, const float* moe_input,
                   const std::vector<int32_t>& active, const ExpertRun& run);
  absl::Status Head();

  // The device clock (virtual on sim), seconds since creation.
  absl::StatusOr<double> Seconds();
  const HybridStats& stats() const { return hybrid_->stats(); }
  const HybridMoe& hybrid() const { return *hybrid_; }
  std::string device_name() const { return device_->name(); }
  int64_t slots() const;
  double expert_bytes() const { return expert_bytes_; }

 private:
  HybridRun() = default;
  const ModelWeights* w_ = nullptr;
  std::unique_ptr<Device> device_;
  std::unique_ptr<HybridMoe> hybrid_;
  std::vector<DeviceAlloc> held_;    // dense weights + KV, and the expert slots
  std::vector<double> dense_bytes_;  // per layer
  double head_bytes_ = 0;
  double expert_bytes_ = 0;
  int64_t step_ = 0, n_tokens_ = 1, kv_positions_ = 0;
  std::vector<int32_t> guess_ids_;  // the cross-layer gate's guesses, [tokens][k]
};

}  // namespace moex

#endif  // MOEX_RUNTIME_HYBRID_RUN_H_
