// Inputs fuzz_trace found (fuzz/corpus/fuzz_trace/regression_*), pinned as behaviour: a
// repeated expert in one token's top-k is a clear error, in the writer and in the reader
// (a file with one used to overflow the SRP histogram in the analysis), and a sequence
// with no tokens reads without undefined behaviour (memcpy of nothing from nowhere).
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "moex/trace.h"
#include "tests/test_util.h"

namespace moex {
namespace {

TraceHeader Shape() {
  TraceHeader h;
  h.model = "m";
  h.num_experts = 4;
  h.top_k = 2;
  h.num_layers = 1;
  return h;
}

// Writes sequences of one-layer tokens with the given top-2 ids.
std::string WriteTrace(const std::vector<std::vector<std::array<int32_t, 2>>>& seqs) {
  const std::string path = testing::MakeTempDir() + "/t.trace";
  auto w = TraceWriter::Create(path, Shape());
  EXPECT_TRUE(w.ok()) << w.status();
  for (const auto& seq : seqs) {
    EXPECT_TRUE((*w)->BeginSequence("s").ok());
    for (size_t t = 0; t < seq.size(); ++t) {
      EXPECT_TRUE((*w)->Add(static_cast<int64_t>(t), 0, seq[t].data(), nullptr, nullptr).ok());
    }
    EXPECT_TRUE((*w)->EndSequence().ok());
  }
  EXPECT_TRUE((*w)->Close().ok());
  return path;
}

TEST(TraceFuzzRegressionTest, WriterRejectsARepeatedExpert) {
  auto w = TraceWriter::Create(testing::MakeTempDir() + "/t.trace", Shape());
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->BeginSequence("s").ok());
  const int32_t twice[2] = {3, 3};
  absl::Status st = (*w)->Add(0, 0, twice, nullptr, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("twice"), std::string::npos) << st;
}

TEST(TraceFuzzRegressionTest, ReaderRejectsARepeatedExpert) {
  const std::string path = WriteTrace({{{1, 2}, {0, 3}}});
  ASSERT_TRUE(ReadTrace(path).ok());
  // The ids are the file's last bytes (one byte each for 4 experts, no weights): make the
  // last token's second id equal its first.
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string bytes = ss.str();
  ASSERT_EQ(bytes[bytes.size() - 2], '\x00');
  ASSERT_EQ(bytes[bytes.size() - 1], '\x03');
  bytes[bytes.size() - 1] = '\x00';
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  auto bad = ReadTrace(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("twice"), std::string::npos) << bad.status();
}

TEST(TraceFuzzRegressionTest, EmptySequenceReadsAndAnalyses) {
  const std::string path = WriteTrace({{}, {{1, 2}, {2, 3}, {1, 3}}});
  auto t = ReadTrace(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->sequences(), 2);
  EXPECT_EQ(t->tokens(), 3);
  LrcOptions o;
  o.segment_lengths = {1, 2};
  o.threads = 1;
  auto r = AnalyzeTrace(*t, o);
  EXPECT_TRUE(r.ok()) << r.status();
}

TEST(TraceFuzzRegressionTest, HugeTokenIndexIsAnErrorNotAHugeAllocation) {
  const std::string path = testing::MakeTempDir() + "/t.csv";
  std::ofstream(path) << "token,layer,experts\n0,0,1;2\n578398826,0,2;3\n";
  auto t = ImportCsv(path, 0);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find(":3: token 578398826"), std::string::npos) << t.status();
  EXPECT_NE(t.status().message().find("missing"), std::string::npos) << t.status();
  std::ofstream(path, std::ios::trunc) << "token,layer,experts\n0,0,1;2\n0,900000000,2;3\n";
  auto l = ImportCsv(path, 0);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find(":3:"), std::string::npos) << l.status();  // names the line
}

}  // namespace
}  // namespace moex
