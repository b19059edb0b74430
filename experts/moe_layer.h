// One MoE feed-forward layer on the CPU: the router and the experts.
//
// Route() turns the layer's input into, per token, the top-k experts and their weights
// (softmax over all experts, then top-k, optionally renormalised). Forward() runs the
// selected experts (SwiGLU: down(silu(gate x) * up x)) grouped by expert, so that in
// prefill each expert's weights are read once for all the tokens routed to it, and adds
// the shared expert when the layer has one (Qwen2-MoE: scaled by sigmoid(w . x)).
//
// The hybrid executor (experts/hybrid_moe.h) places each expert on the CPU or the GPU
// through an ExpertDispatch; the routing record is what routing traces, the predictor and
// the expert cache consume.
// Thread-safety: the functions are re-entrant; they parallelise internally with TBB.
#ifndef MOEX_EXPERTS_MOE_LAYER_H_
#define MOEX_EXPERTS_MOE_LAYER_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "kernels_cpu/ops.h"
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

// Buffers MoeForward and DenseFfn reuse from call to call. The caller owns them (the
// forward pass keeps one per sequence), so once they have grown a decode step allocates
// nothing. Contents between calls are meaningless. Not to be shared by concurrent calls.
struct MoeScratch {
  std::vector<int32_t> offset;            // [n_expert + 1]: where each expert's rows start
  std::vector<int32_t> cursor;            // counting-sort cursors, then claims of a dispatch
  std::vector<int32_t> tokens;            // token of each routed row, grouped by expert
  std::vector<float> weights;             // routing weight of each routed row
  std::vector<int32_t> active;            // experts with tokens, ascending
  std::vector<float> g, u, y;             // per routed row: gate (then SwiGLU), up, expert output
  std::vector<float> sg, su, sy, slogit;  // the shared expert's, per token
  std::vector<kcpu::MatMulTask> tasks;
};

// out[t] = sum_j weight[t][j] * expert_j(x[t]) (+ shared expert). out: [n_tokens][n_embd],
// overwritten. Every expert's tokens read x in place; the gate and up products of all
// active experts (and of the shared expert) run as one parallel region over (expert, row
// block), their down products as a second, so a decode step's eight small experts cost
// two fork/joins instead of twenty-four. The result is the same bit for bit as running
// the experts one at a time: each output is the same dot product, and the combine goes in
// expert order.
void MoeForward(const MoeWeights& w, const Routing& routing, const float* x, int64_t n_tokens,
                float* out);

// Where the routed experts of a layer run: a dispatcher gets the active experts
// (ascending ids) and must call `run(e, on_gpu)` once for each, in any order (the hybrid
// executor places them on the CPU or the GPU and books each one's time on its side).
// `run` claims the expert; the arithmetic of all claimed experts then runs on the CPU
// after the dispatcher returns, in the one batched region above (there is no GPU
// arithmetic yet: the simulated device charges its clock from cost models, not from the
// time a callback takes). Neither the order nor the side changes a bit of the result.
using ExpertRun = std::function<absl::Status(int32_t expert, bool on_gpu)>;
using ExpertDispatch =
    std::function<absl::Status(const std::vector<int32_t>& active, const ExpertRun& run)>;
// As above with a dispatcher (null: every expert) and caller-owned scratch (null: buffers
// of this call). Errors are the dispatcher's; kInternal when it ran an inactive expert or
// skipped an active one; kInvalidArgument for an expert id outside the layer.
absl::Status MoeForward(const MoeWeights& w, const Routing& routing, const float* x,
                        int64_t n_tokens, float* out, const ExpertDispatch& dispatch,
                        MoeScratch* scratch = nullptr);

// Dense SwiGLU FFN: out = down(silu(gate x) * up x), for the non-MoE layers and the
// shared expert. out: [n_tokens][down.rows], overwritten. `scratch` as for MoeForward.
void DenseFfn(const WeightMatrix& gate, const WeightMatrix& up, const WeightMatrix& down,
              const float* x, int64_t n_tokens, float* out, MoeScratch* scratch = nullptr);

}  // namespace moex

#endif  // MOEX_EXPERTS_MOE_LAYER_H_
