// `moex trace` then `moex lrc` end to end: on a synthetic model from `moex gen`, on the
// trained tiny MoE (same experts as its PyTorch original's recorded routing), and the
// paper's reference numbers reproduced through the CLI.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace moex {
namespace {

using ::moex::testing::BinaryPath;
using ::moex::testing::RunCommand;
using ::moex::testing::TestDataDir;

std::string Q(const std::string& s) { return "'" + s + "'"; }
std::string Moex() { return Q(BinaryPath("tools/moex")); }
int MoexRun(const std::string& args, std::string* out) {
  return RunCommand(Moex() + " " + args + " 2>/dev/null", out);
}
int MoexErr(const std::string& args, std::string* err) {
  return RunCommand("{ " + Moex() + " " + args + " 2>&1 >/dev/null; }", err);
}
std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The trace file read by hand from its documentation (docs/TRACE_FORMAT.md), not with the
// library's reader: experts[seq][token][layer] as sets.
struct HandTrace {
  uint32_t E = 0, k = 0, L = 0;
  std::vector<std::vector<std::vector<std::set<int>>>> seqs;
};
bool ReadHand(const std::string& path, HandTrace* t) {
  const std::string d = Slurp(path);
  if (d.size() < 32 || std::memcmp(d.data(), "MOEXTRC\0", 8) != 0) return false;
  auto u32 = [&](size_t p) {
    uint32_t v;
    std::memcpy(&v, d.data() + p, 4);
    return v;
  };
  const uint32_t flags = u32(12);
  t->E = u32(16);
  t->k = u32(20);
  t->L = u32(24);
  size_t p = 32 + u32(28);
  const size_t id_bytes = t->E <= 256 ? 1 : 2;
  while (p < d.size()) {
    p += 4 + u32(p);
    const uint32_t T = u32(p);
    p += 4;
    auto& seq = t->seqs.emplace_back(T, std::vector<std::set<int>>(t->L));
    for (uint32_t tok = 0; tok < T; ++tok) {
      for (uint32_t l = 0; l < t->L; ++l) {
        for (uint32_t j = 0; j < t->k; ++j) {
          const size_t i = p + ((tok * t->L + l) * t->k + j) * id_bytes;
          seq[tok][l].insert(id_bytes == 1 ? static_cast<uint8_t>(d[i])
                                           : static_cast<uint8_t>(d[i]) |
                                                 static_cast<uint8_t>(d[i + 1]) << 8);
        }
      }
    }
    const size_t ids = static_cast<size_t>(T) * t->L * t->k;
    p += ids * id_bytes + (flags & 1 ? ids * 4 : 0) +
         (flags & 2 ? static_cast<size_t>(T) * t->L * t->E * 4 : 0);
  }
  return p == d.size();
}

TEST(TraceCliTest, SyntheticModelEndToEnd) {
  const std::string dir = testing::MakeTempDir();
  std::string out;
  ASSERT_EQ(RunCommand(Moex() +
                           " gen --arch qwen3moe --type f32 --hidden 64 --layers 2 --heads 2"
                           " --kv-heads 1 --experts 8 --top-k 2 --ffn 32 --vocab-size 512"
                           " -o " +
                           Q(dir + "/m.gguf") + " 2>&1",
                       &out),
            0)
      << out;
  std::string text;
  for (int i = 0; i < 60; ++i)
    text += "the quick brown fox jumps over the lazy dog " + std::to_string(i) + "\n";
  std::ofstream(dir + "/t.txt") << text;
  ASSERT_EQ(MoexRun("trace -m " + Q(dir + "/m.gguf") + " --file " + Q(dir + "/t.txt") +
                        " --ctx 24 --probs -o " + Q(dir + "/a.trace"),
                    &out),
            0);
  // Decode token by token routes the same experts as one prefill.
  ASSERT_EQ(MoexRun("trace -m " + Q(dir + "/m.gguf") + " --file " + Q(dir + "/t.txt") +
                        " --ctx 24 --decode --max-windows 3 -o " + Q(dir + "/d.trace"),
                    &out),
            0);
  HandTrace a, d;
  ASSERT_TRUE(ReadHand(dir + "/a.trace", &a));
  ASSERT_TRUE(ReadHand(dir + "/d.trace", &d));
  EXPECT_EQ(a.E, 8u);
  EXPECT_EQ(a.k, 2u);
  EXPECT_EQ(a.L, 2u);
  ASSERT_GE(a.seqs.size(), 3u);
  ASSERT_EQ(d.seqs.size(), 3u);
  int same = 0, total = 0;
  for (int s = 0; s < 3; ++s) {
    ASSERT_EQ(a.seqs[s].size(), 24u);
    for (int t = 0; t < 24; ++t) {
      for (int l = 0; l < 2; ++l) {
        same += a.seqs[s][t][l] == d.seqs[s][t][l];
        ++total;
      }
    }
  }
  EXPECT_GE(same, total * 0.97);  // float order differs between batch and single-token

  ASSERT_EQ(MoexRun("lrc " + Q(dir + "/a.trace") + " --m 4,16 --json --bootstrap 20 --csv " +
                        Q(dir) + " --plot " + Q(dir + "/p.svg"),
                    &out),
            0);
  for (const char* key :
       {"\"num_experts\":8", "\"top_k\":2", "\"num_layers\":2", "\"tokens\":", "\"model\":{",
        "\"layers\":[{\"layer\":0", "\"srp\":{\"4\":", "\"sch\":{\"4\":{\"1\":",
        "\"policies\":{\"lru\":{\"1\":", "\"belady\"", "\"score\"", "\"lfu\"", "\"srp_ci\""}) {
    EXPECT_NE(out.find(key), std::string::npos) << key << "\n" << out.substr(0, 400);
  }
  EXPECT_NE(Slurp(dir + "/p.svg").find("</svg>"), std::string::npos);
  EXPECT_NE(Slurp(dir + "/sch.csv").find("layer,m,C,C_over_k,sch,lo,hi\nmodel,4,1,0.5,"),
            std::string::npos);
  // The readable tables too.
  ASSERT_EQ(MoexRun("lrc " + Q(dir + "/a.trace"), &out), 0);
  EXPECT_NE(out.find("SRP"), std::string::npos);
}

// `moex run --trace` and `moex chat --trace` record the routing while generating: one
// sequence per run or chat turn, every evaluated token with every layer.
TEST(TraceCliTest, RunAndChatRecordRouting) {
  const std::string dir = testing::MakeTempDir();
  const std::string model = Q(dir + "/m.gguf");
  std::string out;
  ASSERT_EQ(RunCommand(Moex() +
                           " gen --arch qwen3moe --type f32 --hidden 64 --layers 2 --heads 2"
                           " --kv-heads 1 --experts 8 --top-k 2 --ffn 32 --vocab-size 600 "
                           "--quiet -o " +
                           model + " 2>&1",
                       &out),
            0)
      << out;
  const std::string run = "run -m " + model + " --tokens 1,2,3,4,5 --temp 0 --ignore-eos ";
  ASSERT_EQ(MoexRun(run + "-n 6 --trace " + Q(dir + "/r6.trace"), &out), 0) << out;
  ASSERT_EQ(MoexRun(run + "-n 1 --trace " + Q(dir + "/r1.trace"), &out), 0) << out;
  HandTrace r6, r1;
  ASSERT_TRUE(ReadHand(dir + "/r6.trace", &r6));
  ASSERT_TRUE(ReadHand(dir + "/r1.trace", &r1));
  EXPECT_EQ(r6.E, 8u);
  EXPECT_EQ(r6.k, 2u);
  EXPECT_EQ(r6.L, 2u);
  ASSERT_EQ(r6.seqs.size(), 1u);
  ASSERT_EQ(r1.seqs.size(), 1u);
  // The prompt, then every generated token but the last (sampled, never evaluated).
  EXPECT_EQ(r6.seqs[0].size(), 5u + 6 - 1);
  EXPECT_EQ(r1.seqs[0].size(), 5u);
  for (size_t t = 0; t < r6.seqs[0].size(); ++t) {
    for (int l = 0; l < 2; ++l) EXPECT_EQ(r6.seqs[0][t][l].size(), 2u) << t << " " << l;
  }
  // The prompt is one prefill in both runs: the same experts.
  for (int t = 0; t < 5; ++t) EXPECT_EQ(r6.seqs[0][t], r1.seqs[0][t]) << "token " << t;
  ASSERT_EQ(MoexRun("lrc " + Q(dir + "/r6.trace") + " --m 4 --json", &out), 0);
  EXPECT_NE(out.find("\"tokens\":10"), std::string::npos) << out;

  // Two chat turns: two sequences; the second holds only what the turn evaluated (its new
  // prompt tokens and its answer), not the cached first turn again.
  std::ofstream(dir + "/in.txt") << "hello there\nand again\n";
  std::string err;
  ASSERT_EQ(RunCommand("{ " + Moex() + " chat -m " + model + " -n 6 --temp 0 --trace " +
                           Q(dir + "/c.trace") + " < " + Q(dir + "/in.txt") + " 2>&1 >/dev/null; }",
                       &err),
            0)
      << err;
  HandTrace c;
  ASSERT_TRUE(ReadHand(dir + "/c.trace", &c)) << err;
  ASSERT_EQ(c.seqs.size(), 2u) << err;
  // "[prefill P tokens (R reused) ...": a turn records its P prompt tokens and at most
  // n - 1 = 5 answer tokens.
  std::vector<int> prefill;
  for (size_t at = err.find("[prefill "); at != std::string::npos;
       at = err.find("[prefill ", at + 1)) {
    prefill.push_back(std::stoi(err.substr(at + 9)));
  }
  ASSERT_EQ(prefill.size(), 2u) << err;
  for (int i = 0; i < 2; ++i) {
    EXPECT_GE(c.seqs[i].size(), static_cast<size_t>(prefill[i])) << err;
    EXPECT_LE(c.seqs[i].size(), static_cast<size_t>(prefill[i] + 5)) << err;
  }
  ASSERT_EQ(MoexRun("lrc " + Q(dir + "/c.trace") + " --m 4", &out), 0);
}

TEST(TraceCliTest, BadInputIsOneLineWithTheLine) {
  const std::string dir = testing::MakeTempDir();
  std::ofstream(dir + "/bad.csv") << "seq,token,layer,experts\na,0,0,1;2\na,1,0,1\n";
  std::string err;
  EXPECT_EQ(MoexErr("lrc " + Q(dir + "/bad.csv"), &err), 1);
  EXPECT_NE(err.find("bad.csv:3: 1 experts where earlier rows have 2"), std::string::npos) << err;
  EXPECT_EQ(MoexErr("lrc " + Q(dir + "/bad.csv") + " --m 0", &err), 2);
  EXPECT_EQ(MoexErr("lrc", &err), 2);
  EXPECT_EQ(MoexErr("lrc /nonexistent.trace", &err), 1);
  EXPECT_NE(err.find("/nonexistent.trace"), std::string::npos) << err;
  EXPECT_EQ(MoexErr("trace --file x -o y", &err), 2);
}

TEST(TraceCliTest, TinyMoeSelectsTheExpertsOfItsPyTorchOriginal) {
  const std::string data = TestDataDir();
  const std::string tiny = data + "/tiny-moe";
  if (data.empty() || Slurp(tiny + "/val-mix.trace.csv").empty()) {
    GTEST_SKIP() << "no ../shared/testdata/tiny-moe";
  }
  // The val-mix windows (tiny-moe/README.md): the first 20000 bytes of each text, in order.
  const std::string dir = testing::MakeTempDir();
  std::string text;
  for (const char* f : {"val-python.txt", "val-fortunes.txt", "val-kjv.txt"}) {
    text += Slurp(tiny + "/" + f).substr(0, 20000);
  }
  std::ofstream(dir + "/valmix.txt", std::ios::binary) << text;
  constexpr int kWindows = 10;  // of 74: enough to show agreement, quick in a test
  std::string out;
  ASSERT_EQ(MoexRun("trace -m " + Q(tiny + "/tiny-moe-f32.gguf") + " --file " +
                        Q(dir + "/valmix.txt") + " --ctx 256 --max-windows " +
                        std::to_string(kWindows) + " -o " + Q(dir + "/v.trace"),
                    &out),
            0);
  HandTrace mine;
  ASSERT_TRUE(ReadHand(dir + "/v.trace", &mine));
  ASSERT_EQ(mine.seqs.size(), static_cast<size_t>(kWindows));
  std::istringstream csv(Slurp(tiny + "/val-mix.trace.csv"));
  std::string line;
  std::getline(csv, line);  // seq,token,layer,experts,weights
  int same = 0, total = 0;
  while (std::getline(csv, line)) {
    std::vector<std::string> f;
    std::stringstream ls(line);
    for (std::string x; std::getline(ls, x, ',');) f.push_back(x);
    const int s = std::stoi(f[0]), t = std::stoi(f[1]), l = std::stoi(f[2]);
    if (s >= kWindows) continue;
    std::set<int> ref;
    std::stringstream es(f[3]);
    for (std::string x; std::getline(es, x, ';');) ref.insert(std::stoi(x));
    same += mine.seqs[s][t][l] == ref;
    ++total;
  }
  ASSERT_EQ(total, kWindows * 256 * 6);
  std::printf("tiny-moe: same top-4 experts in %d of %d token-layers\n", same, total);
  EXPECT_GE(same, total * 0.995);  // near-ties may flip
}

TEST(TraceCliTest, ReproducesThePapersNumbersOnMixtral) {
  const std::string data = TestDataDir();
  const std::string ref = data + "/traces/reference/mixtral-gsm8k.csv";
  if (data.empty() || Slurp(ref).empty()) GTEST_SKIP() << "no ../shared/testdata/traces";
  std::string out;
  ASSERT_EQ(MoexRun("lrc " + Q(ref) + " --m 16 --json --no-policies", &out), 0);
  // mixtral-gsm8k-ref.json: model SRP m=16 0.491195, SCH m=16 C=2 0.393955, C=4 0.699347.
  EXPECT_NE(out.find("\"model\":{\"srp\":{\"16\":0.491195}"), std::string::npos)
      << out.substr(0, 300);
  EXPECT_NE(out.find("\"2\":0.393955,"), std::string::npos);
  EXPECT_NE(out.find("\"4\":0.699347,"), std::string::npos);
  // The JSON-lines original through its import format: the same figures.
  std::string out2;
  ASSERT_EQ(MoexRun("lrc " + Q(data + "/traces/mixtral-8x7b-instruct-fp8/gsm8k_2_routing.jsonl") +
                        " --format mixtral-jsonl --experts 8 --m 16 --json --no-policies",
                    &out2),
            0);
  EXPECT_EQ(out.substr(out.find("\"num_experts\"")), out2.substr(out2.find("\"num_experts\"")));
}

// Traces without recorded guesses (imports) still get the routing-only predictors and
// token grouping; previous-token equals what `moex predict` measures in the forward pass
// on the same windows (docs/PREDICTOR.md: 0.4447 over 113,220 layer-tokens).
TEST(TraceCliTest, LrcPredictorsAndTokenGroupingOnAnImport) {
  const std::string csv = TestDataDir() + "/tiny-moe/val-mix.trace.csv";
  if (TestDataDir().empty() || Slurp(csv).empty()) GTEST_SKIP() << "no tiny-moe trace";
  std::string out;
  ASSERT_EQ(MoexRun("lrc " + Q(csv) + " --m 16 --no-policies --json --group 16,64", &out), 0);
  EXPECT_NE(out.find("\"predictors\":{\"previous-token\":{\"1\":{\"recall\":0.444727,"
                     "\"precision\":0.444727,\"samples\":113220}}"),
            std::string::npos)
      << out.substr(0, 600);
  EXPECT_NE(out.find("\"frequency\":{\"1\":{\"recall\":"), std::string::npos);
  EXPECT_NE(out.find("\"recorded_predictors\":[]"), std::string::npos);
  for (const char* b : {"\"16\":{\"before\":", "\"64\":{\"before\":"}) {
    const size_t p = out.find(std::string("\"token_grouping\":{"));
    ASSERT_NE(p, std::string::npos);
    const size_t q = out.find(b, p);
    ASSERT_NE(q, std::string::npos) << b;
    const double before = std::stod(out.substr(q + std::strlen(b)));
    const size_t a = out.find("\"after\":", q);
    const double after = std::stod(out.substr(a + 8));
    EXPECT_GT(before, after) << b;  // grouping helps on a real routing
    EXPECT_GT(after, 4.0);          // never below top-k
  }
  const std::string dir = testing::MakeTempDir();
  ASSERT_EQ(MoexRun("lrc " + Q(csv) + " --m 16 --no-policies --csv " + Q(dir), &out), 0);
  EXPECT_NE(out.find("previous-token *"), std::string::npos);
  EXPECT_NE(Slurp(dir + "/predictors.csv")
                .find("layer,predictor,distance,recall,precision,samples\n"
                      "model,previous-token,1,0.444727,0.444727,113220\n"),
            std::string::npos);
  EXPECT_NE(Slurp(dir + "/token_grouping.csv").find("\n16,14.3377,10.3566,1184,18944,74\n"),
            std::string::npos)
      << Slurp(dir + "/token_grouping.csv");
  EXPECT_NE(out.find("token grouping for prefill"), std::string::npos);
  ASSERT_EQ(
      MoexRun("lrc " + Q(csv) + " --m 16 --no-policies --no-predictors --group 0 --json", &out), 0);
  EXPECT_EQ(out.find("\"previous-token\""), std::string::npos);
  EXPECT_NE(out.find("\"token_grouping\":{}"), std::string::npos);
}

// `moex trace --predict D` records the cross-layer gates' guesses; `moex lrc` scores them to
// exactly what `moex predict` measures inside the forward pass on the same windows.
TEST(TraceCliTest, PredictRecordsWhatPredictMeasures) {
  const std::string model = TestDataDir() + "/tiny-moe/tiny-moe-f32.gguf";
  const std::string text = Slurp(TestDataDir() + "/tiny-moe/val-kjv.txt").substr(0, 3000);
  if (text.empty()) GTEST_SKIP() << "no tiny-moe";
  const std::string dir = testing::MakeTempDir();
  { std::ofstream(dir + "/t.txt") << text; }
  std::string out, lrc, pred;
  ASSERT_EQ(MoexRun("trace -m " + Q(model) + " --file " + Q(dir + "/t.txt") +
                        " --ctx 128 --predict 2 -o " + Q(dir + "/t.trace"),
                    &out),
            0)
      << out;
  ASSERT_EQ(MoexRun("lrc " + Q(dir + "/t.trace") + " --m 16 --no-policies --json", &lrc), 0);
  ASSERT_EQ(MoexRun("predict -m " + Q(model) + " --file " + Q(dir + "/t.txt") +
                        " -c 128 --distance 2 --json",
                    &pred),
            0)
      << pred;
  for (const char* name : {"cross-layer-gate", "cross-layer-gate-resid"}) {
    // The model-level block of each predictor, from both outputs: "<name>":{"1":{...},"2":{...}}
    auto block = [&](const std::string& s) {
      const size_t p = s.find(std::string("\"") + name + "\":{\"1\"");
      return p == std::string::npos ? std::string() : s.substr(p, s.find("}}", p) - p);
    };
    const std::string a = block(lrc), b = block(pred);
    ASSERT_FALSE(a.empty()) << lrc;
    EXPECT_EQ(a, b) << name;
    EXPECT_NE(a.find("\"samples\":"), std::string::npos);
  }
  EXPECT_EQ(MoexErr("trace -m " + Q(model) + " --file " + Q(dir + "/t.txt") + " --predict 0 -o " +
                        Q(dir + "/u.trace"),
                    &out),
            2);
  EXPECT_NE(out.find("--predict must be between 1 and 4096"), std::string::npos) << out;
}

}  // namespace
}  // namespace moex
