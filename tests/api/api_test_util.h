// Helpers of the public-API tests: synthetic models written and opened in one step, and
// the relative error that compares two runs' logits.
#ifndef MOEX_TESTS_API_API_TEST_UTIL_H_
#define MOEX_TESTS_API_API_TEST_UTIL_H_

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "moex/info.h"
#include "moex/moex.h"

namespace moex::testing {

// Writes the model of `s` into `dir` (named after its architecture and type) and opens
// it; null, with a test failure, when either step fails.
inline std::unique_ptr<Model> MakeModel(const SyntheticModelSpec& s, const std::string& dir) {
  const std::string path = dir + "/" + s.arch + "-" + s.type + ".gguf";
  absl::Status st = WriteSyntheticModel(s, path);
  EXPECT_TRUE(st.ok()) << st;
  auto m = Model::Open(path, {});
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

// ||a - b|| / ||b|| over the common length (callers check the lengths themselves).
inline double RelError(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    d += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    n += double{b[i]} * b[i];
  }
  return std::sqrt(d / n);
}

}  // namespace moex::testing

#endif  // MOEX_TESTS_API_API_TEST_UTIL_H_
