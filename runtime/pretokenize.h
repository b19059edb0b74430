// Pre-tokenisation for byte-level BPE: splitting text into words with the regular
// expressions of the vocabulary's `tokenizer.ggml.pre`, before merges run inside each word.
//
// Semantics follow llama.cpp (src/unicode.cpp, unicode_regex_split): the expressions are
// applied in order, each to every piece the previous one left; a piece is split into the
// matches and the text between them, and an expression sees only its piece (lookaheads
// and `$` stop at the piece's end). Matching is PCRE2 in UTF + UCP mode (\p{L}, \s are
// Unicode-aware), JIT-compiled when the platform has a JIT.
//
// Thread-safety: immutable after Create; Split may be called from any number of threads.
#ifndef MOEX_RUNTIME_PRETOKENIZE_H_
#define MOEX_RUNTIME_PRETOKENIZE_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex {

class PreTokenizer {
 public:
  // The pre-tokenizer for `pre` (tokenizer.ggml.pre; "" and "default" are llama.cpp's
  // default). An unknown name falls back to GPT-2's expression (no error): see known().
  static absl::StatusOr<PreTokenizer> Create(std::string_view pre);
  // Compiles explicit expressions (for tests and experiments).
  static absl::StatusOr<PreTokenizer> FromRegexes(const std::vector<std::string>& regexes);

  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;
  ~PreTokenizer();

  // Appends the words of `text` to *words (views into `text`, in order, covering it).
  // REQUIRES: `text` is well-formed UTF-8 (utf8::Sanitize).
  absl::Status Split(std::string_view text, std::vector<std::string_view>* words) const;

  // The name of the expression set in use ("gpt-2" for an unknown `pre`).
  const std::string& name() const { return name_; }
  bool known() const { return known_; }
  // llama.cpp's ignore_merges: a word that is itself a token is emitted whole (llama-3).
  bool ignore_merges() const { return ignore_merges_; }

 private:
  struct Regex;
  PreTokenizer();
  std::vector<std::unique_ptr<Regex>> regexes_;
  std::string name_;
  bool known_ = true;
  bool ignore_merges_ = false;
};

}  // namespace moex

#endif  // MOEX_RUNTIME_PRETOKENIZE_H_
