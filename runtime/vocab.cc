#include "runtime/vocab.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"

namespace moex {
namespace {

// GPT-2's byte-level BPE shows each byte as a printable code point: printable Latin-1
// bytes stand for themselves, the others are shifted to U+0100 onwards, in order.
int ByteOfCodePoint(uint32_t cp) {
  auto printable = [](uint32_t b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  if (cp < 256 && printable(cp)) return static_cast<int>(cp);
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    if (printable(b)) continue;
    if (next == cp) return static_cast<int>(b);
    ++next;
  }
  return -1;
}

// Decodes one UTF-8 code point at s[i]; advances i. Invalid bytes decode as themselves.
uint32_t NextCodePoint(std::string_view s, size_t& i) {
  const auto c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + len > s.size()) len = 1;
  uint32_t cp = len == 1 ? c : c & (0xFF >> (len + 1));
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

}  // namespace

absl::StatusOr<Vocab> Vocab::Load(const GgufFile& f) {
  Vocab v;
  const GgufValue* model = f.Find("tokenizer.ggml.model");
  if (model == nullptr) return v;
  MOEX_ASSIGN_OR_RETURN(std::string_view kind, f.GetString("tokenizer.ggml.model"));
  v.kind_ = kind == "llama" ? Kind::kSpm : kind == "gpt2" ? Kind::kBpe : Kind::kNone;
  MOEX_ASSIGN_OR_RETURN(const GgufValue* tokens, f.GetArray("tokenizer.ggml.tokens"));
  if (tokens->elem_type() != GgufType::kString) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": tokenizer.ggml.tokens is not an array of strings"));
  }
  v.pieces_.reserve(tokens->elems().size());
  for (const GgufValue& t : tokens->elems()) v.pieces_.emplace_back(t.AsString());
  v.types_.assign(v.pieces_.size(), kNormal);
  if (f.Find("tokenizer.ggml.token_type") != nullptr) {
    MOEX_ASSIGN_OR_RETURN(const GgufValue* types, f.GetArray("tokenizer.ggml.token_type"));
    if (types->elems().size() != v.pieces_.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          f.path(), ": tokenizer.ggml.token_type has ", types->elems().size(),
          " entries for ", v.pieces_.size(), " tokens"));
    }
    for (size_t i = 0; i < v.types_.size(); ++i) {
      v.types_[i] = static_cast<int32_t>(types->elems()[i].AsInt());
    }
  }
  MOEX_ASSIGN_OR_RETURN(int64_t bos, f.GetIntOr("tokenizer.ggml.bos_token_id", -1));
  MOEX_ASSIGN_OR_RETURN(int64_t eos, f.GetIntOr("tokenizer.ggml.eos_token_id", -1));
  MOEX_ASSIGN_OR_RETURN(v.add_bos_, f.GetBoolOr("tokenizer.ggml.add_bos_token",
                                                v.kind_ == Kind::kSpm));
  const int64_t n = v.size();
  v.bos_ = bos >= 0 && bos < n ? static_cast<int32_t>(bos) : -1;
  v.eos_ = eos >= 0 && eos < n ? static_cast<int32_t>(eos) : -1;
  return v;
}

std::string Vocab::Detokenize(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= size()) continue;
    const std::string& p = pieces_[id];
    const int32_t type = types_[id];
    if (type == kControl || type == kUnused) continue;
    if (kind_ == Kind::kSpm) {
      if (type == kByte && p.size() == 6 && p.starts_with("<0x")) {
        out.push_back(static_cast<char>(std::strtol(p.substr(3, 2).c_str(), nullptr, 16)));
        continue;
      }
      // "▁" (U+2581, E2 96 81) marks a space in SentencePiece pieces.
      for (size_t i = 0; i < p.size();) {
        if (p.compare(i, 3, "\xE2\x96\x81") == 0) {
          out.push_back(' ');
          i += 3;
        } else {
          out.push_back(p[i++]);
        }
      }
    } else if (kind_ == Kind::kBpe && type != kUserDefined) {
      for (size_t i = 0; i < p.size();) {
        const int b = ByteOfCodePoint(NextCodePoint(p, i));
        if (b >= 0) out.push_back(static_cast<char>(b));
      }
    } else {
      out += p;
    }
  }
  return out;
}

}  // namespace moex
