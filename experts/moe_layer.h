// One MoE feed-forward layer on the CPU: the router and the experts.
//
// Route() turns the layer's input into, per token, the top-k experts and their weights
// (softmax over all experts, then top-k, optionally renormalised). Forward() runs the
// selected experts (SwiGLU: down(silu(gate x) * up x)) grouped by expert, so that in
// prefill each expert's weights are read once for all the tokens routed to it, and adds
// the shared expert when the layer has one (Qwen2-MoE: scaled by sigmoid(w . x)).
//
// The hybrid scheduler (issue "hybrid execution") will split Forward()'s expert loop
// between the CPU and the GPU; the routing record is what routing traces, the
// predictor and the expert cache consume.
// Thread-safety: the functions are re-entrant; they parallelise internally with TBB.
#ifndef MOEX_EXPERTS_MOE_LAYER_H_
#define MOEX_EXPERTS_MOE_LAYER_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "runtime/core/tensor_view.h"

namespace moex {

struct MoeWeights {
  WeightMatrix router;  // [n_expert][n_embd]
  ExpertStack gate;     // n_expert x [n_ff][n_embd]
  ExpertStack up;       // n_expert x [n_ff][n_embd]
  ExpertStack down;     // n_expert x [n_embd][n_ff]
  // Optional shared expert (always active).
  WeightMatrix shared_gate, shared_up, shared_down;
  WeightMatrix shared_gate_inp;  // [1][n_embd]: sigmoid gate on the shared expert; optional
};

struct RouterConfig {
  int64_t top_k = 2;
  bool norm_topk = true;
};

// Routing of T tokens: expert ids and weights, k per token, token-major.
struct Routing {
  int64_t n_tokens = 0;
  int64_t k = 0;
  std::vector<int32_t> experts;
  std::vector<float> weights;
  std::vector<float> probs;  // softmax over all experts, [n_tokens][n_expert]
};

// x: [n_tokens][n_embd].
void Route(const MoeWeights& w, const RouterConfig& cfg, const float* x, int64_t n_tokens,
           Routing* out);

// out[t] = sum_j weight[t][j] * expert_j(x[t]) (+ shared expert). out: [n_tokens][n_embd],
// overwritten.
void MoeForward(const MoeWeights& w, const Routing& routing, const float* x, int64_t n_tokens,
                float* out);

// Where and when the routed experts of a layer run: a dispatcher gets the active experts
// (ascending ids) and must call `run(e, on_gpu)` once for each, in any order (the hybrid
// executor places them on the CPU or the GPU). The arithmetic does not depend on the
// order or the side: the outputs are combined afterwards in expert order.
using ExpertRun = std::function<absl::Status(int32_t expert, bool on_gpu)>;
using ExpertDispatch =
    std::function<absl::Status(const std::vector<int32_t>& active, const ExpertRun& run)>;
// As above with a dispatcher (null: every expert in id order). Errors are the
// dispatcher's, or kInternal when it skipped an expert.
absl::Status MoeForward(const MoeWeights& w, const Routing& routing, const float* x,
                        int64_t n_tokens, float* out, const ExpertDispatch& dispatch);

// Dense SwiGLU FFN: out = down(silu(gate x) * up x), for the non-MoE layers and the
// shared expert. out: [n_tokens][down.rows], overwritten.
void DenseFfn(const WeightMatrix& gate, const WeightMatrix& up, const WeightMatrix& down,
              const float* x, int64_t n_tokens, float* out);

}  // namespace moex

#endif  // MOEX_EXPERTS_MOE_LAYER_H_
