// libFuzzer target: the tokenizers (runtime/tokenizer*.cc, runtime/pretokenize.cc,
// runtime/vocab.cc) on arbitrary text.
//
// Input: byte 0 picks the vocabulary (low 6 bits, modulo how many there are) and the
// options (bit 6: parse_special, bit 7: add_bos); the rest is the text, also read as a
// stream of token ids for the stream decoder. The vocabularies are two synthetic ones built
// in memory here (a SentencePiece one with byte fallback, a byte-level BPE one with merges
// and special tokens), so the target runs anywhere, plus llama.cpp's test vocabularies from
// ../shared/testdata/vocab (or $MOEX_TESTDATA/vocab) when present.
//
// Checked: Encode never fails and gives ids inside the vocabulary; Decode and the stream
// decoder accept any ids (in range or not); the stream decoder only ever returns
// well-formed UTF-8; for byte-level BPE, Decode(Encode(s)) == s for well-formed UTF-8 s
// and the stream decoder returns s too (the property tokenizer.h documents).
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "moex/tokenizer.h"
#include "runtime/core/gguf.h"
#include "runtime/utf8.h"
#include "runtime/vocab.h"

namespace {

using moex::GgufType;
using moex::GgufValue;
using moex::Tokenizer;

struct Vocabs {
  std::vector<std::unique_ptr<Tokenizer>> toks;
  std::vector<std::string> names;
};

void Die(const std::string& what) {
  fprintf(stderr, "fuzz_tokenizer: %s\n", what.c_str());
  abort();
}

// Opens a GGUF image held in memory (through a memfd, as Tokenizer::Open wants a path).
std::unique_ptr<Tokenizer> OpenImage(const moex::GgufWriter& w, const char* name) {
  absl::StatusOr<std::vector<uint8_t>> bytes = w.Serialize();
  if (!bytes.ok()) Die(std::string(bytes.status().message()));
  const int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0 || write(fd, bytes->data(), bytes->size()) != static_cast<ssize_t>(bytes->size())) {
    Die("memfd");
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> t =
      Tokenizer::Open("/proc/self/fd/" + std::to_string(fd));
  close(fd);
  if (!t.ok()) Die(std::string(t.status().message()));
  return std::move(*t);
}

void SetVocab(moex::GgufWriter* w, const char* model, const std::vector<std::string>& pieces,
              const std::vector<int32_t>& types) {
  std::vector<GgufValue> toks, scores, typ;
  for (size_t i = 0; i < pieces.size(); ++i) {
    toks.push_back(GgufValue::String(pieces[i]));
    // SentencePiece merges by score: longer pieces score higher, so they win.
    scores.push_back(GgufValue::Float(
        GgufType::kFloat32, static_cast<double>(pieces[i].size()) - static_cast<double>(i) * 1e-4));
    typ.push_back(GgufValue::Int(GgufType::kInt32, types[i]));
  }
  w->SetString("tokenizer.ggml.model", model);
  w->Set("tokenizer.ggml.tokens", GgufValue::Array(GgufType::kString, std::move(toks)));
  w->Set("tokenizer.ggml.scores", GgufValue::Array(GgufType::kFloat32, std::move(scores)));
  w->Set("tokenizer.ggml.token_type", GgufValue::Array(GgufType::kInt32, std::move(typ)));
}

// SentencePiece-style: <unk> <s> </s>, 256 byte tokens, "▁", ASCII, a few words and a
// user-defined token (what `moex gen` writes, plus the special-token paths).
std::unique_ptr<Tokenizer> SyntheticSpm() {
  std::vector<std::string> p = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> t = {2, 3, 3};
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    snprintf(buf, sizeof(buf), "<0x%02X>", b);
    p.push_back(buf);
    t.push_back(6);
  }
  for (int c = '!'; c <= '~'; ++c) {
    p.push_back(std::string(1, static_cast<char>(c)));
    t.push_back(1);
  }
  for (const char* s : {"\xE2\x96\x81", "\xE2\x96\x81t", "\xE2\x96\x81th", "\xE2\x96\x81the", "he",
                        "in", "\xE2\x96\x81\xE2\x96\x81", "\xC3\xA9", "\xE2\x82\xAC"}) {
    p.push_back(s);
    t.push_back(1);
  }
  p.push_back("<|user|>");
  t.push_back(4);
  moex::GgufWriter w;
  SetVocab(&w, "llama", p, t);
  w.SetU32("tokenizer.ggml.bos_token_id", 1);
  w.SetU32("tokenizer.ggml.eos_token_id", 2);
  return OpenImage(w, "spm");
}

// Byte-level BPE: the 256 pieces of GPT-2's byte alphabet, merges building a few words
// (including multi-byte characters), a control and a user-defined token.
std::unique_ptr<Tokenizer> SyntheticBpe() {
  std::vector<std::string> p;
  std::vector<int32_t> t;
  std::string ch[256];
  for (int b = 0; b < 256; ++b) {
    moex::utf8::Append(moex::Gpt2CodePointOfByte(static_cast<uint8_t>(b)), &ch[b]);
    p.push_back(ch[b]);
    t.push_back(1);
  }
  const std::string sp = ch[static_cast<uint8_t>(' ')];
  std::vector<GgufValue> merges;
  auto merge = [&](const std::string& l, const std::string& r) {
    merges.push_back(GgufValue::String(l + " " + r));
    p.push_back(l + r);
    t.push_back(1);
  };
  merge(sp, "t");
  merge(sp + "t", "h");
  merge(sp + "th", "e");
  merge("h", "e");
  merge("i", "n");
  merge(ch[0xC3], ch[0xA9]);  // "é"
  merge(ch[0xE2], ch[0x82]);
  merge(ch[0xE2] + ch[0x82], ch[0xAC]);  // "€"
  merge("\n", "\n");  // a merge of pieces that are not in the alphabet (bytes as they are)
  p.push_back("<|endoftext|>");
  t.push_back(3);
  p.push_back("<|user|>");
  t.push_back(4);
  moex::GgufWriter w;
  SetVocab(&w, "gpt2", p, t);
  w.SetString("tokenizer.ggml.pre", "qwen2");
  w.Set("tokenizer.ggml.merges", GgufValue::Array(GgufType::kString, std::move(merges)));
  w.SetU32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(p.size() - 2));
  return OpenImage(w, "bpe");
}

const Vocabs& GetVocabs() {
  static const Vocabs* v = [] {
    auto* out = new Vocabs;
    out->toks.push_back(SyntheticSpm());
    out->names.push_back("synthetic-spm");
    out->toks.push_back(SyntheticBpe());
    out->names.push_back("synthetic-bpe");
    const char* env = getenv("MOEX_TESTDATA");
    const std::string dir = std::string(env != nullptr ? env : MOEX_TESTDATA_DIR) + "/vocab/";
    for (const char* name : {"ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf",
                             "ggml-vocab-qwen2.gguf", "ggml-vocab-deepseek-llm.gguf"}) {
      struct stat st;
      if (stat((dir + name).c_str(), &st) != 0) continue;
      absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Open(dir + name);
      if (!t.ok()) Die(std::string(t.status().message()));
      out->toks.push_back(std::move(*t));
      out->names.push_back(name);
    }
    return out;
  }();
  return *v;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const Vocabs& v = GetVocabs();
  fprintf(stderr, "fuzz_tokenizer: %zu vocabularies:", v.toks.size());
  for (const std::string& n : v.names) fprintf(stderr, " %s", n.c_str());
  fprintf(stderr, "\n");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Vocabs& v = GetVocabs();
  const size_t which = (data[0] & 63) % v.toks.size();
  const Tokenizer& tok = *v.toks[which];
  moex::EncodeOptions o;
  o.parse_special = (data[0] & 64) != 0;
  o.add_bos = (data[0] & 128) != 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(text, o);
  if (!ids.ok()) Die("Encode failed: " + std::string(ids.status().message()));
  for (int32_t id : *ids) {
    if (id < 0 || id >= tok.n_vocab()) Die("id out of range: " + std::to_string(id));
  }
  const std::string plain = tok.Decode(*ids);
  const std::string special = tok.Decode(*ids, /*render_special=*/true);

  // Stream-decode the ids, then the input read as raw ids (most outside the vocabulary).
  Tokenizer::StreamDecoder dec = tok.NewStreamDecoder();
  std::string streamed;
  for (int32_t id : *ids) {
    std::string part = dec.Push(id);
    if (!moex::utf8::IsValid(part)) Die("stream decoder returned bad UTF-8");
    streamed += part;
  }
  std::string tail = dec.Flush();
  if (!moex::utf8::IsValid(tail)) Die("stream decoder flushed bad UTF-8");
  streamed += tail;
  Tokenizer::StreamDecoder raw = tok.NewStreamDecoder(/*render_special=*/true);
  for (size_t i = 1; i + 4 <= size; i += 4) {
    int32_t id;
    memcpy(&id, data + i, 4);
    if (i % 8 == 1) id %= tok.n_vocab() + 8;  // half of them near the vocabulary
    if (!moex::utf8::IsValid(raw.Push(id))) Die("stream decoder returned bad UTF-8 (raw ids)");
    (void)tok.Piece(id);
    (void)tok.IsControl(id);
    (void)tok.Decode(std::span<const int32_t>(&id, 1), true);
  }
  if (!moex::utf8::IsValid(raw.Flush())) Die("stream decoder flushed bad UTF-8 (raw ids)");

  // Round trip: byte-level BPE keeps every well-formed UTF-8 text exactly.
  if (tok.kind() == "bpe" && !o.parse_special && moex::utf8::IsValid(text)) {
    if (plain != text)
      Die("bpe round trip differs: '" + plain + "' vs '" + std::string(text) + "'");
    if (streamed != text) Die("bpe stream decode differs: '" + streamed + "'");
  }
  return 0;
}
