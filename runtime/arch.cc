#include "runtime/arch.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/core/status_macros.h"

namespace moex {
namespace {

// Facts from each family's reference implementation (HF transformers modelling files)
// and llama.cpp's GGUF conventions.
constexpr ArchInfo kArchs[] = {
    {"llama", RopeStyle::kNormal, QkNorm::kNone, /*norm_topk=*/true},
    {"qwen2moe", RopeStyle::kNeox, QkNorm::kNone, /*norm_topk=*/false},
    {"qwen3moe", RopeStyle::kNeox, QkNorm::kPerHead, /*norm_topk=*/true},
    {"olmoe", RopeStyle::kNeox, QkNorm::kFullWidth, /*norm_topk=*/false},
};

}  // namespace

const ArchInfo* FindArch(std::string_view name) {
  for (const ArchInfo& a : kArchs) {
    if (a.name == name) return &a;
  }
  return nullptr;
}

std::string SupportedArchNames() {
  std::vector<std::string> names;
  for (const ArchInfo& a : kArchs) names.emplace_back(a.name);
  return absl::StrJoin(names, ", ");
}

absl::StatusOr<HParams> ReadHParams(const GgufFile& f) {
  HParams hp;
  MOEX_ASSIGN_OR_RETURN(std::string_view arch_sv, f.GetString("general.architecture"));
  // Debian's Abseil has its own string_view type, so StrCat takes std::string here.
  const std::string arch_name(arch_sv);
  hp.arch = FindArch(arch_name);
  if (hp.arch == nullptr) {
    return absl::UnimplementedError(absl::StrCat(f.path(), ": unsupported architecture '",
                                                 arch_name, "' (moex supports ",
                                                 SupportedArchNames(), ")"));
  }
  const std::string p = absl::StrCat(arch_name, ".");
  auto key = [&p](const char* k) { return absl::StrCat(p, k); };

  MOEX_ASSIGN_OR_RETURN(hp.n_embd, f.GetInt(key("embedding_length")));
  MOEX_ASSIGN_OR_RETURN(hp.n_layer, f.GetInt(key("block_count")));
  MOEX_ASSIGN_OR_RETURN(hp.n_head, f.GetInt(key("attention.head_count")));
  MOEX_ASSIGN_OR_RETURN(hp.n_head_kv, f.GetIntOr(key("attention.head_count_kv"), hp.n_head));
  MOEX_ASSIGN_OR_RETURN(hp.n_ctx_train, f.GetIntOr(key("context_length"), 4096));
  MOEX_ASSIGN_OR_RETURN(hp.n_ff, f.GetIntOr(key("feed_forward_length"), 0));
  MOEX_ASSIGN_OR_RETURN(hp.n_expert, f.GetIntOr(key("expert_count"), 0));
  MOEX_ASSIGN_OR_RETURN(hp.n_expert_used, f.GetIntOr(key("expert_used_count"), 0));
  MOEX_ASSIGN_OR_RETURN(hp.n_ff_exp, f.GetIntOr(key("expert_feed_forward_length"), hp.n_ff));
  MOEX_ASSIGN_OR_RETURN(hp.n_ff_shexp, f.GetIntOr(key("expert_shared_feed_forward_length"), 0));
  MOEX_ASSIGN_OR_RETURN(double eps, f.GetFloatOr(key("attention.layer_norm_rms_epsilon"), 1e-5));
  hp.rms_eps = static_cast<float>(eps);
  MOEX_ASSIGN_OR_RETURN(double base, f.GetFloatOr(key("rope.freq_base"), 10000.0));
  hp.rope_freq_base = static_cast<float>(base);

  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", what));
  };
  if (hp.n_embd <= 0 || hp.n_embd > (1 << 20)) {
    return bad(absl::StrCat(key("embedding_length"), " = ", hp.n_embd, " is out of range"));
  }
  if (hp.n_layer <= 0 || hp.n_layer > 4096) {
    return bad(absl::StrCat(key("block_count"), " = ", hp.n_layer, " is out of range"));
  }
  if (hp.n_head <= 0 || hp.n_head > 4096 || hp.n_head_kv <= 0 || hp.n_head % hp.n_head_kv) {
    return bad(absl::StrCat("attention heads ", hp.n_head, " / kv heads ", hp.n_head_kv,
                            ": kv heads must be positive and divide the heads"));
  }
  MOEX_ASSIGN_OR_RETURN(hp.head_dim,
                        f.GetIntOr(key("attention.key_length"), hp.n_embd / hp.n_head));
  MOEX_ASSIGN_OR_RETURN(int64_t v_dim, f.GetIntOr(key("attention.value_length"), hp.head_dim));
  if (hp.head_dim <= 0 || hp.head_dim > 4096 || v_dim != hp.head_dim) {
    return bad(absl::StrCat("head dimension ", hp.head_dim, " (value ", v_dim,
                            ") is unsupported: key and value lengths must be equal and positive"));
  }
  MOEX_ASSIGN_OR_RETURN(hp.n_rot, f.GetIntOr(key("rope.dimension_count"), hp.head_dim));
  if (hp.n_rot <= 0 || hp.n_rot > hp.head_dim || hp.n_rot % 2) {
    return bad(absl::StrCat(key("rope.dimension_count"), " = ", hp.n_rot,
                            " must be even and at most the head dimension ", hp.head_dim));
  }
  if (hp.n_expert < 0 || hp.n_expert > 4096) {
    return bad(absl::StrCat(key("expert_count"), " = ", hp.n_expert, " is out of range"));
  }
  if (hp.is_moe()) {
    if (hp.n_expert_used <= 0 || hp.n_expert_used > hp.n_expert) {
      return bad(absl::StrCat(key("expert_used_count"), " = ", hp.n_expert_used, " must be in 1..",
                              hp.n_expert, " (the expert count)"));
    }
    if (hp.n_ff_exp <= 0) return bad(absl::StrCat("expert FFN width ", hp.n_ff_exp, " <= 0"));
  } else if (hp.n_ff <= 0) {
    return bad(absl::StrCat(key("feed_forward_length"), " = ", hp.n_ff, " must be positive"));
  }
  if (hp.n_ctx_train <= 0) hp.n_ctx_train = 4096;
  return hp;
}

}  // namespace moex
