// `moex ppl` end to end: perplexity with the KV cache compressed and quantised, and the
// numbers it reports about the cache.
#include <regex>
#include <string>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace moex {
namespace {

class PplCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir());
    std::string out;
    ASSERT_EQ(testing::RunCommand(Moex() +
                                      " gen --arch qwen3moe --type f16 --hidden 64 "
                                      "--layers 2 --heads 4 --kv-heads 2 --head-dim 32 "
                                      "--experts 4 --top-k 2 --ffn 64 --vocab-size 600 "
                                      "--quiet -o " +
                                      *dir_ + "/m.gguf",
                                  &out),
              0)
        << out;
    std::string text;
    for (int i = 0; i < 60; ++i)
      text += "the quick brown fox jumps over the lazy dog " + std::to_string(i) + ". ";
    ASSERT_EQ(testing::RunCommand("printf '%s' '" + text + "' > " + *dir_ + "/t.txt", &out), 0);
  }
  static std::string Moex() { return testing::BinaryPath("tools/moex"); }
  static double Field(const std::string& json, const std::string& key) {
    std::smatch m;
    std::regex re("\"" + key + "\":([-0-9.e+]+)");
    EXPECT_TRUE(std::regex_search(json, m, re)) << key << " in " << json;
    return m.empty() ? -1 : std::stod(m[1]);
  }
  static std::string Ppl(const std::string& flags) {
    std::string out;
    EXPECT_EQ(testing::RunCommand(Moex() + " ppl -m " + *dir_ + "/m.gguf --file " + *dir_ +
                                      "/t.txt -c 64 --json " + flags + " 2>/dev/null",
                                  &out),
              0)
        << out;
    return out;
  }
  static std::string* dir_;
};
std::string* PplCliTest::dir_ = nullptr;

TEST_F(PplCliTest, ReportsPerplexityAndKvMemory) {
  const std::string full = Ppl("");
  const double ppl = Field(full, "ppl");
  EXPECT_GT(ppl, 1.0);
  EXPECT_LT(ppl, 600.0 * 1.5);  // random weights: about the vocabulary size, not more
  EXPECT_EQ(Field(full, "tokens"), Field(full, "windows") * 63);
  // f32 rows: 2 layers x 2 KV heads x 32 values x 4 bytes x (K, V) = 1024 bytes a token.
  EXPECT_EQ(Field(full, "kv_bytes_per_token"), 1024);
  EXPECT_EQ(Field(full, "kv_peak_bytes"), 1024 * 64);
}

TEST_F(PplCliTest, QuantisedRowsCostLittleQualityAndFewerBytes) {
  const double base = Field(Ppl(""), "ppl");
  const std::string q8 = Ppl("--kv-type q8");
  EXPECT_NEAR(Field(q8, "ppl"), base, 0.02 * base);
  EXPECT_EQ(Field(q8, "kv_bytes_per_token"), 2 * 2 * 34 * 2);  // one Q8_0 block per row
}

TEST_F(PplCliTest, CompressionKeepsTheBudgetAndChangesTheScore) {
  const std::string h2o = Ppl("--kv-policy h2o:budget=16");
  // 16 of 64 positions kept per head at the end of each window.
  EXPECT_EQ(Field(h2o, "kv_bytes_per_token"), 1024 * 16 / 64);
  EXPECT_NE(Field(h2o, "ppl"), Field(Ppl(""), "ppl"));
  std::string out;
  EXPECT_EQ(
      testing::RunCommand(
          Moex() + " ppl -m " + *dir_ + "/m.gguf --file " + *dir_ + "/t.txt --kv-policy lru", &out),
      2)
      << out;
  EXPECT_NE(out.find("unknown KV policy 'lru'"), std::string::npos) << out;
}

}  // namespace
}  // namespace moex

namespace moex {
namespace {

TEST(BenchCliTest, JsonHasTheFiguresAndTheBandwidthBound) {
  const std::string dir = testing::MakeTempDir();
  const std::string moex = testing::BinaryPath("tools/moex");
  std::string out;
  ASSERT_EQ(testing::RunCommand(moex +
                                    " gen --arch olmoe --type q8_0 --hidden 64 --layers 2 "
                                    "--heads 4 --kv-heads 4 --experts 8 --top-k 2 --ffn 64 "
                                    "--vocab-size 600 --quiet -o " +
                                    dir + "/b.gguf",
                                &out),
            0)
      << out;
  ASSERT_EQ(testing::RunCommand(moex + " bench -m " + dir +
                                    "/b.gguf -p 8 -n 4 --reps 1 --json "
                                    "--kv-type f16 2>/dev/null",
                                &out),
            0)
      << out;
  for (const char* key : {"\"prefill_tps\":", "\"decode_tps\":", "\"bytes_per_token\":",
                          "\"mem_bw_gbps\":", "\"bw_fraction\":", "\"kv_bytes\":", "\"load_s\":"}) {
    EXPECT_NE(out.find(key), std::string::npos) << key << " in " << out;
  }
  // Weights per token: 2 of 8 experts per layer, so well under the file's size.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex("\"bytes_per_token\":([0-9]+)")));
  const double bpt = std::stod(m[1]);
  EXPECT_GT(bpt, 0);
  ASSERT_TRUE(std::regex_search(out, m, std::regex("\"kv_bytes\":([0-9]+)")));
  // f16 rows: 2 layers x 4 heads x 16 values x 2 bytes x (K, V) x 11 positions: the 8
  // prompt tokens and 3 of the 4 generated (the last one is sampled, never evaluated).
  EXPECT_EQ(std::stoll(m[1]), 2 * 4 * 16 * 2 * 2 * 11);
}

}  // namespace
}  // namespace moex
