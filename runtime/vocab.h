// The model's vocabulary, from the file's tokenizer.ggml.* keys: token pieces, their
// types and scores, the special ids, and what each token stands for as bytes. The
// tokenizers proper (text -> ids) are built over it in runtime/tokenizer.h.
// Thread-safety: immutable after Load.
#ifndef MOEX_RUNTIME_VOCAB_H_
#define MOEX_RUNTIME_VOCAB_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/core/gguf.h"

namespace moex {

// Hashes std::string_view through absl (this Abseil's string_view is its own type).
struct StringViewHash {
  size_t operator()(std::string_view s) const {
    return absl::Hash<absl::string_view>()(absl::string_view(s.data(), s.size()));
  }
};

// GPT-2's byte-level alphabet: every byte is shown as a printable code point (printable
// Latin-1 bytes as themselves, the others shifted to U+0100 onwards, in byte order).
uint32_t Gpt2CodePointOfByte(uint8_t b);
int Gpt2ByteOfCodePoint(uint32_t cp);  // -1 when `cp` is not in the alphabet

class Vocab {
 public:
  Vocab() = default;
  // Move-only: index_ holds views into pieces_.
  Vocab(Vocab&&) = default;
  Vocab& operator=(Vocab&&) = default;
  Vocab(const Vocab&) = delete;
  Vocab& operator=(const Vocab&) = delete;

  enum class Kind { kNone, kSpm, kBpe };  // tokenizer.ggml.model "llama" / "gpt2"
  // ggml's token types (tokenizer.ggml.token_type).
  enum TokenType : int32_t {
    kUndefined = 0,
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6
  };

  // A file without tokenizer keys gives an empty vocabulary (Kind::kNone), not an error;
  // malformed keys, and a tokenizer.ggml.model other than "llama" or "gpt2", are errors
  // naming the file and the key.
  static absl::StatusOr<Vocab> Load(const GgufFile& file);

  Kind kind() const { return kind_; }
  int64_t size() const { return static_cast<int64_t>(types_.size()); }
  // The token's text as stored ("▁Hello", "Ġworld", "<0x0A>", "<|im_end|>").
  // REQUIRES: 0 <= id < size() (likewise below).
  std::string_view piece(int32_t id) const { return Slice(pieces_, piece_off_, id); }
  int32_t type(int32_t id) const { return types_[id]; }
  float score(int32_t id) const { return scores_.empty() ? 0.0f : scores_[id]; }
  // Control, user-defined and unknown tokens: those the special-token pass matches.
  bool IsSpecial(int32_t id) const {
    const int32_t t = types_[id];
    return t == kControl || t == kUserDefined || t == kUnknown;
  }
  // The id of the token whose text is exactly `piece`, or -1.
  int32_t Find(std::string_view piece) const {
    auto it = index_.find(piece);
    return it == index_.end() ? -1 : it->second;
  }

  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t eot() const { return eot_; }
  int32_t unk() const { return unk_; }
  bool add_bos() const { return add_bos_; }
  bool add_space_prefix() const { return add_space_prefix_; }
  std::string_view pre() const { return pre_; }  // tokenizer.ggml.pre ("" when absent)

  // The bytes token `id` stands for: SentencePiece "▁" is a space, <0xNN> byte tokens
  // are that byte, GPT-2 byte-level pieces are mapped back to bytes; control and
  // unknown tokens give their text only with `render_special`, unused ones nothing.
  // Ids outside the vocabulary give nothing.
  std::string_view Text(int32_t id, bool render_special) const {
    if (id < 0 || id >= size()) return {};
    const int32_t t = types_[id];
    if ((t == kControl || t == kUnknown) && !render_special) return {};
    return Slice(text_, text_off_, id);
  }

  // True when no piece has a "▁" after anything but "▁": then no SentencePiece merge can
  // join a word to the one before it, and words can be merged independently.
  bool spm_words_independent() const { return spm_words_independent_; }

  // The SentencePiece byte-fallback token for `b`: "<0xNN>", else the one-byte token,
  // else -1.
  int32_t ByteToken(uint8_t b) const { return byte_token_[b]; }

  // Text of `ids` (Text() of each, no special tokens).
  std::string Detokenize(std::span<const int32_t> ids) const;

 private:
  static std::string_view Slice(const std::string& s, const std::vector<uint32_t>& off,
                                int32_t id) {
    return std::string_view(s).substr(off[id], off[id + 1] - off[id]);
  }

  Kind kind_ = Kind::kNone;
  // All pieces back to back (offsets in piece_off_, size()+1 entries): one buffer, so
  // the views in index_ survive moves of the Vocab.
  std::string pieces_;
  std::vector<uint32_t> piece_off_;
  std::string text_;  // the decoded bytes of every token, likewise
  std::vector<uint32_t> text_off_;
  std::vector<int32_t> types_;
  std::vector<float> scores_;
  absl::flat_hash_map<std::string_view, int32_t, StringViewHash> index_;
  int32_t byte_token_[256] = {};
  int32_t bos_ = -1, eos_ = -1, eot_ = -1, unk_ = -1;
  bool add_bos_ = false;
  bool add_space_prefix_ = false;
  bool spm_words_independent_ = false;
  std::string pre_;
};

}  // namespace moex

#endif  // MOEX_RUNTIME_VOCAB_H_
