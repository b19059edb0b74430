#include "runtime/model_weights.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels_cpu/quant.h"
#include "runtime/core/status_macros.h"

namespace moex {
namespace {

std::string DimsString(const std::vector<int64_t>& d) {
  return absl::StrCat("[", absl::StrJoin(d, ", "), "]");
}

class Binder {
 public:
  explicit Binder(const GgufFile& f) : f_(f) {}

  // The tensor `name` with exactly `dims` (ne[0] first); nullptr when absent and
  // !required.
  absl::StatusOr<const GgufTensorInfo*> Get(const std::string& name,
                                            const std::vector<int64_t>& dims, bool required) {
    const GgufTensorInfo* t = f_.FindTensor(name);
    if (t == nullptr) {
      if (!required) return nullptr;
      return absl::NotFoundError(
          absl::StrCat(f_.path(), ": required tensor '", name, "' is missing"));
    }
    // Trailing 1s are insignificant ([n] and [n, 1] are the same vector).
    std::vector<int64_t> have = t->dims, want = dims;
    while (have.size() > 1 && have.back() == 1) have.pop_back();
    while (want.size() > 1 && want.back() == 1) want.pop_back();
    if (have != want) {
      return absl::InvalidArgumentError(absl::StrCat(f_.path(), ": tensor '", name, "' has shape ",
                                                     DimsString(t->dims), ", expected ",
                                                     DimsString(dims)));
    }
    const kcpu::TypeTraits* tt = kcpu::FindTypeTraits(t->type);
    if (tt == nullptr || !tt->can_dequantize) {
      return absl::UnimplementedError(
          absl::StrCat(f_.path(), ": tensor '", name, "' has type ", tt ? tt->name : "id ",
                       tt ? "" : absl::StrCat(t->type), ", which moex cannot compute with"));
    }
    return t;
  }

  absl::StatusOr<WeightMatrix> Matrix(const std::string& name, int64_t rows, int64_t cols,
                                      bool required = true) {
    MOEX_ASSIGN_OR_RETURN(const GgufTensorInfo* t, Get(name, {cols, rows}, required));
    if (t == nullptr) return WeightMatrix{};
    const auto type = static_cast<kcpu::GgmlType>(t->type);
    return WeightMatrix{type, t->data, rows, cols, kcpu::RowBytes(kcpu::GetTypeTraits(type), cols)};
  }

  absl::StatusOr<ExpertStack> Experts(const std::string& name, int64_t n, int64_t rows,
                                      int64_t cols) {
    MOEX_ASSIGN_OR_RETURN(const GgufTensorInfo* t, Get(name, {cols, rows, n}, true));
    const auto type = static_cast<kcpu::GgmlType>(t->type);
    return ExpertStack{type, t->data, n,
                       rows, cols,    kcpu::RowBytes(kcpu::GetTypeTraits(type), cols)};
  }

  // A vector dequantised to F32; empty when absent and !required.
  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int64_t n,
                                            bool required = true) {
    MOEX_ASSIGN_OR_RETURN(const GgufTensorInfo* t, Get(name, {n}, required));
    std::vector<float> v;
    if (t == nullptr) return v;
    v.resize(n);
    kcpu::DequantizeRow(static_cast<kcpu::GgmlType>(t->type), t->data, v.data(), n);
    return v;
  }

 private:
  const GgufFile& f_;
};

}  // namespace

absl::StatusOr<ModelWeights> BindWeights(const GgufFile& f, const HParams& hp_in) {
  ModelWeights m;
  m.hp = hp_in;
  HParams& hp = m.hp;
  Binder b(f);

  const GgufTensorInfo* embd = f.FindTensor("token_embd.weight");
  if (embd == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(f.path(), ": required tensor 'token_embd.weight' is missing"));
  }
  if (embd->dims.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(f.path(),
                                                   ": tensor 'token_embd.weight' has shape ",
                                                   DimsString(embd->dims), ", expected 2-D"));
  }
  hp.n_vocab = embd->dims[1];
  MOEX_ASSIGN_OR_RETURN(m.tok_embd, b.Matrix("token_embd.weight", hp.n_vocab, hp.n_embd));
  MOEX_ASSIGN_OR_RETURN(m.output_norm, b.Vector("output_norm.weight", hp.n_embd));
  MOEX_ASSIGN_OR_RETURN(m.output, b.Matrix("output.weight", hp.n_vocab, hp.n_embd, false));
  if (!m.output.valid()) m.output = m.tok_embd;

  const int64_t E = hp.n_embd, Q = hp.q_dim(), KV = hp.kv_dim();
  m.layers.resize(hp.n_layer);
  for (int64_t i = 0; i < hp.n_layer; ++i) {
    LayerWeights& l = m.layers[i];
    const std::string p = absl::StrCat("blk.", i, ".");
    MOEX_ASSIGN_OR_RETURN(l.attn_norm, b.Vector(p + "attn_norm.weight", E));
    MOEX_ASSIGN_OR_RETURN(l.ffn_norm, b.Vector(p + "ffn_norm.weight", E));
    MOEX_ASSIGN_OR_RETURN(l.wq, b.Matrix(p + "attn_q.weight", Q, E));
    MOEX_ASSIGN_OR_RETURN(l.wk, b.Matrix(p + "attn_k.weight", KV, E));
    MOEX_ASSIGN_OR_RETURN(l.wv, b.Matrix(p + "attn_v.weight", KV, E));
    MOEX_ASSIGN_OR_RETURN(l.wo, b.Matrix(p + "attn_output.weight", E, Q));
    MOEX_ASSIGN_OR_RETURN(l.bq, b.Vector(p + "attn_q.bias", Q, false));
    MOEX_ASSIGN_OR_RETURN(l.bk, b.Vector(p + "attn_k.bias", KV, false));
    MOEX_ASSIGN_OR_RETURN(l.bv, b.Vector(p + "attn_v.bias", KV, false));
    if (hp.arch->qk_norm != QkNorm::kNone) {
      const bool per_head = hp.arch->qk_norm == QkNorm::kPerHead;
      MOEX_ASSIGN_OR_RETURN(l.q_norm,
                            b.Vector(p + "attn_q_norm.weight", per_head ? hp.head_dim : Q));
      MOEX_ASSIGN_OR_RETURN(l.k_norm,
                            b.Vector(p + "attn_k_norm.weight", per_head ? hp.head_dim : KV));
    }
    if (!hp.is_moe()) {
      MOEX_ASSIGN_OR_RETURN(l.ffn_gate, b.Matrix(p + "ffn_gate.weight", hp.n_ff, E));
      MOEX_ASSIGN_OR_RETURN(l.ffn_up, b.Matrix(p + "ffn_up.weight", hp.n_ff, E));
      MOEX_ASSIGN_OR_RETURN(l.ffn_down, b.Matrix(p + "ffn_down.weight", E, hp.n_ff));
      continue;
    }
    const int64_t NE = hp.n_expert, F = hp.n_ff_exp;
    MOEX_ASSIGN_OR_RETURN(l.moe.router, b.Matrix(p + "ffn_gate_inp.weight", NE, E));
    MOEX_ASSIGN_OR_RETURN(l.moe.gate, b.Experts(p + "ffn_gate_exps.weight", NE, F, E));
    MOEX_ASSIGN_OR_RETURN(l.moe.up, b.Experts(p + "ffn_up_exps.weight", NE, F, E));
    MOEX_ASSIGN_OR_RETURN(l.moe.down, b.Experts(p + "ffn_down_exps.weight", NE, E, F));
    if (hp.n_ff_shexp > 0) {
      const int64_t S = hp.n_ff_shexp;
      MOEX_ASSIGN_OR_RETURN(l.moe.shared_gate, b.Matrix(p + "ffn_gate_shexp.weight", S, E));
      MOEX_ASSIGN_OR_RETURN(l.moe.shared_up, b.Matrix(p + "ffn_up_shexp.weight", S, E));
      MOEX_ASSIGN_OR_RETURN(l.moe.shared_down, b.Matrix(p + "ffn_down_shexp.weight", E, S));
      MOEX_ASSIGN_OR_RETURN(l.moe.shared_gate_inp,
                            b.Matrix(p + "ffn_gate_inp_shexp.weight", 1, E, false));
    }
  }
  return m;
}

int64_t DenseMatrixBytes(const LayerWeights& l) {
  int64_t bytes = 0;
  for (const WeightMatrix* m :
       {&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down, &l.moe.router,
        &l.moe.shared_gate, &l.moe.shared_up, &l.moe.shared_down, &l.moe.shared_gate_inp}) {
    bytes += m->bytes();  // 0 for an absent matrix
  }
  return bytes;
}

}  // namespace moex
