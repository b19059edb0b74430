// `moex chat` end to end through a pipe: two turns where the second reuses the KV cache,
// the commands, a full context, and the saved conversation.
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace moex {
namespace {

class ChatCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir());
    std::string out;
    ASSERT_EQ(testing::RunCommand(Moex() +
                                      " gen --arch qwen3moe --type q8_0 --hidden 64 "
                                      "--layers 2 --heads 4 --kv-heads 2 --experts 4 "
                                      "--top-k 2 --ffn 64 --vocab-size 600 --quiet -o " +
                                      Model(),
                                  &out),
              0)
        << out;
  }
  static std::string Moex() { return testing::BinaryPath("tools/moex"); }
  static std::string Model() { return *dir_ + "/chat.gguf"; }
  // Runs `moex chat` with `input` on stdin; stdout and stderr go to separate strings.
  static int Chat(const std::string& flags, const std::string& input, std::string* out,
                  std::string* err) {
    const std::string in = *dir_ + "/in.txt", errf = *dir_ + "/err.txt";
    std::ofstream(in) << input;
    // A subshell, so RunCommand's own 2>&1 does not merge the two streams again.
    const int rc = testing::RunCommand(
        "(" + Moex() + " chat -m " + Model() + " " + flags + " < " + in + " 2>" + errf + ")", out);
    std::ifstream e(errf);
    std::stringstream ss;
    ss << e.rdbuf();
    *err = ss.str();
    return rc;
  }
  static std::string* dir_;
};
std::string* ChatCliTest::dir_ = nullptr;

TEST_F(ChatCliTest, SecondTurnPrefillsOnlyWhatIsNew) {
  std::string out, err;
  ASSERT_EQ(Chat("-n 8 --temp 0", "hello there\nand again\n", &out, &err), 0) << err;
  // One stats line per answer: "[prefill P tokens (R reused) ..., context C/..."
  std::regex stats(R"(\[prefill (\d+) tokens \((\d+) reused\).*context (\d+)/)");
  std::vector<std::array<int, 3>> turns;
  for (std::sregex_iterator it(err.begin(), err.end(), stats), end; it != end; ++it) {
    turns.push_back({std::stoi((*it)[1]), std::stoi((*it)[2]), std::stoi((*it)[3])});
  }
  ASSERT_EQ(turns.size(), 2u) << err;
  EXPECT_EQ(turns[0][1], 0);  // nothing to reuse in the first turn
  EXPECT_GT(turns[1][1], 0) << "the second turn must reuse the cached first turn";
  // Everything the second prompt needs is either reused or prefilled, and the reused part
  // covers at least the first prompt.
  EXPECT_GE(turns[1][1], turns[0][0]);
  EXPECT_LT(turns[1][0], turns[1][0] + turns[1][1]);
}

TEST_F(ChatCliTest, CommandsWorkAndSaveWritesTheConversation) {
  const std::string save = *dir_ + "/conv.json";
  std::string out, err;
  ASSERT_EQ(
      Chat("-n 4 --system 'be brief'",
           "/help\nhi\n/stats\n/save " + save + "\n/bogus\n/reset\n/exit\nnot read\n", &out, &err),
      0)
      << err;
  EXPECT_NE(out.find("/reset"), std::string::npos) << out;  // the /help text
  EXPECT_NE(out.find("[saved to"), std::string::npos) << out;
  EXPECT_NE(out.find("unknown command /bogus"), std::string::npos) << out;
  EXPECT_NE(out.find("[new conversation]"), std::string::npos) << out;
  std::ifstream f(save);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string json = ss.str();
  EXPECT_NE(json.find(R"({"role":"system","content":"be brief"})"), std::string::npos) << json;
  EXPECT_NE(json.find(R"({"role":"user","content":"hi"})"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("role":"assistant")"), std::string::npos) << json;
  // /exit ends the session: the next line is never answered.
  EXPECT_EQ(err.find("context 0/"), std::string::npos);
}

TEST_F(ChatCliTest, FullContextIsAClearMessageNotACrash) {
  std::string out, err;
  const std::string long_line(400, 'x');
  ASSERT_EQ(Chat("-c 32 -n 4", long_line + "\nshort\n", &out, &err), 0) << err;
  EXPECT_NE(err.find("fills the context of 32 tokens"), std::string::npos) << err;
}

TEST_F(ChatCliTest, UnknownTemplateNameIsAUsageError) {
  std::string out, err;
  EXPECT_EQ(Chat("--chat-template nonsense", "hi\n", &out, &err), 2);
  EXPECT_NE(err.find("nonsense"), std::string::npos) << err;
}

}  // namespace
}  // namespace moex
