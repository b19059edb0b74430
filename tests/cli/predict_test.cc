// `moex predict` on the trained tiny MoE reproduces the recall its PyTorch original
// measured (tiny-moe/val-mix.trace.csv.ref.json) for the cross-layer gate and its
// residual variant at distances 1-3.
#include <fstream>
#include <regex>
#include <string>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace moex {
namespace {

TEST(PredictCliTest, TinyMoeRecallEqualsTheReference) {
  const std::string data = testing::TestDataDir();
  if (data.empty()) GTEST_SKIP() << "../shared/testdata is absent";
  const std::string tm = data + "/tiny-moe/";
  const std::string dir = testing::MakeTempDir();
  // The reference windows: the first 20000 bytes of each validation text, in this order.
  std::string out;
  ASSERT_EQ(testing::RunCommand("(head -c 20000 " + tm + "val-python.txt; head -c 20000 " + tm +
                                    "val-fortunes.txt; head -c 20000 " + tm + "val-kjv.txt) > " +
                                    dir + "/valmix.txt",
                                &out),
            0);
  ASSERT_EQ(testing::RunCommand(testing::BinaryPath("tools/moex") + " predict -m " + tm +
                                    "tiny-moe-f32.gguf --file " + dir +
                                    "/valmix.txt -c 256 --distance 3 --json 2>/dev/null",
                                &out),
            0)
      << out;
  const struct {
    const char* name;
    int distance;
    double recall;
  } kRef[] = {{"cross-layer-gate", 1, 0.7451066300675676},
              {"cross-layer-gate", 2, 0.6639536264780406},
              {"cross-layer-gate", 3, 0.6046373521959459},
              {"cross-layer-gate-resid", 1, 0.7444520692567568},
              {"cross-layer-gate-resid", 2, 0.662571262668919},
              {"cross-layer-gate-resid", 3, 0.6030185458896397}};
  for (const auto& r : kRef) {
    // The predictor's object, then its distance's entry (the first one after it).
    const size_t at = out.find("\"" + std::string(r.name) + "\":{");
    ASSERT_NE(at, std::string::npos) << r.name << " in " << out;
    const std::string rest = out.substr(at);
    std::smatch m;
    const std::regex re("\"" + std::to_string(r.distance) + "\":\\{\"recall\":([0-9.e-]+)");
    ASSERT_TRUE(std::regex_search(rest, m, re)) << r.name << " " << r.distance << " in " << out;
    // Near-ties in the router may flip an expert or two out of 100k decisions.
    EXPECT_NEAR(std::stod(m[1]), r.recall, 1e-3) << r.name << " d=" << r.distance;
  }
}

}  // namespace
}  // namespace moex
