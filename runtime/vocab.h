// The model's vocabulary, from the file's tokenizer.ggml.* keys: token pieces, their
// types, special ids, and turning ids back into text. (Text to ids, the tokenizers
// proper, are the issue "tokenizers and chat"; they will live beside this.)
// Thread-safety: immutable after Load.
#ifndef MOEX_RUNTIME_VOCAB_H_
#define MOEX_RUNTIME_VOCAB_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/core/gguf.h"

namespace moex {

class Vocab {
 public:
  enum class Kind { kNone, kSpm, kBpe };  // tokenizer.ggml.model "llama" / "gpt2"
  // ggml's token types (tokenizer.ggml.token_type).
  enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4,
                             kUnused = 5, kByte = 6 };

  // A file without tokenizer keys gives an empty vocabulary (Kind::kNone), not an error;
  // malformed keys are errors naming the key.
  static absl::StatusOr<Vocab> Load(const GgufFile& file);

  Kind kind() const { return kind_; }
  int64_t size() const { return static_cast<int64_t>(pieces_.size()); }
  std::string_view piece(int32_t id) const { return pieces_[id]; }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  bool add_bos() const { return add_bos_; }

  // Text of `ids`; control tokens and ids outside the vocabulary are skipped.
  std::string Detokenize(std::span<const int32_t> ids) const;

 private:
  Kind kind_ = Kind::kNone;
  std::vector<std::string> pieces_;
  std::vector<int32_t> types_;
  int32_t bos_ = -1, eos_ = -1;
  bool add_bos_ = false;
};

}  // namespace moex

#endif  // MOEX_RUNTIME_VOCAB_H_
