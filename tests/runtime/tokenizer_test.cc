// Tokenizers: llama.cpp's test vectors (every string of every vocabulary in
// ../shared/testdata/vocab must give exactly the expected ids), round trips, streaming
// decode of characters split across byte tokens, special tokens and BOS handling, and the
// pre-tokenizer's splitting rules on hand-made cases.
#include "moex/tokenizer.h"

#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/pretokenize.h"
#include "runtime/utf8.h"
#include "tests/test_util.h"

namespace moex {
namespace {

std::string VocabPath(const std::string& name) {
  const std::string dir = testing::TestDataDir();
  return dir.empty() ? "" : dir + "/vocab/" + name;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return true;
}

// Opens a vocabulary of the test data; null (and the test skips) when it is absent.
std::unique_ptr<Tokenizer> OpenVocab(const std::string& name) {
  const std::string path = VocabPath(name);
  if (path.empty()) return nullptr;
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Open(path);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

#define OPEN_OR_SKIP(var, name)                                                 \
  std::unique_ptr<Tokenizer> var = OpenVocab(name);                             \
  if (var == nullptr) {                                                         \
    if (VocabPath(name).empty()) GTEST_SKIP() << "no ../shared/testdata/vocab"; \
    FAIL() << "cannot open " << name;                                           \
  }

std::vector<int32_t> Enc(const Tokenizer& t, std::string_view s, bool bos = false,
                         bool special = false) {
  EncodeOptions o;
  o.add_bos = bos;
  o.parse_special = special;
  absl::StatusOr<std::vector<int32_t>> ids = t.Encode(s, o);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

// ---- llama.cpp's test vectors -----------------------------------------------------------------

class VectorTest : public ::testing::TestWithParam<std::string> {};

// NAME.gguf.inp: strings, each followed by "\n__ggml_vocab_test__\n"; NAME.gguf.out: the
// ids of each, one line each (add_special = false, parse_special = false).
TEST_P(VectorTest, EveryStringReproduces) {
  const std::string name = GetParam();
  OPEN_OR_SKIP(tok, name);
  std::string inp, outp;
  ASSERT_TRUE(ReadFile(VocabPath(name) + ".inp", &inp));
  ASSERT_TRUE(ReadFile(VocabPath(name) + ".out", &outp));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t at = 0; at < inp.size();) {
    const size_t e = inp.find(sep, at);
    if (e == std::string::npos) break;
    texts.push_back(inp.substr(at, e - at));
    at = e + sep.size();
  }
  std::vector<std::vector<int32_t>> want;
  std::istringstream lines(outp);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream nums(line);
    want.emplace_back();
    for (int32_t id; nums >> id;) want.back().push_back(id);
  }
  ASSERT_EQ(texts.size(), 46u);
  ASSERT_EQ(want.size(), texts.size());
  int passed = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int32_t> got = Enc(*tok, texts[i]);
    EXPECT_EQ(got, want[i]) << name << " string " << i << ": '" << texts[i] << "'";
    passed += got == want[i];
  }
  EXPECT_EQ(passed, 46) << name;
}

INSTANTIATE_TEST_SUITE_P(Vocabs, VectorTest,
                         ::testing::Values("ggml-vocab-llama-spm.gguf", "ggml-vocab-qwen2.gguf",
                                           "ggml-vocab-gpt-2.gguf", "ggml-vocab-deepseek-llm.gguf"),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           std::string n = p.param.substr(11, p.param.size() - 16);
                           for (char& c : n) {
                             if (c == '-') c = '_';
                           }
                           return n;
                         });

// ---- round trips ------------------------------------------------------------------------------

const std::vector<std::string>& Samples() {
  static const std::vector<std::string> s = {
      "Hello world",
      " leading space and  double  spaces ",
      "tabs\tand\nnewlines\r\n\n",
      "numbers 1234567 3.14159 -42",
      "Ünïcödé: naïve café, Äpfel, Straße",
      "中文文本和日本語のテキスト、한국어",
      "emoji 🦙🚀😶‍🌫️ and symbols ©®™ ∑∫√",
      "code: for (int i = 0; i < n; ++i) { x += a[i] * b[i]; }",
      "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
      "нещо на Български",
      "",
      " ",
      "\n\n\n",
  };
  return s;
}

TEST(TokenizerTest, ByteLevelBpeRoundTrips) {
  for (const char* name :
       {"ggml-vocab-qwen2.gguf", "ggml-vocab-gpt-2.gguf", "ggml-vocab-deepseek-llm.gguf"}) {
    OPEN_OR_SKIP(tok, name);
    EXPECT_EQ(tok->kind(), "bpe");
    for (const std::string& s : Samples()) {
      EXPECT_EQ(tok->Decode(Enc(*tok, s)), s) << name << ": '" << s << "'";
    }
    // Random valid UTF-8 (code points of every length).
    std::mt19937 rng(7);
    for (int round = 0; round < 50; ++round) {
      std::string s;
      const int n = 1 + static_cast<int>(rng() % 40);
      for (int k = 0; k < n; ++k) {
        static constexpr uint32_t kRanges[][2] = {
            {0x20, 0x7E},     {0x09, 0x0D},       {0xA0, 0x24F},   {0x400, 0x4FF},
            {0x4E00, 0x9FFF}, {0x1F300, 0x1F64F}, {0x3000, 0x303F}};
        const auto& r = kRanges[rng() % 7];
        utf8::Append(r[0] + rng() % (r[1] - r[0] + 1), &s);
      }
      EXPECT_EQ(tok->Decode(Enc(*tok, s)), s) << name;
    }
  }
}

TEST(TokenizerTest, SentencePieceRoundTripsAndRemovesItsPrefixSpace) {
  OPEN_OR_SKIP(tok, "ggml-vocab-llama-spm.gguf");
  EXPECT_EQ(tok->kind(), "spm");
  for (const std::string& s : Samples()) {
    EXPECT_EQ(tok->Decode(Enc(*tok, s, /*bos=*/true)), s) << "'" << s << "'";
  }
  // The stored pieces keep the space marker.
  const std::vector<int32_t> ids = Enc(*tok, "Hello world");
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(tok->Piece(ids[0]), "\xE2\x96\x81Hello");
}

TEST(TokenizerTest, InvalidUtf8NeverFails) {
  for (const char* name : {"ggml-vocab-qwen2.gguf", "ggml-vocab-llama-spm.gguf"}) {
    OPEN_OR_SKIP(tok, name);
    const std::string bad = std::string("ok \xFF\xC3 \xE2\x82 \xED\xA0\x80 end") + '\0' + "x";
    const std::vector<int32_t> ids = Enc(*tok, bad);
    EXPECT_FALSE(ids.empty());
    if (tok->kind() == "spm") {
      // Byte fallback keeps the bytes, but (as in llama.cpp) a bad lead byte swallows the
      // next bytes into its "character", so a following space may come back as "▁".
      const std::string back = tok->Decode(ids);
      EXPECT_TRUE(back.starts_with("ok \xFF")) << back;
      EXPECT_TRUE(back.ends_with(std::string(" end") + '\0' + "x")) << back;
    } else {
      EXPECT_TRUE(utf8::IsValid(tok->Decode(ids)));  // bad bytes were read as U+FFFD
    }
  }
}

// ---- streaming ------------------------------------------------------------------------------

TEST(TokenizerTest, StreamDecoderHoldsBackSplitCharacters) {
  OPEN_OR_SKIP(tok, "ggml-vocab-llama-spm.gguf");
  // "🦙" (F0 9F A6 99) has no token of its own in Llama's vocabulary: byte tokens.
  const std::string text = "a 🦙 b €";
  const std::vector<int32_t> ids = Enc(*tok, text);
  int byte_tokens = 0;
  for (int32_t id : ids) byte_tokens += tok->Piece(id).starts_with("<0x");
  ASSERT_GE(byte_tokens, 4);
  Tokenizer::StreamDecoder dec = tok->NewStreamDecoder();
  std::string all;
  for (int32_t id : ids) {
    const std::string part = dec.Push(id);
    EXPECT_TRUE(utf8::IsValid(part)) << "partial UTF-8 emitted after id " << id;
    all += part;
  }
  all += dec.Flush();
  EXPECT_EQ(all, " " + text);  // the stream keeps the prefix space

  // Bytes that cannot form a character come out as U+FFFD, never raw.
  Tokenizer::StreamDecoder bad = tok->NewStreamDecoder();
  const int32_t f0 = tok->TokenId("<0xF0>"), x41 = tok->TokenId("<0x41>");
  ASSERT_GE(f0, 0);
  ASSERT_GE(x41, 0);
  EXPECT_EQ(bad.Push(f0), "");
  EXPECT_EQ(bad.Push(x41),
            "\xEF\xBF\xBD"
            "A");
  EXPECT_EQ(bad.Push(f0), "");
  EXPECT_EQ(bad.Flush(), "\xEF\xBF\xBD");
}

TEST(TokenizerTest, StreamDecoderOnByteLevelBpe) {
  OPEN_OR_SKIP(tok, "ggml-vocab-gpt-2.gguf");
  const std::string text = "Chinese 我想在 and emoji 😶‍🌫️ ok";
  std::string all;
  Tokenizer::StreamDecoder dec = tok->NewStreamDecoder();
  for (int32_t id : Enc(*tok, text)) {
    const std::string part = dec.Push(id);
    EXPECT_TRUE(utf8::IsValid(part));
    all += part;
  }
  EXPECT_EQ(all + dec.Flush(), text);
}

// ---- special tokens and BOS -------------------------------------------------------------------

TEST(TokenizerTest, ParseSpecialRecognisesControlTokens) {
  {
    OPEN_OR_SKIP(tok, "ggml-vocab-llama-spm.gguf");
    EXPECT_EQ(Enc(*tok, "<s>Hi", false, true).front(), 1);
    EXPECT_NE(Enc(*tok, "<s>Hi", false, false).front(), 1);  // plain text otherwise
    EXPECT_EQ(tok->Decode(Enc(*tok, "<s>Hi</s>", false, true), true), "<s>Hi</s>");
    EXPECT_EQ(tok->Decode(Enc(*tok, "<s>Hi</s>", false, true)), "Hi");
  }
  {
    OPEN_OR_SKIP(tok, "ggml-vocab-qwen2.gguf");
    const int32_t im_start = tok->TokenId("<|im_start|>");
    const int32_t im_end = tok->TokenId("<|im_end|>");
    ASSERT_EQ(im_start, 151644);
    EXPECT_TRUE(tok->IsControl(im_start));
    const std::string chat = "<|im_start|>user\nHi<|im_end|>\n";
    const std::vector<int32_t> ids = Enc(*tok, chat, false, true);
    ASSERT_GE(ids.size(), 4u);
    EXPECT_EQ(ids.front(), im_start);
    EXPECT_NE(std::find(ids.begin(), ids.end(), im_end), ids.end());
    EXPECT_EQ(tok->Decode(ids, /*render_special=*/true), chat);
    const std::vector<int32_t> plain = Enc(*tok, chat, false, false);
    EXPECT_EQ(std::find(plain.begin(), plain.end(), im_start), plain.end());
    EXPECT_EQ(tok->Decode(plain), chat);
    EXPECT_EQ(tok->eot(), im_end);
    EXPECT_EQ(tok->eos(), 151643);
    EXPECT_TRUE(tok->IsEog(im_end));
  }
}

TEST(TokenizerTest, BosOnlyWhenAskedAndWanted) {
  {
    OPEN_OR_SKIP(tok, "ggml-vocab-llama-spm.gguf");
    EXPECT_TRUE(tok->add_bos());
    EXPECT_EQ(tok->bos(), 1);
    EXPECT_EQ(Enc(*tok, "Hello", true), (std::vector<int32_t>{1, 15043}));
    EXPECT_EQ(Enc(*tok, "Hello", false), (std::vector<int32_t>{15043}));
    EXPECT_EQ(Enc(*tok, "", true), (std::vector<int32_t>{1}));
  }
  {
    OPEN_OR_SKIP(tok, "ggml-vocab-qwen2.gguf");  // no add_bos_token: Qwen wants none
    EXPECT_FALSE(tok->add_bos());
    EXPECT_EQ(Enc(*tok, "Hello", true), Enc(*tok, "Hello", false));
  }
  {
    OPEN_OR_SKIP(tok, "ggml-vocab-deepseek-llm.gguf");  // add_bos_token = true
    EXPECT_TRUE(tok->add_bos());
    const std::vector<int32_t> ids = Enc(*tok, "Hello", true);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids.front(), 100000);
  }
}

TEST(TokenizerTest, TinyVocabLoadsAndRoundTripsEnglish) {
  OPEN_OR_SKIP(tok, "vocab-tiny4k.gguf");
  EXPECT_EQ(tok->n_vocab(), 4096);
  EXPECT_EQ(tok->kind(), "spm");
  const std::string text =
      "In the beginning God created the heaven and the earth. The quick brown fox jumps "
      "over the lazy dog; Python's list.sort() is stable!";
  const std::vector<int32_t> ids = Enc(*tok, text, true);
  EXPECT_EQ(ids.front(), tok->bos());
  EXPECT_LT(ids.size(), text.size() / 2);  // real merges, not bytes
  EXPECT_EQ(tok->Decode(ids), text);
}

TEST(TokenizerTest, OpenErrorsNameTheFileAndKey) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Open("/nonexistent/x.gguf");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("/nonexistent/x.gguf"), std::string::npos);
}

// ---- the pre-tokenizer ----------------------------------------------------------------------

std::vector<std::string> SplitWith(const PreTokenizer& p, std::string_view text) {
  std::vector<std::string_view> words;
  EXPECT_TRUE(p.Split(text, &words).ok());
  return std::vector<std::string>(words.begin(), words.end());
}

TEST(PreTokenizerTest, Gpt2SplitsLikeTheRegex) {
  absl::StatusOr<PreTokenizer> p = PreTokenizer::Create("gpt-2");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(SplitWith(*p, "Hello world's  end!!\n"),
            (std::vector<std::string>{"Hello", " world", "'s", " ", " end", "!!", "\n"}));
}

TEST(PreTokenizerTest, UnknownNameFallsBackToGpt2) {
  absl::StatusOr<PreTokenizer> p = PreTokenizer::Create("no-such-pre");
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->known());
  EXPECT_EQ(p->name(), "gpt-2");
}

TEST(PreTokenizerTest, ExpressionsApplyPieceByPiece) {
  // "$" ends at the piece's end, not before a final newline, and not at the text's end.
  absl::StatusOr<PreTokenizer> p = PreTokenizer::FromRegexes({"[\r\n]", R"(\s+$)"});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(SplitWith(*p, "a  \nb "), (std::vector<std::string>{"a", "  ", "\n", "b", " "}));
}

TEST(PreTokenizerTest, LongWhitespaceRunsDoNotFail) {
  for (const char* name : {"qwen2", "llama3", "deepseek-llm", "gpt-2"}) {
    absl::StatusOr<PreTokenizer> p = PreTokenizer::Create(name);
    ASSERT_TRUE(p.ok());
    const std::string text = "a" + std::string(200000, ' ') + "b" + std::string(100000, '\n');
    std::vector<std::string_view> words;
    ASSERT_TRUE(p->Split(text, &words).ok()) << name;
    size_t total = 0;
    for (auto w : words) total += w.size();
    EXPECT_EQ(total, text.size()) << name;
  }
}

}  // namespace
}  // namespace moex
