// Helpers shared by the tests: where the test data is, and reading reference logits.
#ifndef MOEX_TESTS_TEST_UTIL_H_
#define MOEX_TESTS_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace moex::testing {

// ../shared/testdata as seen from the source tree ("" when it does not exist).
std::string TestDataDir();
// A fresh, empty directory for this test's files, under $TMPDIR (else /tmp), removed with
// everything in it when the test process exits. Aborts the process when none can be made
// (it never hands out a shared directory).
std::string MakeTempDir();
// Path of a binary built in this build tree (e.g. "tools/moex").
std::string BinaryPath(const std::string& relative);

struct Logits {
  int32_t n_tokens = 0;
  int32_t n_vocab = 0;
  std::vector<float> data;  // [n_tokens][n_vocab]
};
// Reads the int32 n_tokens, int32 n_vocab, float32[n_tokens][n_vocab] layout.
bool ReadLogitsFile(const std::string& path, Logits* out, std::string* error);

// n values drawn from N(0, 1).
std::vector<float> RandomNormal(std::mt19937_64& rng, size_t n);

// Runs a shell command; returns its exit code and fills stdout+stderr.
int RunCommand(const std::string& command, std::string* output);

// The number after the first "key": in a JSON text (the CLI's --json output); NaN when the
// key is absent or its value is not a number.
double JsonNumber(const std::string& json, const std::string& key);

}  // namespace moex::testing

#endif  // MOEX_TESTS_TEST_UTIL_H_
