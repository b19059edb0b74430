// `moex calibrate` end to end: the JSON fields, the cache, the saved profile read back by
// --profiles, the profile list, and bad flags. A small expert and --quick keep it ~1 s.
#include <cmath>
#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace moex {
namespace {

using ::moex::testing::BinaryPath;
using ::moex::testing::JsonNumber;
using ::moex::testing::MakeTempDir;
using ::moex::testing::RunCommand;

std::string Quoted(const std::string& s) { return "'" + s + "'"; }

// Runs `moex calibrate ARGS` with its cache in `cache` (stderr discarded).
int Calibrate(const std::string& cache, const std::string& args, std::string* out) {
  // Braces: RunCommand appends 2>&1, which must not undo the 2>/dev/null inside.
  return RunCommand("{ XDG_CACHE_HOME=" + Quoted(cache) + " " + Quoted(BinaryPath("tools/moex")) +
                        " calibrate " + args + " 2>/dev/null; }",
                    out);
}

TEST(CalibrateCliTest, JsonFieldsAndTheCache) {
  const std::string cache = MakeTempDir();
  const std::string args = "--hidden 256 --ffn 512 --type q4_K --quick --json";
  std::string out;
  ASSERT_EQ(Calibrate(cache, args, &out), 0) << out;
  ASSERT_EQ(out.front(), '{') << out;
  ASSERT_EQ(out.substr(out.size() - 2), "}\n") << out;
  for (const char* key : {"cpu_mem_gbps", "cpu_expert_us_t1", "cpu_expert_us_t32", "cpu_gflops",
                          "mem_gbps", "gflops", "cores", "expert_bytes"}) {
    const double v = JsonNumber(out, key);
    EXPECT_TRUE(v > 0) << key << " in " << out;
  }
  EXPECT_GT(JsonNumber(out, "cpu_expert_us_t32"), JsonNumber(out, "cpu_expert_us_t1"));
  EXPECT_NE(out.find("\"host\":{\"name\":\"host\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"cached\":false"), std::string::npos) << out;
  // This build machine has no GPU: the field is null and the reason is given.
  if (out.find("\"gpu\":null") != std::string::npos) {
    EXPECT_EQ(out.find("\"no_gpu_reason\":\"\""), std::string::npos) << out;
  } else {
    EXPECT_GT(JsonNumber(out, "h2d_gbps"), 0) << out;
  }

  std::string again;
  ASSERT_EQ(Calibrate(cache, args, &again), 0);
  EXPECT_NE(again.find("\"cached\":true"), std::string::npos) << again;
  EXPECT_EQ(JsonNumber(again, "cpu_expert_us_t1"), JsonNumber(out, "cpu_expert_us_t1"));
  ASSERT_EQ(Calibrate(cache, args + " --fresh", &again), 0);
  EXPECT_NE(again.find("\"cached\":false"), std::string::npos) << again;
}

TEST(CalibrateCliTest, SavedProfileLoadsBack) {
  const std::string dir = MakeTempDir();
  const std::string file = dir + "/mine.ini";
  std::string out;
  ASSERT_EQ(Calibrate(dir, "--hidden 256 --ffn 256 --quick --no-gpu --save-profile " + Quoted(file),
                      &out),
            0)
      << out;
  ASSERT_EQ(Calibrate(dir, "--list-profiles --json --profiles " + Quoted(file), &out), 0) << out;
  EXPECT_NE(out.find("{\"name\":\"host\""), std::string::npos) << out;
  EXPECT_NE(out.find("{\"name\":\"desktop-ddr5\""), std::string::npos) << out;
}

TEST(CalibrateCliTest, ListProfiles) {
  std::string out;
  ASSERT_EQ(Calibrate(MakeTempDir(), "--list-profiles --json", &out), 0);
  for (const char* name : {"rtx3060-12g", "rtx4060-8g", "rtx4090-24g", "rtx5080-16g", "a100-80g",
                           "h100-80g", "desktop-ddr4", "desktop-ddr5", "workstation-8ch"}) {
    EXPECT_NE(out.find(std::string("\"") + name + "\""), std::string::npos) << name;
  }
  ASSERT_EQ(Calibrate(MakeTempDir(), "--list-profiles", &out), 0);
  EXPECT_NE(out.find("rtx4060-8g"), std::string::npos) << out;
}

TEST(CalibrateCliTest, BadFlags) {
  const std::string dir = MakeTempDir();
  std::string err;
  auto run_err = [&](const std::string& args) {
    return RunCommand("{ XDG_CACHE_HOME=" + Quoted(dir) + " " + Quoted(BinaryPath("tools/moex")) +
                          " calibrate " + args + " 2>&1 >/dev/null; }",
                      &err);
  };
  EXPECT_EQ(run_err("--hidden 100 --ffn 256"), 2);
  EXPECT_NE(err.find("moex calibrate: "), std::string::npos) << err;
  EXPECT_NE(err.find("multiples of 256"), std::string::npos) << err;
  EXPECT_EQ(run_err("--type q9_z"), 2);
  EXPECT_NE(err.find("q9_z"), std::string::npos) << err;
  EXPECT_EQ(run_err("--hidden x"), 2);
  EXPECT_EQ(run_err("--colour red"), 2);
  EXPECT_EQ(run_err("--list-profiles --profiles /nonexistent.ini"), 1);
  EXPECT_NE(err.find("/nonexistent.ini"), std::string::npos) << err;
}

}  // namespace
}  // namespace moex
