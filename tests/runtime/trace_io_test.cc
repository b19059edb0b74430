// Trace files: write/read round trip, corrupt files, and CSV import rules and errors.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "moex/trace.h"
#include "tests/test_util.h"

namespace moex {
namespace {

std::string WriteText(const std::string& name, const std::string& text) {
  const std::string path = testing::MakeTempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(TraceIoTest, RoundTripWithWeightsAndProbs) {
  for (int E : {8, 300}) {  // one-byte and two-byte expert ids
    const std::string path = testing::MakeTempDir() + "/t.trace";
    TraceHeader h{"model \"x\"", E, 2, 3, true, true};
    auto w = TraceWriter::Create(path, h);
    ASSERT_TRUE(w.ok()) << w.status();
    std::vector<float> probs(E);
    for (int s = 0; s < 2; ++s) {
      ASSERT_TRUE((*w)->BeginSequence("seq" + std::to_string(s)).ok());
      for (int t = 4 + s; t >= 0; --t) {  // any order of calls
        for (int l = 2; l >= 0; --l) {
          const int32_t ex[2] = {(t + l) % E, (t + l + 1 + s) % E};
          const float wt[2] = {0.75f, 0.25f};
          for (int e = 0; e < E; ++e) probs[e] = e + 0.5f * t + l;
          ASSERT_TRUE((*w)->Add(t, l, ex, wt, probs.data()).ok());
        }
      }
      ASSERT_TRUE((*w)->EndSequence().ok());
    }
    ASSERT_TRUE((*w)->Close().ok());

    auto t = ReadTrace(path, {.load_probs = true});
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->header.model, "model \"x\"");
    EXPECT_EQ(t->header.num_experts, E);
    EXPECT_EQ(t->seq_names, (std::vector<std::string>{"seq0", "seq1"}));
    EXPECT_EQ(t->seq_start, (std::vector<int64_t>{0, 5, 11}));
    // Token 2 of seq1 (global 7), layer 1: experts (3, 5 mod E), probs e + 1 + 1.
    EXPECT_EQ(t->experts[(7 * 3 + 1) * 2], 3);
    EXPECT_EQ(t->experts[(7 * 3 + 1) * 2 + 1], 5 % E);
    EXPECT_EQ(t->weights[(7 * 3 + 1) * 2], 0.75f);
    EXPECT_EQ(t->probs[(7 * 3 + 1) * E + 4], 4 + 1.0f + 1);
    auto no_probs = ReadTrace(path);
    ASSERT_TRUE(no_probs.ok());
    EXPECT_TRUE(no_probs->probs.empty());
    EXPECT_EQ(no_probs->experts, t->experts);

    // Truncation anywhere is an error, never a crash.
    std::ifstream in(path, std::ios::binary);
    const std::string data((std::istreambuf_iterator<char>(in)), {});
    for (size_t cut = 0; cut < data.size(); cut += 7) {
      const std::string p = WriteText("cut.trace", data.substr(0, cut));
      EXPECT_FALSE(ReadTrace(p).ok()) << cut;
    }
  }
}

TEST(TraceIoTest, WriterRefusesHolesAndBadIds) {
  const std::string path = testing::MakeTempDir() + "/t.trace";
  auto w = TraceWriter::Create(path, {"m", 4, 1, 2, false, false});
  ASSERT_TRUE(w.ok());
  const int32_t e[1] = {1}, bad[1] = {4};
  ASSERT_TRUE((*w)->BeginSequence("a").ok());
  EXPECT_FALSE((*w)->Add(0, 0, bad, nullptr, nullptr).ok());
  ASSERT_TRUE((*w)->Add(0, 0, e, nullptr, nullptr).ok());
  const absl::Status st = (*w)->EndSequence();  // layer 1 of token 0 missing
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("layer 1"), absl::string_view::npos) << st;
}

TEST(TraceIoTest, CsvAnyOrderSequencesAndWeights) {
  const std::string p = WriteText("t.csv",
                                  "seq,token,layer,experts,weights\n"
                                  "b,1,0,3;1,0.6;0.4\n"
                                  "a,0,1,0;1,0.5;0.5\n"
                                  "a,0,0,2;3,0.9;0.1\n"
                                  "b,0,0,0;1,0.5;0.5\n"
                                  "a,1,0,1;2,0.7;0.3\n"
                                  "a,1,1,2;0,0.8;0.2\n");
  int64_t dropped = -1;
  auto t = ImportCsv(p, 0, &dropped);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(dropped, 2);                // sequence b (below)
  EXPECT_EQ(t->header.num_experts, 4);  // largest id + 1
  EXPECT_EQ(t->header.num_layers, 2);
  EXPECT_EQ(t->header.top_k, 2);
  // Sequence b has no layer 1 rows: all its tokens are an incomplete tail, dropped (and
  // counted) like tokens cut off at the end of a recording.
  EXPECT_EQ(t->seq_names, (std::vector<std::string>{"a"}));
  EXPECT_EQ(t->experts, (std::vector<uint16_t>{2, 3, 0, 1, 1, 2, 2, 0}));
  EXPECT_EQ(t->weights[0], 0.9f);
}

TEST(TraceIoTest, CsvErrorsNameTheLine) {
  struct Case {
    const char* text;
    const char* want;
  };
  const Case cases[] = {
      {"token,layer,expert\n0,0,1\n", ":1: unknown column 'expert'"},
      {"token,layer\n0,0\n", ":1: header needs token, layer and experts"},
      {"token,layer,experts\n0,0,1;2\n0,1,1\n", ":3: 1 experts where earlier rows have 2"},
      {"token,layer,experts\n0,0,1;2\n\n0,x,1;2\n", ":4: bad layer 'x'"},
      {"token,layer,experts\n0,0,1;1\n", ":2: expert 1 twice in one row"},
      {"token,layer,experts\n0,0,1;2\n0,0,3;2\n", ":3: token 0 layer 0 repeats line 2"},
      {"token,layer,experts\n0,0,1;2,9\n", ":2: 4 fields, the header has 3"},
      {"token,layer,experts,weights\n0,0,1;2,0.5\n", ":2: 1 weights for 2 experts"},
      {"token,layer,experts\n0,0,-1;2\n", ":2: bad expert id '-1'"},
      {"token,layer,experts\n0,0,1;2\n0,1,1;2\n2,0,1;2\n2,1,1;2\n",
       "token 1 has no row for layer 0"},
  };
  for (const Case& c : cases) {
    const std::string p = WriteText("bad.csv", c.text);
    auto t = ImportCsv(p, 0);
    ASSERT_FALSE(t.ok()) << c.text;
    EXPECT_NE(t.status().message().find(c.want), absl::string_view::npos)
        << t.status() << " / want " << c.want;
  }
  // Ids beyond --experts.
  const std::string p = WriteText("e.csv", "token,layer,experts\n0,0,1;7\n");
  auto t = ImportCsv(p, 4);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find(":2: expert id 7 >= the expert count 4"),
            absl::string_view::npos)
      << t.status();
}

TEST(TraceIoTest, MergeKeepsSequencesApart) {
  const std::string p = WriteText("a.csv", "token,layer,experts\n0,0,1\n1,0,2\n");
  auto a = ImportCsv(p, 0);
  auto b = ImportCsv(p, 5);
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<Trace> v;
  v.push_back(*a);
  v.push_back(*b);
  auto m = MergeTraces(std::move(v));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->seq_start, (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(m->header.num_experts, 5);
}

}  // namespace
}  // namespace moex
