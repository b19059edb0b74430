// The tokenizers behind include/moex/tokenizer.h: the vocabulary, the special-token pass,
// SentencePiece merges (tokenizer_spm.cc) and byte-level BPE (tokenizer_bpe.cc, with the
// pre-tokenizer of pretokenize.h).
//
// The algorithms are llama.cpp's (src/llama-vocab.cpp: llm_tokenizer_spm_session,
// llm_tokenizer_bpe_session, tokenizer_st_partition; MIT), so that the ids match the
// reference engine's exactly; the code here is written anew over ids instead of strings.
// Thread-safety: immutable after construction.
#ifndef MOEX_RUNTIME_TOKENIZER_H_
#define MOEX_RUNTIME_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "moex/tokenizer.h"
#include "runtime/core/gguf.h"
#include "runtime/pretokenize.h"
#include "runtime/vocab.h"

namespace moex {

// The tokenizer of an opened file; null when the file has no tokenizer keys.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const GgufFile& file);

// SentencePiece-style merging of one fragment. `text` is already normalised (spaces as
// "▁", the prefix "▁" added); ids are appended to *out.
void SpmEncode(const Vocab& vocab, std::string_view text, std::vector<int32_t>* out);

// Byte-level BPE merges (tokenizer.ggml.merges) over token ids.
class BpeModel {
 public:
  static absl::StatusOr<BpeModel> Load(const GgufFile& file, const Vocab& vocab);

  // Appends the tokens of one pre-tokenised word (raw bytes, not yet in GPT-2's alphabet).
  // With `ignore_merges`, a word that is itself a token is that token.
  void EncodeWord(std::string_view word, bool ignore_merges, std::vector<int32_t>* out) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t merged;  // the id of the joined piece (ids >= n_vocab: not a vocab token)
  };
  static uint64_t Key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  const Vocab* vocab_ = nullptr;
  int32_t n_vocab_ = 0;
  int32_t byte_id_[256] = {};           // the piece of one byte in GPT-2's alphabet, -1 if none
  std::string byte_char_[256];          // that piece's text
  std::vector<int32_t> fallback_[256];  // tokens for a byte of a piece outside the vocab
  absl::flat_hash_map<uint64_t, Merge> merges_;
};

struct Tokenizer::Impl {
  Vocab vocab;
  std::optional<BpeModel> bpe;      // kind "bpe"
  std::optional<PreTokenizer> pre;  // kind "bpe"

  // The special-token pass (llama.cpp's tokenizer_st_partition): control, user-defined
  // and unknown tokens are found in the raw text, longest first, before the tokenizer
  // proper runs on the text between them.
  struct Fragment {
    std::string_view text;  // when token < 0
    int32_t token = -1;
  };
  void Partition(std::string_view text, bool parse_special, std::vector<Fragment>* out) const;
  void BuildSpecials();

  struct TrieNode {
    std::vector<std::pair<uint8_t, int32_t>> kids;  // byte -> node
    int32_t token = -1;
  };
  std::vector<TrieNode> trie;         // node 0 is the root
  std::vector<int32_t> special_rank;  // per token: order of the special pass, -1 if none
  bool first_any[256] = {};           // some special token starts with this byte
  bool first_user[256] = {};          // some user-defined token does
  bool has_user = false;

  // Appends the text of `ids`; see Tokenizer::Decode for `strip_prefix_space`.
  void DecodeTo(std::span<const int32_t> ids, bool render_special, bool strip_prefix_space,
                std::string* out) const;
};

}  // namespace moex

#endif  // MOEX_RUNTIME_TOKENIZER_H_
