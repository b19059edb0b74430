// The weights of a model, bound by name from a GGUF file and checked against the
// hyper-parameters. Matrices are views into the file's mapping; small vectors (norms,
// biases) are dequantised to F32 copies because every token reads them whole.
//
// Tensor names follow the ecosystem's GGUF conventions (llama.cpp's llama-arch.cpp):
// token_embd, output_norm, output (absent: tied to token_embd), and per layer
// blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, attn_q_norm, attn_k_norm,
// ffn_norm, ffn_gate, ffn_up, ffn_down, ffn_gate_inp, ffn_{gate,up,down}_exps,
// ffn_{gate,up,down}_shexp, ffn_gate_inp_shexp}, with .weight / .bias.
// Thread-safety: immutable after Bind.
#ifndef MOEX_RUNTIME_MODEL_WEIGHTS_H_
#define MOEX_RUNTIME_MODEL_WEIGHTS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "experts/moe_layer.h"
#include "runtime/arch.h"
#include "runtime/core/gguf.h"
#include "runtime/core/tensor_view.h"

namespace moex {

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;
  std::vector<float> q_norm, k_norm;  // empty when the architecture has none
  std::vector<float> bq, bk, bv;      // empty when the file has no biases
  WeightMatrix wq, wk, wv, wo;
  WeightMatrix ffn_gate, ffn_up, ffn_down;  // dense layers
  MoeWeights moe;                           // MoE layers
};

struct ModelWeights {
  HParams hp;
  WeightMatrix tok_embd;  // [n_vocab][n_embd]
  std::vector<float> output_norm;
  WeightMatrix output;  // [n_vocab][n_embd]; tok_embd when tied
  std::vector<LayerWeights> layers;
};

// Binds and checks every tensor the architecture needs. Errors name the file and the
// tensor: missing (kNotFound), wrong shape (kInvalidArgument, with expected and found
// dims), or a type moex cannot compute with (kUnimplemented).
absl::StatusOr<ModelWeights> BindWeights(const GgufFile& file, const HParams& hp);

// Bytes of a layer's weight matrices other than its routed experts (attention, dense FFN,
// router, shared expert): what a GPU holds of the layer beside its expert slots.
int64_t DenseMatrixBytes(const LayerWeights& l);

}  // namespace moex

#endif  // MOEX_RUNTIME_MODEL_WEIGHTS_H_
