// A model file truncated while `moex` has it mapped: the next touch of a page past the new
// end raises SIGBUS; the tool says what happened in one line and exits 135 (128 + SIGBUS),
// instead of the shell's bare "Bus error".
#include <string>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace moex {
namespace {

using ::moex::testing::BinaryPath;
using ::moex::testing::MakeTempDir;
using ::moex::testing::RunCommand;
using ::moex::testing::TestDataDir;

TEST(MappedFileTest, TruncatedWhileInUseIsNamed) {
  const std::string src = TestDataDir() + "/models/vis-qwen3moe-q4_k_m.gguf";
  const std::string model = MakeTempDir() + "/m.gguf";
  std::string out;
  if (RunCommand("cp '" + src + "' '" + model + "' && chmod u+w '" + model + "'", &out) != 0) {
    GTEST_SKIP() << "no test model: " << out;
  }
  // chat opens the model and waits for a line; the file shrinks under it before the first
  // prompt, whose forward pass then reads weights that are gone.
  const int rc = RunCommand("{ (sleep 1; truncate -s 100000 '" + model +
                                "'; printf 'hello\\n/exit\\n') | "
                                // Under ASan its own SIGBUS report would replace ours.
                                "ASAN_OPTIONS=\"$ASAN_OPTIONS:handle_sigbus=0\" '" +
                                BinaryPath("tools/moex") + "' chat -m '" + model +
                                "' -n 4 --temp 0 >/dev/null; }",
                            &out);
  EXPECT_EQ(rc, 135) << out;
  EXPECT_NE(out.find("moex: a mapped model file was truncated or changed while in use"),
            std::string::npos)
      << out;
}

}  // namespace
}  // namespace moex
