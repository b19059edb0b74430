#include "runtime/vocab.h"

#include <algorithm>
#include <array>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/utf8.h"

namespace moex {
namespace {

bool PrintableByte(uint32_t b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct Gpt2Alphabet {
  std::array<uint32_t, 256> cp_of_byte;
  std::array<int16_t, 512> byte_of_cp;  // every code point of the alphabet is < 512
  Gpt2Alphabet() {
    byte_of_cp.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      cp_of_byte[b] = PrintableByte(b) ? b : next++;
      byte_of_cp[cp_of_byte[b]] = static_cast<int16_t>(b);
    }
  }
};

const Gpt2Alphabet& Alphabet() {
  static const Gpt2Alphabet a;
  return a;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte of a "<0xNN>" piece, or -1.
int ByteOfPiece(std::string_view p) {
  if (p.size() != 6 || !p.starts_with("<0x") || p[5] != '>') return -1;
  const int hi = HexDigit(p[3]), lo = HexDigit(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// What a token stands for, as bytes (llama.cpp's token_to_piece with special = true,
// src/llama-vocab.cpp; unlike it, a code point outside the GPT-2 alphabet is kept as
// UTF-8 rather than turned into an "[UNK_BYTE_...]" marker).
void AppendDecoded(Vocab::Kind kind, int32_t type, std::string_view p, std::string* out) {
  switch (type) {
    case Vocab::kControl:
    case Vocab::kUnknown:
    case Vocab::kUserDefined:
      out->append(p);
      return;
    case Vocab::kByte: {
      const int b = ByteOfPiece(p);
      if (b >= 0) {
        out->push_back(static_cast<char>(b));
      } else {
        out->append(p);
      }
      return;
    }
    case Vocab::kNormal:
      break;
    default:  // unused and undefined tokens stand for nothing
      return;
  }
  if (kind == Vocab::Kind::kSpm) {
    // "▁" (U+2581, E2 96 81) marks a space in SentencePiece pieces.
    for (size_t i = 0; i < p.size();) {
      if (p.compare(i, 3, "\xE2\x96\x81") == 0) {
        out->push_back(' ');
        i += 3;
      } else {
        out->push_back(p[i++]);
      }
    }
    return;
  }
  size_t len;
  uint32_t cp;
  for (size_t i = 0; i < p.size(); i += len) {
    if (utf8::Decode(p, i, &len, &cp) != utf8::Seq::kValid) {
      len = 1;
      out->push_back(p[i]);
      continue;
    }
    const int b = Gpt2ByteOfCodePoint(cp);
    if (b >= 0) {
      out->push_back(static_cast<char>(b));
    } else {
      out->append(p.substr(i, len));
    }
  }
}

// Reads an optional token id key; ids outside the vocabulary count as absent.
absl::StatusOr<int32_t> ReadId(const GgufFile& f, std::string_view key, int32_t fallback,
                               int64_t n) {
  MOEX_ASSIGN_OR_RETURN(int64_t id, f.GetIntOr(key, fallback));
  return id >= 0 && id < n ? static_cast<int32_t>(id) : -1;
}

// tokenizer.ggml.pre values whose vocabularies want a BOS by default (llama.cpp sets
// add_bos for these pre-tokenizers when the file does not say).
bool PreAddsBos(std::string_view pre) {
  for (std::string_view p : {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                             "tekken", "chameleon"}) {
    if (pre == p) return true;
  }
  return false;
}

}  // namespace

uint32_t Gpt2CodePointOfByte(uint8_t b) { return Alphabet().cp_of_byte[b]; }

int Gpt2ByteOfCodePoint(uint32_t cp) { return cp < 512 ? Alphabet().byte_of_cp[cp] : -1; }

absl::StatusOr<Vocab> Vocab::Load(const GgufFile& f) {
  Vocab v;
  std::fill(std::begin(v.byte_token_), std::end(v.byte_token_), -1);
  if (f.Find("tokenizer.ggml.model") == nullptr) return v;
  MOEX_ASSIGN_OR_RETURN(std::string_view model, f.GetString("tokenizer.ggml.model"));
  if (model == "llama") {
    v.kind_ = Kind::kSpm;
  } else if (model == "gpt2") {
    v.kind_ = Kind::kBpe;
  } else {
    return absl::UnimplementedError(absl::StrCat(
        f.path(), ": tokenizer.ggml.model '", std::string(model),
        "' is not supported (moex has the SentencePiece 'llama' and byte-level 'gpt2' ones)"));
  }
  if (f.Find("tokenizer.ggml.pre") != nullptr) {
    MOEX_ASSIGN_OR_RETURN(std::string_view pre, f.GetString("tokenizer.ggml.pre"));
    v.pre_ = std::string(pre);
  }

  MOEX_ASSIGN_OR_RETURN(const GgufValue* tokens, f.GetArray("tokenizer.ggml.tokens"));
  if (tokens->elem_type() != GgufType::kString) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": tokenizer.ggml.tokens is not an array of strings"));
  }
  const std::vector<GgufValue>& toks = tokens->elems();
  const int64_t n = static_cast<int64_t>(toks.size());
  if (n == 0 || n > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": tokenizer.ggml.tokens has ", n, " tokens"));
  }
  size_t total = 0;
  for (const GgufValue& t : toks) total += t.AsString().size() + 16;
  if (total >= (uint64_t{1} << 32)) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": tokenizer.ggml.tokens holds more than 4 GiB of text"));
  }
  // At least a heap buffer (never the small-string one), so views survive moves.
  v.pieces_.reserve(std::max<size_t>(total, 64));
  v.piece_off_.reserve(n + 1);
  v.piece_off_.push_back(0);
  for (int64_t i = 0; i < n; ++i) {
    std::string_view t = toks[i].AsString();
    if (t.empty()) {
      // llama.cpp names empty tokens "[EMPTY_<id>]" so that no text maps to them.
      v.pieces_ += absl::StrCat("[EMPTY_", i, "]");
    } else {
      v.pieces_.append(t);
    }
    v.piece_off_.push_back(static_cast<uint32_t>(v.pieces_.size()));
  }

  v.types_.assign(n, kNormal);
  if (f.Find("tokenizer.ggml.token_type") != nullptr) {
    MOEX_ASSIGN_OR_RETURN(const GgufValue* types, f.GetArray("tokenizer.ggml.token_type"));
    if (static_cast<int64_t>(types->elems().size()) < n ||
        !(types->elems().empty() || types->elems()[0].is_integer())) {
      return absl::InvalidArgumentError(
          absl::StrCat(f.path(), ": tokenizer.ggml.token_type has ", types->elems().size(),
                       " entries (integers needed) for ", n, " tokens"));
    }
    for (int64_t i = 0; i < n; ++i) {
      v.types_[i] = static_cast<int32_t>(types->elems()[i].AsInt());
    }
  }
  if (f.Find("tokenizer.ggml.scores") != nullptr) {
    MOEX_ASSIGN_OR_RETURN(const GgufValue* scores, f.GetArray("tokenizer.ggml.scores"));
    const auto& e = scores->elems();
    if (static_cast<int64_t>(e.size()) < n ||
        !(e.empty() || e[0].is_float() || e[0].is_integer())) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tokenizer.ggml.scores has ",
                                                     e.size(), " entries (numbers needed) for ", n,
                                                     " tokens"));
    }
    v.scores_.resize(n);
    for (int64_t i = 0; i < n; ++i) v.scores_[i] = static_cast<float>(e[i].AsDouble());
  }

  v.index_.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    // The first of duplicate pieces wins (llama.cpp refuses such files; one id is as
    // good as the other for encoding).
    v.index_.emplace(v.piece(static_cast<int32_t>(i)), static_cast<int32_t>(i));
  }

  // Defaults as llama.cpp has them for SentencePiece vocabularies (src/llama-vocab.cpp,
  // llama_vocab::impl::load); byte-level ones have none.
  const bool spm = v.kind_ == Kind::kSpm;
  MOEX_ASSIGN_OR_RETURN(v.bos_, ReadId(f, "tokenizer.ggml.bos_token_id", spm ? 1 : -1, n));
  MOEX_ASSIGN_OR_RETURN(v.eos_, ReadId(f, "tokenizer.ggml.eos_token_id", spm ? 2 : -1, n));
  MOEX_ASSIGN_OR_RETURN(v.unk_, ReadId(f, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, n));
  MOEX_ASSIGN_OR_RETURN(v.eot_, ReadId(f, "tokenizer.ggml.eot_token_id", -1, n));
  if (v.eot_ < 0) {
    // No key: the end-of-turn token of the common chat formats, when it is a control token.
    for (std::string_view text :
         {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"}) {
      const int32_t id = v.Find(text);
      if (id >= 0 && v.types_[id] == kControl) {
        v.eot_ = id;
        break;
      }
    }
  }
  MOEX_ASSIGN_OR_RETURN(bool add_bos,
                        f.GetBoolOr("tokenizer.ggml.add_bos_token", spm || PreAddsBos(v.pre_)));
  v.add_bos_ = add_bos && v.bos_ >= 0;
  MOEX_ASSIGN_OR_RETURN(v.add_space_prefix_, f.GetBoolOr("tokenizer.ggml.add_space_prefix", spm));

  v.spm_words_independent_ = true;
  for (int32_t i = 0; i < n && v.spm_words_independent_; ++i) {
    std::string_view p = v.piece(i);
    while (p.starts_with("\xE2\x96\x81")) p.remove_prefix(3);
    if (p.find("\xE2\x96\x81") != std::string_view::npos) v.spm_words_independent_ = false;
  }

  v.text_.reserve(std::max<size_t>(v.pieces_.size(), 64));
  v.text_off_.reserve(n + 1);
  v.text_off_.push_back(0);
  for (int32_t i = 0; i < n; ++i) {
    AppendDecoded(v.kind_, v.types_[i], v.piece(i), &v.text_);
    v.text_off_.push_back(static_cast<uint32_t>(v.text_.size()));
  }
  for (int b = 0; b < 256; ++b) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    const char hex[7] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>', 0};
    int32_t id = v.Find(hex);
    if (id < 0) id = v.Find(std::string(1, static_cast<char>(b)));
    v.byte_token_[b] = id;
  }
  return v;
}

std::string Vocab::Detokenize(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) out.append(Text(id, /*render_special=*/false));
  return out;
}

}  // namespace moex
