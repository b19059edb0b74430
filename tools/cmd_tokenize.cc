// moex tokenize / moex detokenize: the model's tokenizer from the command line. Both work
// on vocab-only GGUF files (no tensors) as well as on whole models.
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "moex/tokenizer.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace moex::cli {
namespace {

constexpr char kTokenizeHelp[] =
    "usage: moex tokenize -m MODEL (--text T | --file F) [--json] [--no-bos] [--special]\n"
    "  -m MODEL       a GGUF model or vocab-only file\n"
    "  --text T       the text to tokenize\n"
    "  --file F       ... or the contents of this file\n"
    "  --no-bos       no BOS token, even if the vocabulary asks for one\n"
    "  --special      recognise control tokens written as text (<s>, <|im_start|>)\n"
    "  --verbose      also one line per token: id and the text it stands for\n"
    "  --json         {\"ids\":[...],\"n_tokens\":N} on stdout\n";

constexpr char kDetokenizeHelp[] =
    "usage: moex detokenize -m MODEL --tokens 1,2,3 [--json] [--special]\n"
    "  --special      write control tokens (<s>, <|im_end|>) as their text\n"
    "  --json         {\"text\":\"...\"} on stdout\n";

std::unique_ptr<Tokenizer> OpenTokenizer(const std::string& path, std::string* err) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Open(path);
  if (!t.ok()) {
    *err = std::string(t.status().message());
    return nullptr;
  }
  return std::move(*t);
}

}  // namespace

int CmdTokenize(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv, {"model", "text", "file"},
               {"help", "json", "no-bos", "special", "verbose"}, &err)) {
    return Usage("tokenize", err);
  }
  if (a.Has("help")) {
    std::fputs(kTokenizeHelp, stdout);
    return 0;
  }
  if (a.Str("model").empty()) return Usage("tokenize", "no model file given (-m MODEL.gguf)");
  if (a.Has("text") == a.Has("file")) {
    return Usage("tokenize", "give the text with exactly one of --text T and --file F");
  }
  if (!a.positionals().empty()) {
    return Usage("tokenize", "unexpected argument '" + a.positionals()[0] + "'");
  }
  std::string text = a.Str("text");
  if (a.Has("file")) {
    if (!ReadFile(a.Str("file"), &text)) return Fail("tokenize", "cannot read " + a.Str("file"));
  }
  std::unique_ptr<Tokenizer> tok = OpenTokenizer(a.Str("model"), &err);
  if (!tok) return Fail("tokenize", err);
  EncodeOptions o;
  o.add_bos = !a.Has("no-bos");
  o.parse_special = a.Has("special");
  absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text, o);
  if (!ids.ok()) return Fail("tokenize", std::string(ids.status().message()));

  if (a.Has("json")) {
    std::printf("{\"ids\":[%s],\"n_tokens\":%zu}\n", absl::StrJoin(*ids, ",").c_str(), ids->size());
    return 0;
  }
  std::printf("%s\n", absl::StrJoin(*ids, ",").c_str());
  if (a.Has("verbose")) {
    for (int32_t id : *ids) {
      // What the token stands for on its own (a lone byte of a longer character: U+FFFD).
      Tokenizer::StreamDecoder one = tok->NewStreamDecoder(/*render_special=*/true);
      const std::string text = one.Push(id) + one.Flush();
      std::printf("%8d  %-24s %s\n", id, JsonString(std::string(tok->Piece(id))).c_str(),
                  JsonString(text).c_str());
    }
  }
  std::fprintf(stderr, "moex tokenize: %zu bytes -> %zu tokens (%s tokenizer%s%s)\n", text.size(),
               ids->size(), tok->kind().c_str(), tok->pre().empty() ? "" : ", pre-tokenizer ",
               tok->pre().c_str());
  if (!tok->pre_known()) {
    std::fprintf(stderr,
                 "moex tokenize: note: the file's tokenizer.ggml.pre is not known; "
                 "GPT-2's pre-tokenizer was used\n");
  }
  return 0;
}

int CmdDetokenize(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv, {"model", "tokens"}, {"help", "json", "special"}, &err)) {
    return Usage("detokenize", err);
  }
  if (a.Has("help")) {
    std::fputs(kDetokenizeHelp, stdout);
    return 0;
  }
  if (a.Str("model").empty()) return Usage("detokenize", "no model file given (-m MODEL.gguf)");
  std::vector<int32_t> ids;
  if (!ParseIdList(a.Str("tokens"), &ids)) {
    return Usage("detokenize",
                 "--tokens needs a comma-separated list of ids, got '" + a.Str("tokens") + "'");
  }
  std::unique_ptr<Tokenizer> tok = OpenTokenizer(a.Str("model"), &err);
  if (!tok) return Fail("detokenize", err);
  for (int32_t id : ids) {
    if (id < 0 || id >= tok->n_vocab()) {
      return Fail("detokenize", absl::StrCat("token id ", id, " is outside the vocabulary of ",
                                             a.Str("model"), " (", tok->n_vocab(), " tokens)"));
    }
  }
  const std::string text = tok->Decode(ids, a.Has("special"));
  if (a.Has("json")) {
    std::printf("{\"text\":%s}\n", JsonString(text).c_str());
  } else {
    std::fwrite(text.data(), 1, text.size(), stdout);  // the text may hold NUL bytes
    std::fputc('\n', stdout);
  }
  return 0;
}

}  // namespace moex::cli
