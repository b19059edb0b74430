// `moex tokenize` / `moex detokenize` end to end on the vocab-only GGUF files of
// ../shared/testdata/vocab (no tensors), and their bad-input behaviour.
#include <string>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace moex {
namespace {

using ::moex::testing::BinaryPath;
using ::moex::testing::RunCommand;
using ::moex::testing::TestDataDir;

std::string Quoted(const std::string& s) { return "'" + s + "'"; }

// Runs `moex ARGS` with stdout only (stderr discarded) or stderr only.
int Moex(const std::string& args, std::string* out) {
  return RunCommand(Quoted(BinaryPath("tools/moex")) + " " + args + " 2>/dev/null", out);
}
int MoexStderr(const std::string& args, std::string* err) {
  return RunCommand("{ " + Quoted(BinaryPath("tools/moex")) + " " + args + " 2>&1 >/dev/null; }",
                    err);
}

std::string Qwen2() {
  const std::string dir = TestDataDir();
  return dir.empty() ? "" : dir + "/vocab/ggml-vocab-qwen2.gguf";
}

TEST(TokenizeCliTest, JsonIdsOnAVocabOnlyFile) {
  if (Qwen2().empty()) GTEST_SKIP() << "no ../shared/testdata/vocab";
  std::string out;
  // " Hello, world!" is string 17 of llama.cpp's qwen2 test vectors: 21927 11 1879 0.
  ASSERT_EQ(Moex("tokenize -m " + Quoted(Qwen2()) + " --text ' Hello, world!' --json", &out), 0)
      << out;
  EXPECT_EQ(out, "{\"ids\":[21927,11,1879,0],\"n_tokens\":4}\n");

  // Control tokens only with --special; Qwen adds no BOS.
  ASSERT_EQ(
      Moex("tokenize -m " + Quoted(Qwen2()) + " --text '<|im_start|>user' --special --json", &out),
      0);
  EXPECT_EQ(out, "{\"ids\":[151644,872],\"n_tokens\":2}\n");
}

TEST(TokenizeCliTest, DetokenizeInvertsTokenize) {
  if (Qwen2().empty()) GTEST_SKIP() << "no ../shared/testdata/vocab";
  std::string out;
  ASSERT_EQ(Moex("detokenize -m " + Quoted(Qwen2()) + " --tokens 21927,11,1879,0 --json", &out), 0);
  EXPECT_EQ(out, "{\"text\":\" Hello, world!\"}\n");
}

TEST(TokenizeCliTest, BadInputIsOneLineAndTheRightCode) {
  if (Qwen2().empty()) GTEST_SKIP() << "no ../shared/testdata/vocab";
  std::string err;
  EXPECT_EQ(MoexStderr("tokenize -m " + Quoted(Qwen2()), &err), 2);  // no --text / --file
  EXPECT_EQ(err.find("moex tokenize: "), 0u) << err;
  EXPECT_EQ(MoexStderr("tokenize -m /nonexistent.gguf --text x", &err), 1);
  EXPECT_NE(err.find("/nonexistent.gguf"), std::string::npos) << err;
  EXPECT_EQ(MoexStderr("detokenize -m " + Quoted(Qwen2()) + " --tokens 1,999999", &err), 1);
  EXPECT_NE(err.find("999999"), std::string::npos) << err;
  EXPECT_EQ(err.find('\n'), err.size() - 1) << err;  // exactly one line
}

}  // namespace
}  // namespace moex
