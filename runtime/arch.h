// Architectures: what distinguishes one MoE family from another, as data.
//
// Each supported `general.architecture` is one row of a table (arch.cc): RoPE style,
// router normalisation, where q/k norms sit. The hyper-parameters come from the file's
// `{arch}.*` keys with the ecosystem's defaults. Adding an architecture whose layers
// are built from the same pieces (deepseek2's dense first layers, gpt-oss's biases) is a
// table row plus, where it has a new piece (MLA), one new file for that piece.
// Thread-safety: immutable data.
#ifndef MOEX_RUNTIME_ARCH_H_
#define MOEX_RUNTIME_ARCH_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/core/gguf.h"

namespace moex {

enum class RopeStyle {
  kNormal,  // rotate pairs (2i, 2i+1): llama, Mixtral
  kNeox,    // rotate pairs (i, i + n_rot/2): Qwen, OLMoE (HF "rotate_half")
};

enum class QkNorm {
  kNone,
  kPerHead,    // RMSNorm over each head's head_dim values (Qwen3-MoE)
  kFullWidth,  // RMSNorm over all heads together, before the split (OLMoE)
};

struct ArchInfo {
  std::string_view name;  // general.architecture
  RopeStyle rope;
  QkNorm qk_norm;
  // Renormalise the top-k routing weights to sum to 1 (Mixtral's softmax over the
  // selected logits is the same thing; Qwen3-MoE norm_topk_prob; not Qwen2-MoE/OLMoE).
  bool norm_topk;
};

// nullptr when moex does not know the architecture.
const ArchInfo* FindArch(std::string_view name);
// The names moex supports, for error messages ("llama, qwen2moe, ...").
std::string SupportedArchNames();

struct HParams {
  const ArchInfo* arch = nullptr;
  int64_t n_vocab = 0;
  int64_t n_ctx_train = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;  // key_length; value_length must equal it
  int64_t n_rot = 0;
  float rope_freq_base = 10000.0f;
  float rms_eps = 1e-5f;
  int64_t n_ff = 0;      // dense FFN width
  int64_t n_expert = 0;  // 0: dense model
  int64_t n_expert_used = 0;
  int64_t n_ff_exp = 0;    // routed expert width
  int64_t n_ff_shexp = 0;  // shared expert width (0: none)

  bool is_moe() const { return n_expert > 0; }
  int64_t q_dim() const { return n_head * head_dim; }
  int64_t kv_dim() const { return n_head_kv * head_dim; }
};

// Reads the hyper-parameters of `file`. Errors name the file and the key; values that
// make no sense (zero heads, head counts that do not divide, top-k > experts) are
// kInvalidArgument.
absl::StatusOr<HParams> ReadHParams(const GgufFile& file);

}  // namespace moex

#endif  // MOEX_RUNTIME_ARCH_H_
