// Trace files with recorded predictor guesses (format version 2): round trip, what the
// writer refuses, corrupt files, version-1 files still read, merging.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "moex/trace.h"
#include "tests/test_util.h"

namespace moex {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

std::string WriteBytes(const std::string& bytes) {
  const std::string path = testing::MakeTempDir() + "/x.trace";
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

void PutU32(std::string* out, uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);
  out->append(b, 4);
}

uint32_t U32At(const std::string& s, size_t off) {
  uint32_t v;
  std::memcpy(&v, s.data() + off, 4);
  return v;
}

// The guess of predictor p for token t (within its sequence s), layer l, distance d: three
// distinct ids that differ by every argument.
std::vector<int32_t> Guess(int E, int s, int t, int p, int d, int l) {
  const int base = (s * 7 + t * 5 + p * 3 + d * 11 + l) % E;
  return {base, (base + 1) % E, (base + 2) % E};
}

// 2 sequences (5 and 6 tokens), 4 layers, top-2, 2 predictors, distance 2, 3 guesses each.
std::string WriteWithPredictions(int E) {
  const std::string path = testing::MakeTempDir() + "/p.trace";
  TraceHeader h{"m", E, 2, 4, true, false};
  h.predictors = {"gate", "other"};
  h.predict_distance = 2;
  h.predict_size = 3;
  auto w = TraceWriter::Create(path, h);
  EXPECT_TRUE(w.ok()) << w.status();
  for (int s = 0; s < 2; ++s) {
    EXPECT_TRUE((*w)->BeginSequence("s" + std::to_string(s)).ok());
    for (int t = 4 + s; t >= 0; --t) {  // any order
      for (int l = 0; l < 4; ++l) {
        const int32_t ex[2] = {(t + l) % E, (t + l + 1) % E};
        const float wt[2] = {0.5f, 0.5f};
        EXPECT_TRUE((*w)->Add(t, l, ex, wt, nullptr).ok());
        for (int p = 0; p < 2; ++p) {
          for (int d = 1; d <= std::min(2, l); ++d) {
            EXPECT_TRUE((*w)->AddPrediction(t, l, p, d, Guess(E, s, t, p, d, l).data()).ok());
          }
        }
      }
    }
    EXPECT_TRUE((*w)->EndSequence().ok());
  }
  EXPECT_TRUE((*w)->Close().ok());
  return path;
}

TEST(TracePredictionsTest, RoundTrip) {
  for (int E : {8, 300}) {  // one-byte and two-byte ids
    const std::string path = WriteWithPredictions(E);
    const std::string bytes = Slurp(path);
    EXPECT_EQ(U32At(bytes, 8), 2u);        // version 2: it has predictions
    EXPECT_EQ(U32At(bytes, 12), 1u | 4u);  // weights, predictions
    auto t = ReadTrace(path);
    ASSERT_TRUE(t.ok()) << t.status();
    const TraceHeader& h = t->header;
    EXPECT_EQ(h.predictors, (std::vector<std::string>{"gate", "other"}));
    EXPECT_EQ(h.predict_distance, 2);
    EXPECT_EQ(h.guess_size(), 3);
    ASSERT_EQ(t->tokens(), 11);
    ASSERT_EQ(t->predictions.size(), t->PredictionIndex(11, 0, 1, 0));
    for (int s = 0; s < 2; ++s) {
      for (int64_t tt = 0; tt < 5 + s; ++tt) {
        const int64_t g = t->seq_start[s] + tt;
        for (int p = 0; p < 2; ++p) {
          for (int d = 1; d <= 2; ++d) {
            for (int l = 0; l < 4; ++l) {
              const uint16_t* got = &t->predictions[t->PredictionIndex(g, p, d, l)];
              if (l < d) {
                EXPECT_EQ(got[0], kNoGuess);
                continue;
              }
              const std::vector<int32_t> want = Guess(E, s, tt, p, d, l);
              for (int j = 0; j < 3; ++j) EXPECT_EQ(got[j], want[j]) << s << tt << p << d << l;
            }
          }
        }
      }
    }
    // The routing beside them is intact.
    EXPECT_EQ(t->experts[(7 * 4 + 3) * 2], (2 + 3) % E);
    // Truncation anywhere is an error, never a crash.
    for (size_t cut = 0; cut < bytes.size(); cut += 5) {
      EXPECT_FALSE(ReadTrace(WriteBytes(bytes.substr(0, cut))).ok()) << cut;
    }
  }
}

TEST(TracePredictionsTest, WriterRefusesMissingAndBadGuesses) {
  const std::string path = testing::MakeTempDir() + "/p.trace";
  TraceHeader h{"m", 8, 2, 3, false, false};
  h.predictors = {"gate"};
  h.predict_distance = 1;
  auto w = TraceWriter::Create(path, h);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->BeginSequence("a").ok());
  const int32_t ex[2] = {1, 2}, twice[2] = {3, 3}, big[2] = {0, 8};
  for (int l = 0; l < 3; ++l) ASSERT_TRUE((*w)->Add(0, l, ex, nullptr, nullptr).ok());
  EXPECT_FALSE((*w)->AddPrediction(0, 0, 0, 1, ex).ok());  // layer 0 has nothing before it
  EXPECT_FALSE((*w)->AddPrediction(0, 2, 0, 2, ex).ok());  // beyond the distance
  EXPECT_FALSE((*w)->AddPrediction(0, 2, 1, 1, ex).ok());  // no predictor 1
  EXPECT_FALSE((*w)->AddPrediction(0, 1, 0, 1, twice).ok());
  EXPECT_FALSE((*w)->AddPrediction(0, 1, 0, 1, big).ok());
  ASSERT_TRUE((*w)->AddPrediction(0, 1, 0, 1, ex).ok());
  const absl::Status st = (*w)->EndSequence();  // layer 2's guess is missing
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("layer 2"), absl::string_view::npos) << st;

  TraceHeader bad = h;
  bad.predict_distance = 3;  // only 3 layers: distances 1..2
  EXPECT_FALSE(TraceWriter::Create(path, bad).ok());
  bad = h;
  bad.predict_size = 9;
  EXPECT_FALSE(TraceWriter::Create(path, bad).ok());
  bad = h;
  bad.predictors = {""};
  EXPECT_FALSE(TraceWriter::Create(path, bad).ok());
}

// A version-1 file written byte by byte as the format was before predictions: it must
// keep reading, and a file without predictions is still written as version 1.
TEST(TracePredictionsTest, VersionOneFilesStillRead) {
  std::string v1("MOEXTRC\0", 8);
  PutU32(&v1, 1);  // version
  PutU32(&v1, 0);  // flags
  PutU32(&v1, 4);  // experts
  PutU32(&v1, 1);  // top-k
  PutU32(&v1, 2);  // layers
  PutU32(&v1, 1);
  v1 += "m";
  PutU32(&v1, 1);
  v1 += "s";
  PutU32(&v1, 2);                            // tokens
  v1 += std::string("\x03\x01\x02\x00", 4);  // [token][layer]
  auto t = ReadTrace(WriteBytes(v1));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->header.predictors.empty());
  EXPECT_TRUE(t->predictions.empty());
  EXPECT_EQ(t->experts, (std::vector<uint16_t>{3, 1, 2, 0}));

  const std::string path = testing::MakeTempDir() + "/v1.trace";
  auto w = TraceWriter::Create(path, {"m", 4, 1, 2, false, false});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->BeginSequence("s").ok());
  const int32_t ids[4] = {3, 1, 2, 0};
  for (int c = 0; c < 4; ++c) ASSERT_TRUE((*w)->Add(c / 2, c % 2, &ids[c], nullptr, nullptr).ok());
  ASSERT_TRUE((*w)->EndSequence().ok());
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_EQ(Slurp(path), v1);  // byte for byte the version-1 layout

  // The predictions flag is not part of version 1; an unknown version is kUnimplemented.
  std::string flagged = v1;
  flagged[12] = 4;
  EXPECT_EQ(ReadTrace(WriteBytes(flagged)).status().code(), absl::StatusCode::kDataLoss);
  std::string v3 = v1;
  v3[8] = 3;
  EXPECT_EQ(ReadTrace(WriteBytes(v3)).status().code(), absl::StatusCode::kUnimplemented);
}

TEST(TracePredictionsTest, CorruptGuessesAreErrors) {
  const std::string bytes = Slurp(WriteWithPredictions(8));
  // The last byte is a guessed id (token 5 of s1, predictor 1, distance 2, layer 3, j 2).
  std::string big = bytes;
  big.back() = 8;
  auto t = ReadTrace(WriteBytes(big));
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(t.status().message().find("guessed expert id 8"), absl::string_view::npos)
      << t.status();
  std::string twice = bytes;
  twice.back() = twice[twice.size() - 2];
  EXPECT_NE(ReadTrace(WriteBytes(twice)).status().message().find("twice"), absl::string_view::npos);
  // The header's prediction fields: 3 predictors promised (their names are not there).
  const size_t counts = 8 + 4 * 6 + 1;  // after magic, six fields, the model name "m"
  std::string more = bytes;
  more[counts] = 3;
  EXPECT_FALSE(ReadTrace(WriteBytes(more)).ok());
  std::string far = bytes;  // distance 4 in a 4-layer trace
  far[counts + 4] = 4;
  EXPECT_FALSE(ReadTrace(WriteBytes(far)).ok());
  std::string huge = bytes;  // guess size beyond the expert count
  huge[counts + 8] = 9;
  EXPECT_FALSE(ReadTrace(WriteBytes(huge)).ok());
}

TEST(TracePredictionsTest, MergeKeepsPredictionsOnlyWhenAllAgree) {
  const std::string path = WriteWithPredictions(8);
  std::vector<Trace> same;
  same.push_back(*ReadTrace(path));
  same.push_back(*ReadTrace(path));
  const size_t one = same[0].predictions.size();
  auto m = MergeTraces(std::move(same));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->predictions.size(), 2 * one);
  EXPECT_EQ(m->predictions.size(), m->PredictionIndex(m->tokens(), 0, 1, 0));
  // Token 0 of the second copy has the first copy's guesses.
  EXPECT_EQ(m->predictions[m->PredictionIndex(11, 1, 2, 3)],
            m->predictions[m->PredictionIndex(0, 1, 2, 3)]);

  std::vector<Trace> mixed;
  mixed.push_back(*ReadTrace(path));
  Trace plain = *ReadTrace(path);
  plain.header.predictors.clear();
  plain.header.predict_distance = plain.header.predict_size = 0;
  plain.predictions.clear();
  mixed.push_back(std::move(plain));
  m = MergeTraces(std::move(mixed));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(m->header.predictors.empty());
  EXPECT_TRUE(m->predictions.empty());
  EXPECT_EQ(m->tokens(), 22);
}

}  // namespace
}  // namespace moex
