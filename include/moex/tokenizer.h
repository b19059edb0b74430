// Tokenizers from a GGUF file's tokenizer.ggml.* metadata: text to token ids and back.
//
// Two kinds, as llama.cpp has them (and reproducing its token ids exactly):
//   "spm": SentencePiece-style BPE (tokenizer.ggml.model = "llama": Llama, Mistral,
//          Mixtral): spaces become "▁", one "▁" is put in front, adjacent pieces merge by
//          score, and text no token covers falls back to <0xNN> byte tokens.
//   "bpe": byte-level BPE (tokenizer.ggml.model = "gpt2": GPT-2, Qwen, DeepSeek, Llama-3,
//          OLMoE): text is split into words by the pre-tokenizer tokenizer.ggml.pre names,
//          bytes are shown in GPT-2's alphabet, and tokenizer.ggml.merges apply by rank.
//
// Thread-safety: a Tokenizer is immutable after Open; any number of threads may call its
// const methods at once. A StreamDecoder belongs to one thread at a time.
//
//   auto tok = moex::Tokenizer::Open("model.gguf");            // absl::StatusOr
//   auto ids = (*tok)->Encode("Hello world", {});               // BOS if the vocab wants it
//   std::string text = (*tok)->Decode(*ids);                    // "Hello world"
#ifndef MOEX_TOKENIZER_H_
#define MOEX_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace moex {

struct EncodeOptions {
  // Put the BOS token first, but only if the vocabulary's add_bos_token says so (the
  // default for SentencePiece vocabularies, and for Llama-3).
  bool add_bos = true;
  // Recognise the text of control tokens ("<s>", "<|im_start|>") and turn it into those
  // tokens. Off, such text is ordinary text. User-defined tokens are matched either way,
  // as llama.cpp and Hugging Face tokenizers do.
  bool parse_special = false;
};

class Tokenizer {
 public:
  // Reads the tokenizer of `gguf_path`: a vocab-only file (no tensors) or a whole model.
  // Errors name the file and the key: kNotFound (file, or no tokenizer.ggml.model),
  // kUnimplemented (a tokenizer model other than "llama" or "gpt2"), kInvalidArgument or
  // kDataLoss (malformed keys). An unknown tokenizer.ggml.pre is not an error: GPT-2's
  // pre-tokenizer is used (see pre_known()).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Open(const std::string& gguf_path);

  // Text to ids. `text` is arbitrary bytes: for byte-level BPE, bytes that are not
  // well-formed UTF-8 are read as U+FFFD (as llama.cpp does); SentencePiece vocabularies
  // keep them as byte tokens.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options) const;

  // Ids to text: the bytes each token stands for, concatenated. Control tokens give their
  // text only with `render_special`; ids outside the vocabulary are skipped. For
  // SentencePiece vocabularies the one space Encode puts in front of text (at the start
  // and after each special token) is removed again, so Decode(Encode(s)) == s.
  std::string Decode(std::span<const int32_t> ids, bool render_special = false) const;

  // Decodes a stream of ids (generated text) into UTF-8 one token at a time: Push never
  // returns part of a character. The bytes of a character split across byte tokens are
  // held back until it is complete; bytes that cannot form a character come out as
  // U+FFFD, so the output is always well-formed UTF-8. No space is removed (the stream
  // continues earlier text).
  class StreamDecoder {
   public:
    std::string Push(int32_t id);
    // Whatever is held back (an incomplete character, as U+FFFD); the decoder is then empty.
    std::string Flush();

   private:
    friend class Tokenizer;
    StreamDecoder(const Tokenizer* tokenizer, bool render_special)
        : tokenizer_(tokenizer), render_special_(render_special) {}
    const Tokenizer* tokenizer_;
    bool render_special_;
    std::string pending_;
  };
  StreamDecoder NewStreamDecoder(bool render_special = false) const {
    return StreamDecoder(this, render_special);
  }

  int32_t n_vocab() const;
  int32_t bos() const;  // -1 when absent (likewise eos, eot)
  int32_t eos() const;
  // End of turn: tokenizer.ggml.eot_token_id, else the control token <|eot_id|>,
  // <|im_end|>, <|end|>, <end_of_turn> or <|endoftext|> (the first present).
  int32_t eot() const;
  bool IsEog(int32_t id) const { return id >= 0 && (id == eos() || id == eot()); }
  bool add_bos() const;  // the vocabulary asks for a BOS at the start of a prompt
  // The token's text as stored in the vocabulary ("▁Hello", "Ġworld", "<0x0A>"); empty
  // for ids outside it.
  std::string_view Piece(int32_t id) const;
  bool IsControl(int32_t id) const;
  int32_t TokenId(std::string_view piece) const;  // -1 if no token has this text
  std::string kind() const;                       // "spm" or "bpe"
  std::string pre() const;  // the pre-tokenizer in use ("gpt-2", "qwen2", ...; "" for spm)
  bool pre_known() const;   // false when tokenizer.ggml.pre was unknown (GPT-2 is used)

  struct Impl;  // runtime/tokenizer.h
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moex

#endif  // MOEX_TOKENIZER_H_
