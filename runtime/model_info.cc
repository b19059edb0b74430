#include "runtime/model_info.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels_cpu/quant.h"
#include "runtime/core/status_macros.h"
#include "runtime/vocab.h"

namespace moex {

ModelInfo MakeModelInfo(const GgufFile& f, const ModelWeights& w) {
  const HParams& hp = w.hp;
  ModelInfo info;
  info.path = f.path();
  info.architecture = std::string(hp.arch->name);
  if (auto name = f.GetString("general.name"); name.ok()) info.name = std::string(*name);
  if (auto t = f.GetString("tokenizer.chat_template"); t.ok()) info.chat_template = std::string(*t);
  info.n_vocab = hp.n_vocab;
  info.n_ctx_train = hp.n_ctx_train;
  info.n_embd = hp.n_embd;
  info.n_layer = hp.n_layer;
  info.n_head = hp.n_head;
  info.n_head_kv = hp.n_head_kv;
  info.head_dim = hp.head_dim;
  info.n_rot = hp.n_rot;
  info.rope_freq_base = hp.rope_freq_base;
  info.rms_eps = hp.rms_eps;
  info.n_ff = hp.n_ff;
  info.n_expert = hp.n_expert;
  info.n_expert_used = hp.n_expert_used;
  info.n_ff_exp = hp.is_moe() ? hp.n_ff_exp : 0;
  info.n_ff_shexp = hp.n_ff_shexp;
  info.file_bytes = f.file_size();
  if (hp.is_moe()) {
    for (size_t i = 0; i < w.layers.size(); ++i) {
      const MoeWeights& m = w.layers[i].moe;
      const uint64_t one = m.gate.expert_bytes() + m.up.expert_bytes() + m.down.expert_bytes();
      if (i == 0) info.expert_bytes = one;
      info.expert_bytes_total += one * m.gate.n;
    }
  }
  return info;
}

std::string RenderValue(const GgufValue& v, size_t max_elems) {
  switch (v.type()) {
    case GgufType::kString:
      return absl::StrCat("\"", std::string(v.AsString()), "\"");
    case GgufType::kFloat32:
    case GgufType::kFloat64:
      return absl::StrFormat("%g", v.AsDouble());
    case GgufType::kBool:
      return v.AsBool() ? "true" : "false";
    case GgufType::kUint64:
      return absl::StrCat(v.AsUint64());
    case GgufType::kArray: {
      const auto& e = v.elems();
      std::string s = e.size() > max_elems
                          ? absl::StrCat("[", GgufTypeName(v.elem_type()), " x ", e.size(), "] ")
                          : "";
      s += "[";
      for (size_t i = 0; i < e.size() && i < std::min<size_t>(max_elems, 5); ++i) {
        if (i) s += ", ";
        s += RenderValue(e[i], max_elems);
      }
      if (e.size() > std::min<size_t>(max_elems, 5)) s += ", ...";
      return s + "]";
    }
    default:
      return absl::StrCat(v.AsInt());
  }
}

absl::StatusOr<FileDescription> DescribeFile(const std::string& path) {
  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> f, GgufFile::Open(path));
  FileDescription d;
  d.path = path;
  d.version = f->version();
  d.file_bytes = f->file_size();
  d.alignment = f->alignment();
  for (const GgufKeyValue& kv : f->metadata()) {
    d.metadata.emplace_back(kv.key, RenderValue(kv.value));
  }
  for (const GgufTensorInfo& t : f->tensors()) {
    const kcpu::TypeTraits* tt = kcpu::FindTypeTraits(t.type);
    d.tensors.push_back(TensorDescription{t.name, tt ? tt->name : absl::StrCat("type", t.type),
                                          t.dims, f->data_offset() + t.offset, t.nbytes});
  }
  absl::StatusOr<HParams> hp = ReadHParams(*f);
  absl::StatusOr<ModelWeights> w =
      hp.ok() ? BindWeights(*f, *hp) : absl::StatusOr<ModelWeights>(hp.status());
  if (w.ok()) {
    d.has_model_info = true;
    d.model = MakeModelInfo(*f, *w);
    if (absl::StatusOr<Vocab> v = Vocab::Load(*f); v.ok()) {
      d.model.bos_token = v->bos();
      d.model.eos_token = v->eos();
      d.model.add_bos = v->add_bos();
    }
  } else {
    d.model_error = std::string(w.status().message());
  }
  return d;
}

}  // namespace moex
