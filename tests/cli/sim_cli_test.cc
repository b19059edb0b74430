// `moex sim` and `moex bench --device sim:P` end to end: the JSON fields the issue names,
// the policy comparison, and the errors for a shape or profile that does not exist.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace moex {
namespace {

using ::moex::testing::BinaryPath;
using ::moex::testing::JsonNumber;
using ::moex::testing::RunCommand;
using ::moex::testing::TestDataDir;

// `moex ARGS` with stdout in *out (stderr dropped unless `keep_stderr`).
int Moex(const std::string& args, std::string* out, bool keep_stderr = false) {
  return RunCommand(
      "{ '" + BinaryPath("tools/moex") + "' " + args + (keep_stderr ? "" : " 2>/dev/null") + "; }",
      out);
}

std::string MixtralTrace() {
  return TestDataDir() + "/traces/mixtral-8x7b-instruct-fp8/gsm8k_2_routing.jsonl";
}

// The shared test data sits beside the checkout; a clone elsewhere has none.
bool HaveTestData() { return !TestDataDir().empty() && std::ifstream(MixtralTrace()).good(); }
constexpr char kNoTestData[] = "no ../shared/testdata (traces, models) beside the checkout";

TEST(SimCliTest, JsonHasTheFiguresTheIssueNames) {
  if (!HaveTestData()) GTEST_SKIP() << kNoTestData;
  std::string out;
  const int rc = Moex("sim --trace '" + MixtralTrace() +
                          "' --model-shape mixtral-8x7b --profile rtx4090-24g --gpu-mem 25% --json",
                      &out);
  ASSERT_EQ(rc, 0) << out;
  ASSERT_EQ(out.front(), '{') << out;
  for (const char* key : {"decode_tps", "hit_rate", "bytes_copied_per_token", "stall_ms_per_token",
                          "cpu_ms_per_token", "slots"}) {
    EXPECT_FALSE(std::isnan(JsonNumber(out, key))) << key << " in " << out;
  }
  EXPECT_GT(JsonNumber(out, "decode_tps"), 0);
  EXPECT_EQ(JsonNumber(out, "slots"), 64);  // 25% of 32 x 8
  EXPECT_NE(out.find("\"policy\":\"hybrid\""), std::string::npos);
  EXPECT_NE(out.find("\"predictor\":\"previous-token\""), std::string::npos);

  ASSERT_EQ(Moex("sim --trace '" + MixtralTrace() +
                     "' --model-shape mixtral-8x7b --profile rtx4090-24g --gpu-mem 25% "
                     "--policy all --json",
                 &out),
            0)
      << out;
  for (const char* p : {"hybrid", "static-layers", "lru-ondemand", "cpu-only"}) {
    EXPECT_NE(out.find(std::string("\"policy\":\"") + p + "\""), std::string::npos) << p;
  }
  // gpu-only does not fit a 24 GB card: reported as skipped, with the sizes.
  EXPECT_NE(out.find("\"skipped\":[\"gpu-only: "), std::string::npos) << out;
}

TEST(SimCliTest, ErrorsNameTheChoices) {
  if (!HaveTestData()) GTEST_SKIP() << kNoTestData;
  std::string out;
  EXPECT_EQ(Moex("sim --trace '" + MixtralTrace() + "' --model-shape mixtral-9x9b", &out, true), 1);
  EXPECT_NE(out.find("qwen3-30b-a3b"), std::string::npos) << out;
  EXPECT_EQ(Moex("sim --trace '" + MixtralTrace() + "' --profile gtx480", &out, true), 1);
  EXPECT_NE(out.find("rtx4060-8g"), std::string::npos) << out;
  EXPECT_EQ(Moex("sim --trace '" + MixtralTrace() + "' --prefetch sometimes", &out, true), 1);
  EXPECT_NE(out.find("impact"), std::string::npos) << out;
  EXPECT_EQ(Moex("sim --list-shapes", &out), 0);
  EXPECT_NE(out.find("gpt-oss-20b"), std::string::npos) << out;
}

TEST(SimCliTest, BenchOnTheSimulatedDevice) {
  if (!HaveTestData()) GTEST_SKIP() << kNoTestData;
  const std::string model = TestDataDir() + "/models/vis-qwen3moe-q4_k_m.gguf";
  std::string out;
  ASSERT_EQ(Moex("bench -m '" + model +
                     "' -p 16 -n 4 --reps 1 --device sim:rtx4060-8g --cpu-profile desktop-ddr5 "
                     "--gpu-mem 25% --json",
                 &out),
            0)
      << out;
  for (const char* key : {"sim_prefill_tps", "sim_decode_tps", "hit_rate", "bytes_copied_per_token",
                          "stall_ms_per_token", "decode_tps"}) {
    EXPECT_FALSE(std::isnan(JsonNumber(out, key))) << key << " in " << out;
  }
  EXPECT_GT(JsonNumber(out, "sim_decode_tps"), 0);
  EXPECT_NE(out.find("\"layers\":[{\"gpu_experts\":"), std::string::npos) << out;
}

// A profile measured elsewhere (`moex calibrate --save-profile` on a GPU machine) replays
// as sim:NAME with --profiles, in bench and in sim; a file that does not load is an error
// naming it. The numbers are the H200's calibration (docs/PERFORMANCE.md).
TEST(SimCliTest, ReplaysASavedProfile) {
  const std::string dir = ::moex::testing::MakeTempDir();
  const std::string ini = dir + "/h200.ini";
  std::ofstream(ini) << "[gpu lab-h200]\nmemory_gib = 139\npcie_gbps = 55.3\n"
                        "pcie_latency_us = 2.6\nmem_gbps = 4110\ntflops = 1070\n"
                        "launch_us = 4.4\n";
  std::string out;
  const std::string gen =
      "gen --arch qwen3moe --layers 2 --hidden 256 --experts 8 --top-k 2 "
      "--ffn 256 --vocab-size 600 --type q8_0 --quiet -o '" +
      dir + "/m.gguf'";
  ASSERT_EQ(Moex(gen, &out), 0) << out;
  ASSERT_EQ(Moex("bench -m '" + dir + "/m.gguf' -p 8 -n 4 --reps 1 --device sim:lab-h200 " +
                     "--cpu-profile desktop-ddr5 --profiles '" + ini + "' --json",
                 &out),
            0)
      << out;
  EXPECT_NE(out.find("\"device\":\"sim:lab-h200\""), std::string::npos) << out;
  EXPECT_GT(JsonNumber(out, "sim_decode_tps"), 0);
  // Without the file the name is unknown; a file that does not parse names itself.
  EXPECT_NE(
      Moex("bench -m '" + dir + "/m.gguf' -p 8 -n 4 --reps 1 --device sim:lab-h200 --json", &out),
      0);
  std::ofstream(dir + "/bad.ini") << "[gpu x]\nmem_gbps = fast\n";
  EXPECT_NE(Moex("bench -m '" + dir + "/m.gguf' --device sim:x --profiles '" + dir + "/bad.ini'",
                 &out, /*keep_stderr=*/true),
            0);
  EXPECT_NE(out.find("bad.ini"), std::string::npos) << out;
  if (!HaveTestData()) return;
  ASSERT_EQ(Moex("sim --trace '" + MixtralTrace() +
                     "' --model-shape mixtral-8x7b --profile lab-h200 --profiles '" + ini +
                     "' --gpu-mem 25% --json",
                 &out),
            0)
      << out;
  EXPECT_GT(JsonNumber(out, "decode_tps"), 0);
}

}  // namespace
}  // namespace moex
