// moex: run Mixture-of-Experts language models from GGUF files.
//
//   auto model = moex::Model::Open("model.gguf", {});          // absl::StatusOr
//   auto session = (*model)->NewSession({});
//   auto out = (*session)->Generate(prompt_ids, {}, [](int32_t tok) { return true; });
//
// Thread-safety: a Model is immutable after Open and may be shared by any number of
// threads and Sessions. A Session (one conversation: its KV cache and sampler state)
// must be used by one thread at a time. Free functions are thread-safe.
// Errors are absl::Status values; nothing here prints, exits or throws.
#ifndef MOEX_MOEX_H_
#define MOEX_MOEX_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moex/info.h"
#include "moex/tokenizer.h"

namespace moex {

struct ModelOptions {
  // Worker threads for the CPU kernels; 0 = the machine's physical cores.
  int threads = 0;
  // Pin the workers one per physical core (hwloc) while they work for this model; a
  // thread of the caller gets its own binding back when a call returns. Best effort:
  // where the system refuses, the threads run unpinned.
  bool pin_threads = true;
  // Map every page of the weights into the process at Open (they stay mapped, not copied)
  // when the file fits in the memory the system has available, so the first prompt does
  // not pay a page fault per 4 KiB of weights; larger files stay lazily mapped.
  bool prefault = true;
};

struct SessionOptions {
  // Context size in tokens (prompt + generated); 0 = min(model's trained context, 4096).
  int64_t context = 0;
  // Element type of the KV cache rows: f32, f16, bf16, q8 (8-bit, a scale per 32 values),
  // q4 (4-bit, a scale and minimum per 32 values).
  std::string kv_type = "f32";
  // KV-cache compression: "full", or "streaming|h2o|snapkv[:budget=N|F,window=N,sinks=N,
  // pool=N]" with a budget in tokens per KV head or as a fraction of the context.
  std::string kv_policy = "full";

  // Where the model runs: "cpu" (default); "auto": cuda:0 when there is a GPU and the
  // model and these options run there, else cpu (device_stats().note says why a present
  // GPU was not used); "cuda" or "cuda:N", a real GPU holding
  // attention and its KV cache, routers, norms, shared experts, the head and the routed
  // experts of the deepest layers that fit (whole layers; the CPU runs the others: a
  // static split, moe_policy static-layers, gpu-only or cpu-only; the KV policy "full");
  // or "sim:PROFILE", a simulated GPU of that profile beside this CPU: the numbers are
  // computed on the CPU exactly as with "cpu", and the device clock says how long the GPU
  // and CPU together would take (Stats's device_*, device_stats(); docs/DEVICE.md,
  // docs/HYBRID.md).
  std::string device = "cpu";
  std::string cpu_profile;  // sim: the host side: "host" (this machine, measured) or a name
  std::string gpu_mem;      // GPU memory for experts ("6GiB", "25%" of the experts);
                            // empty: all that is left after weights and KV
  std::string moe_policy = "hybrid";  // hybrid, static-layers, lru-ondemand, cpu-only, gpu-only
  std::string cache_policy;           // score, lru, lfu (empty: the policy's own)
  std::string prefetch;               // impact, score-rank, none (empty: the policy's own)
};

struct SamplingOptions {
  float temperature = 0.8f;  // <= 0: greedy (argmax)
  int32_t top_k = 40;        // <= 0: off
  float top_p = 0.95f;       // >= 1: off
  float min_p = 0.05f;       // <= 0: off
  float repeat_penalty =
      1.0f;  // 1: off (llama.cpp's rule: divide positive logits, multiply negative)
  int32_t repeat_last_n = 64;  // how many recent tokens the penalty looks at
  uint64_t seed = 0;           // same seed, same model, same prompt: same tokens
};

struct GenerateOptions {
  int32_t max_tokens = 128;
  SamplingOptions sampling;
  bool stop_at_eos = true;  // stop on the model's end-of-sequence or end-of-turn token
};

// Timings of the last Generate() / Evaluate() call of a Session.
struct Stats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double prefill_tps() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  double decode_tps() const { return decode_seconds > 0 ? generated_tokens / decode_seconds : 0; }
  // The same phases on the device's clock (a simulated device's virtual time); 0 on cpu.
  double device_prefill_seconds = 0;
  double device_decode_seconds = 0;
  double device_prefill_tps() const {
    return device_prefill_seconds > 0 ? prompt_tokens / device_prefill_seconds : 0;
  }
  double device_decode_tps() const {
    return device_decode_seconds > 0 ? generated_tokens / device_decode_seconds : 0;
  }
};

// What the hybrid executor did since the session started (all zero on cpu). On cuda:
// the device, moe_policy, slots, steps, tokens and the per-layer split; hits / misses
// count the expert runs on the GPU / the CPU; the copy and clock fields stay zero.
struct DeviceStats {
  std::string device = "cpu";  // "sim:rtx4060-8g", "cuda:0 (NVIDIA ...)"
  std::string note;            // --device auto on the CPU beside a GPU: why
  std::string moe_policy, cache_policy, prefetch;
  double seconds = 0;  // the device clock
  int64_t steps = 0, tokens = 0;
  int64_t slots = 0;             // expert slots in GPU memory
  double expert_bytes = 0;       // one expert (layer 0)
  int64_t hits = 0, misses = 0;  // routed-expert uses found resident on the GPU, or not
  int64_t ondemand_copies = 0, prefetch_copies = 0, refresh_copies = 0;
  int64_t prefetch_used = 0;  // copied ahead (prefetch or refresh), then used by its layer
  double bytes_copied = 0;
  double stall_seconds = 0;                                   // the GPU waiting for copies
  std::vector<int64_t> layer_gpu_experts, layer_cpu_experts;  // expert runs per layer
};

// Called with each generated token; return false to stop generating (cancellation).
using TokenCallback = std::function<bool(int32_t token)>;

// The router's decision in one MoE layer for a batch of tokens (positions pos0 ..
// pos0 + n_tokens - 1 of the session): for token t, experts[t * k + j] with weight
// weights[t * k + j], j < k, in descending weight order; probs[t * n_expert + e] is the
// softmax over all experts. The pointers are valid only during the callback.
struct RoutingEvent {
  int32_t layer = 0;
  int64_t pos0 = 0;
  int32_t n_tokens = 0;
  int32_t k = 0;
  int32_t n_expert = 0;
  const int32_t* experts = nullptr;
  const float* weights = nullptr;
  const float* probs = nullptr;
};
// Called on the session's thread after each MoE layer's routing (routing traces,
// statistics). It must not call back into the session.
using RoutingCallback = std::function<void(const RoutingEvent& event)>;

// Accuracy of one expert predictor: recall@k of its guesses for the experts of `layer`
// (-1: all layers pooled) made `distance` layers earlier, over `samples` tokens.
struct PredictorAccuracy {
  std::string predictor;  // cross-layer-gate, cross-layer-gate-resid, previous-token, frequency
  int32_t distance = 1;
  int32_t layer = -1;
  double recall = 0;
  int64_t samples = 0;
};

// One predictor's guess of MoE layer `layer`'s experts for a batch of tokens (positions
// pos0 .. pos0 + n_tokens - 1), made when the layer `distance` before it ran: for token t,
// experts[t * k + j], best first. The pointer is valid only during the callback.
struct PredictionEvent {
  const char* predictor = "";  // "cross-layer-gate" or "cross-layer-gate-resid"
  int32_t layer = 0;
  int32_t distance = 1;
  int64_t pos0 = 0;
  int32_t n_tokens = 0;
  int32_t k = 0;
  const int32_t* experts = nullptr;
};
// Called on the session's thread; it must not call back into the session.
using PredictionCallback = std::function<void(const PredictionEvent& event)>;

class Model;

class Session {
 public:
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Appends `tokens` to the conversation and returns their logits ([n][n_vocab]).
  absl::StatusOr<std::vector<float>> Evaluate(std::span<const int32_t> tokens);

  // Appends `prompt`, then samples up to max_tokens tokens, calling on_token (may be
  // empty) for each. Returns the generated ids. Errors: token ids outside the
  // vocabulary, or a context overflow (the message names the context size).
  absl::StatusOr<std::vector<int32_t>> Generate(std::span<const int32_t> prompt,
                                                const GenerateOptions& options,
                                                const TokenCallback& on_token);

  // Forgets the conversation (empties the KV cache).
  void Reset();
  // Keeps the first n tokens of the conversation and forgets the rest, so a caller can
  // reuse the cache for a shared prefix (a chat re-rendered each turn). n is clamped to
  // [0, tokens().size()].
  void TruncateTo(int64_t n);
  // Every token of the conversation so far, prompts and generated, in order.
  const std::vector<int32_t>& tokens() const;
  // Observes the routing of every MoE layer from now on; an empty callback stops it.
  void SetRoutingCallback(RoutingCallback callback);
  // From now on, guesses every MoE layer's experts from the layers 1..max_distance
  // before it with each predictor and scores the guesses against the true routing
  // (statistics survive Reset). Costs a router product per guessed layer.
  void EnablePredictorAccuracy(int max_distance);
  std::vector<PredictorAccuracy> predictor_accuracy() const;
  // Observes the guesses of the predictors that read hidden states (the cross-layer
  // gates) for the layers 1..max_distance ahead, as the forward pass makes them (routing
  // traces with predictions); enables EnablePredictorAccuracy(max_distance) when it is
  // off or shorter. An empty callback stops it.
  void SetPredictionCallback(int max_distance, PredictionCallback callback);
  int64_t position() const;  // tokens in the KV cache
  int64_t context() const;
  // Bytes of the KV cache's kept rows now, and the peak since the session started or
  // was Reset.
  int64_t kv_bytes() const;
  int64_t kv_peak_bytes() const;
  // Bytes the KV cache holds in memory: its pages (kept rows rounded up to whole pages of
  // 32 positions per KV head), including pages emptied by eviction and kept for reuse.
  // On the GPU, the device's KV allocation (as kv_bytes()).
  int64_t kv_allocated_bytes() const;
  const Stats& stats() const;
  DeviceStats device_stats() const;

 private:
  friend class Model;
  struct Impl;
  explicit Session(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Model {
 public:
  // Maps and validates a GGUF model. Errors name the file and the key or tensor.
  static absl::StatusOr<std::unique_ptr<Model>> Open(const std::string& path,
                                                     const ModelOptions& options);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelInfo& info() const;
  absl::StatusOr<std::unique_ptr<Session>> NewSession(const SessionOptions& options) const;

  // Text of `tokens` with the model's vocabulary (SentencePiece "▁" and <0xNN> byte
  // tokens, and GPT-2 byte-level pieces, are decoded). Unknown ids are skipped.
  std::string Detokenize(std::span<const int32_t> tokens) const;
  // The model's tokenizer (text <-> ids, streaming decode); null when the file has no
  // tokenizer keys. Lives as long as the Model.
  const Tokenizer* tokenizer() const;

 private:
  friend class Session;
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The number of physical cores of this machine (hwloc), at least 1.
int PhysicalCores();

// The machine's streaming read bandwidth in bytes/s with `threads` workers (0: physical
// cores): a read over a buffer far larger than the caches, the best of a few passes.
// Memory-bound work (decode) is measured against it. Takes about half a second.
double MeasureReadBandwidth(int threads = 0);

}  // namespace moex

#endif  // MOEX_MOEX_H_
