// Synthetic models with random weights (`moex gen`): every supported architecture in
// its own GGUF layout, quantised with moex's quantisers, so that tests and benchmarks
// have models of any shape without downloads.
//
// Weights ~ N(0, 0.05^2) (like ../shared/testdata's models), norm weights ~ 1 + N(0, 0.05^2).
// Type mixes follow llama.cpp's rules for Q4_K_M / Q5_K_M (llama-quant.cpp, read for the
// rule, not copied): attn_v and ffn_down get Q6_K in the "more bits" layers (the first and
// last eighth, and every third in between), the output head gets Q6_K; rows whose length
// is not a multiple of 256 fall back to a 32-block type.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "kernels_cpu/parallel.h"
#include "kernels_cpu/quant.h"
#include "moex/info.h"
#include "runtime/arch.h"
#include "runtime/core/gguf.h"
#include "runtime/core/status_macros.h"
#include "tbb/blocked_range.h"

namespace moex {
namespace {

using kcpu::GgmlType;

struct TypePlan {
  GgmlType base;
  bool k_mix = false;  // q4_k_m / q5_k_m rules
};

absl::StatusOr<TypePlan> ParseType(const std::string& name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "q4_k_m") return TypePlan{GgmlType::kQ4_K, true};
  if (n == "q5_k_m") return TypePlan{GgmlType::kQ5_K, true};
  const kcpu::TypeTraits* t = kcpu::FindTypeTraitsByName(n.c_str());
  if (t == nullptr || !t->can_quantize || t->type == GgmlType::kQ8_K) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown or unsupported --type '", name,
        "' (use f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K, q4_k_m, q5_k_m)"));
  }
  return TypePlan{t->type, false};
}

// llama.cpp's use_more_bits(i_layer, n_layers).
bool MoreBits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// A 256-block type needs rows that are multiples of 256; otherwise use the 32-block type
// of about the same precision (llama.cpp's fallback table).
GgmlType FitType(GgmlType t, int64_t cols) {
  const kcpu::TypeTraits& tt = kcpu::GetTypeTraits(t);
  if (cols % tt.block_elems == 0) return t;
  switch (t) {
    case GgmlType::kQ4_K:
      return GgmlType::kQ5_0;
    case GgmlType::kQ5_K:
      return GgmlType::kQ5_1;
    case GgmlType::kQ6_K:
      return GgmlType::kQ8_0;
    default:
      return GgmlType::kF16;
  }
}

// Adds tensors whose random values are drawn and quantised only when the file is
// written (GgufWriter::AddTensorDeferred), one tensor at a time, in file order: the
// values are reproducible from the seed and a large model never sits whole in memory.
class Builder {
 public:
  Builder(GgufWriter* w, uint64_t seed, std::function<void(double)> progress)
      : w_(w), rng_(seed), progress_(std::move(progress)) {}

  absl::Status Tensor(const std::string& name, std::vector<int64_t> dims, GgmlType type, float mean,
                      float stddev) {
    type = FitType(type, dims[0]);
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    total_ += n;
    const int64_t cols = dims[0];
    return w_->AddTensorDeferred(
        name, std::move(dims), static_cast<uint32_t>(type),
        [this, n, cols, type, mean, stddev](std::span<uint8_t> out) {
          std::normal_distribution<float> dist(mean, stddev);
          std::vector<float> v(n);
          for (float& x : v) x = dist(rng_);
          const int64_t row_bytes = kcpu::RowBytes(kcpu::GetTypeTraits(type), cols);
          // Drawing is sequential (one stream: reproducible); quantising, the slow part
          // for k-quants, runs on every core.
          ParallelFor(tbb::blocked_range<int64_t>(0, n / cols, 16),
                      [&](const tbb::blocked_range<int64_t>& r) {
                        for (int64_t i = r.begin(); i < r.end(); ++i) {
                          kcpu::QuantizeRow(type, v.data() + i * cols, out.data() + i * row_bytes,
                                            cols);
                        }
                      });
          done_ += n;
          if (progress_) progress_(static_cast<double>(done_) / total_);
          return absl::OkStatus();
        });
  }

 private:
  GgufWriter* w_;
  std::mt19937_64 rng_;
  std::function<void(double)> progress_;
  int64_t total_ = 0, done_ = 0;
};

// A vocabulary for models made without --vocab: SentencePiece-style, with <unk>, <s>,
// </s>, the 256 byte tokens (so any text can be written) and printable ASCII pieces.
void AddByteVocab(GgufWriter* w, int64_t n_vocab) {
  std::vector<GgufValue> tokens, scores, types;
  auto add = [&](std::string piece, float score, int32_t type) {
    tokens.push_back(GgufValue::String(std::move(piece)));
    scores.push_back(GgufValue::Float(GgufType::kFloat32, score));
    types.push_back(GgufValue::Int(GgufType::kInt32, type));
  };
  add("<unk>", 0, 2);
  add("<s>", 0, 3);
  add("</s>", 0, 3);
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    snprintf(buf, sizeof(buf), "<0x%02X>", b);
    add(buf, 0, 6);
  }
  add("\xE2\x96\x81", -1, 1);  // "▁", the space
  for (int c = '!'; c <= '~'; ++c) add(std::string(1, static_cast<char>(c)), -2, 1);
  // The rest: word-like pieces ("▁ka", "▁kamo", ...) built from syllables, so that a
  // random model's output reads as pseudo-words rather than stray bytes.
  static constexpr const char* kSyl[] = {"ka", "mo", "ri", "ne", "su", "ta", "lo", "vi",
                                         "de", "pa", "zu", "ho", "me", "ni", "ro", "sa"};
  for (int64_t i = static_cast<int64_t>(tokens.size()), j = 0; i < n_vocab; ++i, ++j) {
    std::string piece = "\xE2\x96\x81";
    for (int64_t k = j;; k = k / 16 - 1) {
      piece += kSyl[k % 16];
      if (k < 16) break;
    }
    add(piece, -3.0f - static_cast<float>(j) / n_vocab, 1);
  }
  tokens.resize(n_vocab);
  scores.resize(n_vocab);
  types.resize(n_vocab);
  w->SetString("tokenizer.ggml.model", "llama");
  w->Set("tokenizer.ggml.tokens", GgufValue::Array(GgufType::kString, std::move(tokens)));
  w->Set("tokenizer.ggml.scores", GgufValue::Array(GgufType::kFloat32, std::move(scores)));
  w->Set("tokenizer.ggml.token_type", GgufValue::Array(GgufType::kInt32, std::move(types)));
  w->SetU32("tokenizer.ggml.bos_token_id", 1);
  w->SetU32("tokenizer.ggml.eos_token_id", 2);
  w->SetU32("tokenizer.ggml.unknown_token_id", 0);
  w->SetBool("tokenizer.ggml.add_bos_token", true);
  w->SetBool("tokenizer.ggml.add_eos_token", false);
}

}  // namespace

absl::Status WriteSyntheticModel(const SyntheticModelSpec& spec_in, const std::string& out_path,
                                 const std::function<void(double)>& progress) {
  SyntheticModelSpec s = spec_in;
  const ArchInfo* arch = FindArch(s.arch);
  if (arch == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported --arch '", s.arch,
                                                   "' (moex supports ", SupportedArchNames(), ")"));
  }
  MOEX_ASSIGN_OR_RETURN(TypePlan plan, ParseType(s.type));
  if (s.head_dim == 0 && s.heads > 0) s.head_dim = s.hidden / s.heads;
  if (s.arch == "qwen2moe" && s.shared_ffn == 0) s.shared_ffn = 2 * s.hidden;
  auto bad = [](std::string m) { return absl::InvalidArgumentError(m); };
  if (s.hidden <= 0 || s.layers <= 0 || s.heads <= 0 || s.kv_heads <= 0 || s.head_dim <= 0 ||
      s.ffn <= 0 || s.context <= 0) {
    return bad(
        "--hidden, --layers, --heads, --kv-heads, --head-dim, --ffn, --ctx must be positive");
  }
  if (s.heads % s.kv_heads) return bad("--kv-heads must divide --heads");
  if (s.head_dim % 2) return bad("--head-dim must be even (RoPE rotates pairs)");
  if (s.hidden % 32) return bad("--hidden must be a multiple of 32 (quant block size)");
  if (s.experts == 0 && s.arch != "llama")
    return bad("only --arch llama can be dense (--experts 0)");
  if (s.experts < 0 || (s.experts > 0 && (s.top_k <= 0 || s.top_k > s.experts))) {
    return bad("--top-k must be in 1..--experts");
  }

  GgufWriter w;
  const std::string a = s.arch;
  w.SetString("general.architecture", a);
  w.SetString("general.name", absl::StrCat("moex-synthetic-", a, "-", s.type));
  w.SetU32("general.alignment", 32);
  w.SetU32(a + ".context_length", static_cast<uint32_t>(s.context));
  w.SetU32(a + ".embedding_length", static_cast<uint32_t>(s.hidden));
  w.SetU32(a + ".block_count", static_cast<uint32_t>(s.layers));
  w.SetU32(a + ".feed_forward_length", static_cast<uint32_t>(s.ffn));
  w.SetU32(a + ".attention.head_count", static_cast<uint32_t>(s.heads));
  w.SetU32(a + ".attention.head_count_kv", static_cast<uint32_t>(s.kv_heads));
  w.SetU32(a + ".attention.key_length", static_cast<uint32_t>(s.head_dim));
  w.SetU32(a + ".attention.value_length", static_cast<uint32_t>(s.head_dim));
  w.SetU32(a + ".rope.dimension_count", static_cast<uint32_t>(s.head_dim));
  w.SetF32(a + ".rope.freq_base", arch->rope == RopeStyle::kNeox ? 1000000.0f : 10000.0f);
  w.SetF32(a + ".attention.layer_norm_rms_epsilon", 1e-6f);
  if (s.experts > 0) {
    w.SetU32(a + ".expert_count", static_cast<uint32_t>(s.experts));
    w.SetU32(a + ".expert_used_count", static_cast<uint32_t>(s.top_k));
    w.SetU32(a + ".expert_feed_forward_length", static_cast<uint32_t>(s.ffn));
    if (s.shared_ffn > 0) {
      w.SetU32(a + ".expert_shared_feed_forward_length", static_cast<uint32_t>(s.shared_ffn));
    }
  }
  w.SetU32("general.quantization_version", 2);

  int64_t n_vocab = s.vocab_size;
  std::unique_ptr<GgufFile> vocab_file;
  if (!s.vocab_path.empty()) {
    MOEX_ASSIGN_OR_RETURN(vocab_file, GgufFile::Open(s.vocab_path));
    MOEX_ASSIGN_OR_RETURN(const GgufValue* toks, vocab_file->GetArray("tokenizer.ggml.tokens"));
    const int64_t vn = static_cast<int64_t>(toks->elems().size());
    if (n_vocab != 0 && n_vocab != vn) {
      return bad(absl::StrCat("--vocab-size ", n_vocab, " differs from the ", vn, " tokens of ",
                              s.vocab_path));
    }
    n_vocab = vn;
    w.CopyMetadata(*vocab_file, "tokenizer.");
  } else {
    if (n_vocab == 0) n_vocab = 4096;
    if (n_vocab < 512) return bad("--vocab-size must be at least 512 for the built-in vocabulary");
    AddByteVocab(&w, n_vocab);
  }

  const GgmlType base = plan.base;
  const GgmlType norm_t = GgmlType::kF32;
  const GgmlType router_t = GgmlType::kF32;
  const GgmlType head_t = plan.k_mix ? GgmlType::kQ6_K : base;
  const int64_t E = s.hidden, Q = s.heads * s.head_dim, KV = s.kv_heads * s.head_dim, F = s.ffn;
  constexpr float kStd = 0.05f;
  Builder b(&w, s.seed, progress);
  MOEX_RETURN_IF_ERROR(b.Tensor("token_embd.weight", {E, n_vocab}, base, 0, kStd));
  MOEX_RETURN_IF_ERROR(b.Tensor("output_norm.weight", {E}, norm_t, 1, kStd));
  MOEX_RETURN_IF_ERROR(b.Tensor("output.weight", {E, n_vocab}, head_t, 0, kStd));
  for (int64_t i = 0; i < s.layers; ++i) {
    const std::string p = absl::StrCat("blk.", i, ".");
    const GgmlType more = plan.k_mix && MoreBits(i, s.layers) ? GgmlType::kQ6_K : base;
    MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_norm.weight", {E}, norm_t, 1, kStd));
    MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_q.weight", {E, Q}, base, 0, kStd));
    MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_k.weight", {E, KV}, base, 0, kStd));
    MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_v.weight", {E, KV}, more, 0, kStd));
    MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_output.weight", {Q, E}, base, 0, kStd));
    if (a == "qwen2moe") {
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_q.bias", {Q}, norm_t, 0, kStd));
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_k.bias", {KV}, norm_t, 0, kStd));
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_v.bias", {KV}, norm_t, 0, kStd));
    }
    if (arch->qk_norm == QkNorm::kPerHead) {
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_q_norm.weight", {s.head_dim}, norm_t, 1, kStd));
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_k_norm.weight", {s.head_dim}, norm_t, 1, kStd));
    } else if (arch->qk_norm == QkNorm::kFullWidth) {
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_q_norm.weight", {Q}, norm_t, 1, kStd));
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "attn_k_norm.weight", {KV}, norm_t, 1, kStd));
    }
    MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_norm.weight", {E}, norm_t, 1, kStd));
    if (s.experts == 0) {
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_gate.weight", {E, F}, base, 0, kStd));
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_up.weight", {E, F}, base, 0, kStd));
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_down.weight", {F, E}, more, 0, kStd));
    } else {
      const int64_t X = s.experts;
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_gate_inp.weight", {E, X}, router_t, 0, kStd));
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_gate_exps.weight", {E, F, X}, base, 0, kStd));
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_up_exps.weight", {E, F, X}, base, 0, kStd));
      MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_down_exps.weight", {F, E, X}, more, 0, kStd));
      if (s.shared_ffn > 0) {
        const int64_t S = s.shared_ffn;
        MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_gate_inp_shexp.weight", {E}, router_t, 0, kStd));
        MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_gate_shexp.weight", {E, S}, base, 0, kStd));
        MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_up_shexp.weight", {E, S}, base, 0, kStd));
        MOEX_RETURN_IF_ERROR(b.Tensor(p + "ffn_down_shexp.weight", {S, E}, more, 0, kStd));
      }
    }
  }
  return w.WriteFile(out_path);
}

}  // namespace moex
