// What the forward pass (CPU or GPU) shows of each MoE layer to an observer: routing
// traces, statistics and the expert predictors read it.
#ifndef MOEX_RUNTIME_MOE_EVENT_H_
#define MOEX_RUNTIME_MOE_EVENT_H_

#include <cstdint>
#include <functional>

#include "experts/moe_layer.h"

namespace moex {

// What an observer sees of one MoE layer, after its routing and before its experts run:
// for traces, statistics and the expert predictors (which read the hidden states).
struct MoeLayerEvent {
  int64_t layer = 0;
  int64_t pos0 = 0;  // position of the batch's first token
  int64_t n_tokens = 0;
  const Routing* routing = nullptr;
  const float* moe_input = nullptr;  // [n_tokens][n_embd]: the FFN-normed input the router saw
  const float* residual = nullptr;   // [n_tokens][n_embd]: the residual stream after attention
};
using RoutingObserver = std::function<void(const MoeLayerEvent& event)>;

}  // namespace moex

#endif  // MOEX_RUNTIME_MOE_EVENT_H_
