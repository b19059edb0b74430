// Trace-driven simulation of hybrid CPU/GPU MoE inference (`moex sim`).
//
// Replays a routing trace (moex/trace.h: recorded by `moex trace`, or imported) through the
// real scheduler, GPU expert cache and prefetcher (the same code that runs a model), on a
// simulated GPU whose clock follows a device profile, with no arithmetic: a 48-layer,
// 128-expert model's decode speed on an RTX 4060 is estimated in seconds on any machine.
//
//   auto trace = moex::ImportMixtralJsonl(path, 8);
//   moex::SimOptions opt;            // mixtral-8x7b, q4_k_m, rtx4060-8g, hybrid
//   opt.gpu_mem = "25%";             // a quarter of the experts fit in the GPU
//   auto r = moex::SimulateTrace(*trace, opt);   // r->decode_tps, r->hit_rate, ...
//
// A trace has no hidden states, so the predictor that guides prefetching is either the
// previous token's routing or an oracle of set accuracy (the true next-layer experts, each
// replaced by a wrong one with probability 1 - accuracy, deterministic by seed).
#ifndef MOEX_SIM_H_
#define MOEX_SIM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/trace.h"

namespace moex {

// The shape of a real model, from runtime/model_shapes.ini (compiled in).
struct ModelShape {
  std::string name;
  int32_t layers = 0;        // MoE layers
  int32_t dense_layers = 0;  // leading layers with a dense FFN instead
  int64_t dense_ffn = 0;
  int64_t hidden = 0;
  int32_t experts = 0, top_k = 0;
  int64_t expert_ffn = 0;
  int64_t shared_ffn = 0;  // shared expert(s), 0 when none
  int32_t heads = 0, kv_heads = 0, head_dim = 0;
  int64_t attn_params = 0;  // per layer; 0: from heads (q, k, v, o projections)
  int64_t kv_dim = 0;       // K+V values stored per token and layer; 0: 2 * kv_heads * head_dim
  int64_t vocab = 0;
  std::string expert_quant;  // the quantisation the model ships in when it has one ("mxfp4")
};
std::vector<ModelShape> BuiltinModelShapes();
absl::StatusOr<ModelShape> FindModelShape(const std::string& name);

struct SimOptions {
  std::string model_shape = "mixtral-8x7b";
  ModelShape shape;  // used instead of model_shape when shape.layers > 0 (e.g. from a file)
  std::string quant = "q4_k_m";  // q4_k_m, q5_k_m, q4_0, q8_0, f16, mxfp4
  double expert_bytes = 0;       // one expert's bytes when known (a file's); 0: from quant
  std::string gpu = "rtx4060-8g";
  std::string cpu = "desktop-ddr5";
  // GPU memory for expert slots: "6GiB", "512MiB", "25%" (of all experts); empty: all the
  // memory left after the dense weights and the KV cache.
  std::string gpu_mem;
  std::string policy = "hybrid";  // hybrid, static-layers, lru-ondemand, cpu-only, gpu-only
  std::string cache_policy;       // empty: the policy's own (score, lru, lfu, static, belady)
  std::string prefetch;           // empty: the policy's own (impact, score-rank, none)
  int32_t prefetch_count = 0;     // score-rank: experts per layer (0: top-k)
  std::string predictor = "previous-token";  // previous-token, oracle, none
  double predict_accuracy = 0.9;             // oracle
  uint64_t seed = 1;
  int64_t context = 1024;      // KV positions attention reads per decoded token
  int64_t prefill_tokens = 0;  // the first N tokens of each sequence run as one batch
};

struct SimLayer {
  double gpu_experts_per_token = 0, cpu_experts_per_token = 0;
  double hit_rate = 0;
  int32_t slots = 0;
};

struct SimReport {
  std::string model_shape, quant, gpu, cpu, policy, cache_policy, prefetch, predictor;
  int64_t decode_tokens = 0, prefill_tokens = 0;
  double decode_tps = 0, prefill_tps = 0;  // 0 when the run had none
  double hit_rate = 0;                     // routed-expert uses found on the GPU
  double bytes_copied_per_token = 0;
  double stall_ms_per_token = 0;  // GPU idle waiting for copies
  double cpu_ms_per_token = 0;    // CPU busy with experts
  double predictor_recall = -1;   // share of the next layer's experts guessed (-1: none)
  int64_t prefetch_copies = 0, ondemand_copies = 0;
  double expert_bytes = 0;      // one expert, averaged over layers
  int64_t slots = 0;            // expert slots on the GPU
  double gpu_expert_share = 0;  // slots / all experts
  double dense_bytes = 0;       // weights and KV held on the GPU beside the slots
  double gpu_memory_bytes = 0;  // the profile's
  double bound_tps = 0;         // decode with every expert on the CPU at the CPU's bandwidth
  std::vector<SimLayer> layers;
};

// Errors: kNotFound (unknown shape/profile), kInvalidArgument (a trace whose layers,
// experts or top-k differ from the shape's, a bad option), kResourceExhausted (the dense
// weights and slots exceed the GPU's memory, naming both).
absl::StatusOr<SimReport> SimulateTrace(const Trace& trace, const SimOptions& options);

}  // namespace moex

#endif  // MOEX_SIM_H_
