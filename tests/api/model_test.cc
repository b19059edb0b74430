// The public API end to end on synthetic models of every architecture and weight type:
// they load, compute finite logits, decode incrementally exactly as they prefill, and
// quantised models stay close to the F32 model they were quantised from.
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "moex/info.h"
#include "moex/moex.h"
#include "tests/api/api_test_util.h"
#include "tests/test_util.h"

namespace moex {
namespace {

using testing::MakeModel;
using testing::RelError;

SyntheticModelSpec SmallSpec(const std::string& arch, const std::string& type) {
  SyntheticModelSpec s;
  s.arch = arch;
  s.type = type;
  s.hidden = 256;  // one k-quant super-block per row
  s.layers = 2;
  s.heads = 4;
  s.kv_heads = 2;
  s.experts = arch == "llama" ? 4 : 6;
  s.top_k = 2;
  s.ffn = 256;
  s.vocab_size = 600;
  s.seed = 42;
  return s;
}

std::vector<float> Logits(Model& m, const std::vector<int32_t>& ids) {
  auto s = m.NewSession({});
  EXPECT_TRUE(s.ok());
  auto l = (*s)->Evaluate(ids);
  EXPECT_TRUE(l.ok()) << l.status();
  return l.ok() ? *l : std::vector<float>{};
}

const std::vector<int32_t> kPrompt = {1, 17, 300, 42, 599, 5, 77};

struct TypeCase {
  const char* type;
  double max_rel_error_vs_f32;  // quantisation error budget of the whole forward pass
};

class ArchTypeTest : public ::testing::TestWithParam<std::tuple<const char*, TypeCase>> {};

TEST_P(ArchTypeTest, QuantisedModelTracksItsF32Original) {
  const auto [arch, tc] = GetParam();
  const std::string dir = testing::MakeTempDir();
  auto f32 = MakeModel(SmallSpec(arch, "f32"), dir);
  auto q = MakeModel(SmallSpec(arch, tc.type), dir);
  ASSERT_TRUE(f32 && q);
  EXPECT_EQ(q->info().architecture, arch);
  const std::vector<float> a = Logits(*q, kPrompt), b = Logits(*f32, kPrompt);
  ASSERT_EQ(a.size(), kPrompt.size() * 600);
  for (float v : a) ASSERT_TRUE(std::isfinite(v));
  const double rel = RelError(a, b);
  RecordProperty("rel_error_vs_f32", std::to_string(rel));
  EXPECT_LE(rel, tc.max_rel_error_vs_f32);
  // Not trivially equal either: the type must really have changed the weights.
  EXPECT_GT(rel, 0.0);
}

INSTANTIATE_TEST_SUITE_P(
    All, ArchTypeTest,
    ::testing::Combine(::testing::Values("llama", "qwen2moe", "qwen3moe", "olmoe"),
                       // Per-weight errors add up over ~10 matrices and a flipped
                       // expert choice moves a token's logits a lot, so the budget is a
                       // few times the per-weight error (quant_test.cc); a broken
                       // quantiser gives uncorrelated logits, a relative error near 1.4.
                       ::testing::Values(TypeCase{"f16", 0.002}, TypeCase{"bf16", 0.02},
                                         TypeCase{"q8_0", 0.03}, TypeCase{"q5_0", 0.3},
                                         TypeCase{"q5_1", 0.3}, TypeCase{"q4_0", 0.45},
                                         TypeCase{"q4_1", 0.45}, TypeCase{"q6_K", 0.2},
                                         TypeCase{"q5_K", 0.3}, TypeCase{"q4_K", 0.45},
                                         TypeCase{"q4_k_m", 0.4}, TypeCase{"q5_k_m", 0.3})),
    [](const auto& info) {
      return std::string(std::get<0>(info.param)) + "_" + std::get<1>(info.param).type;
    });

class ArchTest : public ::testing::TestWithParam<const char*> {};

TEST_P(ArchTest, DecodingOneTokenAtATimeEqualsPrefill) {
  auto m = MakeModel(SmallSpec(GetParam(), "q8_0"), testing::MakeTempDir());
  ASSERT_TRUE(m);
  const std::vector<float> all = Logits(*m, kPrompt);
  auto s = m->NewSession({});
  ASSERT_TRUE(s.ok());
  const int64_t V = m->info().n_vocab;
  for (size_t t = 0; t < kPrompt.size(); ++t) {
    auto l = (*s)->Evaluate({&kPrompt[t], 1});
    ASSERT_TRUE(l.ok()) << l.status();
    ASSERT_EQ(static_cast<int64_t>(l->size()), V);
    const std::vector<float> ref(all.begin() + t * V, all.begin() + (t + 1) * V);
    EXPECT_LT(RelError(*l, ref), 1e-5) << "position " << t;
  }
  EXPECT_EQ((*s)->position(), static_cast<int64_t>(kPrompt.size()));
}

TEST_P(ArchTest, GreedyGenerationFollowsArgmaxAndSeedsRepeat) {
  auto m = MakeModel(SmallSpec(GetParam(), "q4_k_m"), testing::MakeTempDir());
  ASSERT_TRUE(m);
  GenerateOptions g;
  g.max_tokens = 6;
  g.stop_at_eos = false;
  g.sampling.temperature = 0;
  auto s = m->NewSession({});
  ASSERT_TRUE(s.ok());
  auto greedy = (*s)->Generate(kPrompt, g, {});
  ASSERT_TRUE(greedy.ok()) << greedy.status();
  ASSERT_EQ(greedy->size(), 6u);
  // Each greedy token is the argmax of the logits of the sequence before it.
  std::vector<int32_t> seq = kPrompt;
  for (int32_t tok : *greedy) {
    const std::vector<float> l = Logits(*m, seq);
    const int64_t V = m->info().n_vocab;
    const auto last = l.end() - V;
    EXPECT_EQ(tok, std::max_element(last, l.end()) - last);
    seq.push_back(tok);
  }
  g.sampling.temperature = 1.0f;
  g.sampling.seed = 7;
  auto s1 = m->NewSession({});
  auto s2 = m->NewSession({});
  auto a = (*s1)->Generate(kPrompt, g, {});
  auto b = (*s2)->Generate(kPrompt, g, {});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
}

INSTANTIATE_TEST_SUITE_P(All, ArchTest,
                         ::testing::Values("llama", "qwen2moe", "qwen3moe", "olmoe"));

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = MakeModel(SmallSpec("qwen3moe", "q8_0"), testing::MakeTempDir());
    ASSERT_TRUE(model_);
  }
  std::unique_ptr<Model> model_;
};

TEST_F(SessionTest, CallbackReturningFalseCancels) {
  auto s = model_->NewSession({});
  ASSERT_TRUE(s.ok());
  GenerateOptions g;
  g.max_tokens = 50;
  g.stop_at_eos = false;
  int calls = 0;
  auto out = (*s)->Generate(kPrompt, g, [&](int32_t) { return ++calls < 3; });
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(out->size(), 3u);
}

TEST_F(SessionTest, ContextOverflowIsAnErrorBeforeAnyWork) {
  SessionOptions so;
  so.context = 10;
  auto s = model_->NewSession(so);
  ASSERT_TRUE(s.ok());
  GenerateOptions g;
  g.max_tokens = 5;
  auto out = (*s)->Generate(kPrompt, g, {});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(out.status().message().find("context"), std::string::npos) << out.status();
  EXPECT_EQ((*s)->position(), 0);
}

TEST_F(SessionTest, TokenOutsideVocabularyIsRejected) {
  auto s = model_->NewSession({});
  ASSERT_TRUE(s.ok());
  const std::vector<int32_t> bad = {1, 600};
  auto out = (*s)->Evaluate(bad);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("600"), std::string::npos);
  EXPECT_EQ((*s)->position(), 0);
}

TEST_F(SessionTest, ResetForgetsTheConversation) {
  auto s = model_->NewSession({});
  ASSERT_TRUE(s.ok());
  auto first = (*s)->Evaluate(kPrompt);
  ASSERT_TRUE(first.ok());
  (*s)->Reset();
  EXPECT_EQ((*s)->position(), 0);
  auto again = (*s)->Evaluate(kPrompt);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*first, *again);
}

TEST_F(SessionTest, ConversationContinuesAfterGenerate) {
  // Generate, then evaluate more: the last sampled token must enter the cache first,
  // so the logits equal a fresh evaluation of the whole sequence.
  auto s = model_->NewSession({});
  GenerateOptions g;
  g.max_tokens = 3;
  g.stop_at_eos = false;
  g.sampling.temperature = 0;
  auto out = (*s)->Generate(kPrompt, g, {});
  ASSERT_TRUE(out.ok());
  const std::vector<int32_t> more = {5, 6};
  auto l = (*s)->Evaluate(more);
  ASSERT_TRUE(l.ok());
  std::vector<int32_t> seq = kPrompt;
  seq.insert(seq.end(), out->begin(), out->end());
  seq.insert(seq.end(), more.begin(), more.end());
  const std::vector<float> ref = Logits(*model_, seq);
  const int64_t V = model_->info().n_vocab;
  ASSERT_EQ(static_cast<int64_t>(l->size()), 2 * V);
  EXPECT_LT(RelError(*l, std::vector<float>(ref.end() - 2 * V, ref.end())), 1e-5);
  EXPECT_EQ((*s)->position(), static_cast<int64_t>(seq.size()));
}

TEST_F(SessionTest, TruncateToReusesTheSharedPrefix) {
  auto s = model_->NewSession({});
  GenerateOptions g;
  g.max_tokens = 4;
  g.stop_at_eos = false;
  auto out = (*s)->Generate(kPrompt, g, {});
  ASSERT_TRUE(out.ok());
  ASSERT_EQ((*s)->tokens().size(), kPrompt.size() + 4);
  // Keep the prompt's first 5 tokens, then continue differently: the logits must equal a
  // fresh evaluation of that sequence, so no stale cache entry is read.
  (*s)->TruncateTo(5);
  EXPECT_EQ((*s)->position(), 5);
  EXPECT_EQ((*s)->tokens(), std::vector<int32_t>(kPrompt.begin(), kPrompt.begin() + 5));
  const std::vector<int32_t> tail = {9, 10, 11};
  auto l = (*s)->Evaluate(tail);
  ASSERT_TRUE(l.ok());
  std::vector<int32_t> seq(kPrompt.begin(), kPrompt.begin() + 5);
  seq.insert(seq.end(), tail.begin(), tail.end());
  const std::vector<float> ref = Logits(*model_, seq);
  EXPECT_LT(RelError(*l, std::vector<float>(ref.end() - l->size(), ref.end())), 1e-5);
  // Truncating to the full length (including the pending sampled token) changes nothing.
  (*s)->TruncateTo(1000);
  EXPECT_EQ((*s)->tokens().size(), seq.size());
}

TEST_F(SessionTest, RoutingCallbackSeesEveryLayerAndToken) {
  auto s = model_->NewSession({});
  ASSERT_TRUE(s.ok());
  std::vector<int> tokens_per_layer(2, 0);
  (*s)->SetRoutingCallback([&](const RoutingEvent& e) {
    ASSERT_GE(e.layer, 0);
    ASSERT_LT(e.layer, 2);
    EXPECT_EQ(e.k, 2);
    EXPECT_EQ(e.n_expert, 6);
    for (int t = 0; t < e.n_tokens; ++t) {
      float sum = 0;
      for (int e2 = 0; e2 < e.n_expert; ++e2) sum += e.probs[t * e.n_expert + e2];
      EXPECT_NEAR(sum, 1.0f, 1e-5);
      EXPECT_NE(e.experts[t * 2], e.experts[t * 2 + 1]);
      EXPECT_GE(e.weights[t * 2], e.weights[t * 2 + 1]);  // descending
      // qwen3moe renormalises the top-k weights.
      EXPECT_NEAR(e.weights[t * 2] + e.weights[t * 2 + 1], 1.0f, 1e-5);
    }
    tokens_per_layer[e.layer] += e.n_tokens;
  });
  ASSERT_TRUE((*s)->Evaluate(kPrompt).ok());
  const int32_t one[1] = {3};
  ASSERT_TRUE((*s)->Evaluate(one).ok());
  EXPECT_EQ(tokens_per_layer, (std::vector<int>{8, 8}));
  (*s)->SetRoutingCallback(nullptr);
  ASSERT_TRUE((*s)->Evaluate(one).ok());
  EXPECT_EQ(tokens_per_layer, (std::vector<int>{8, 8}));
}

// The header's contract: one Model shared by many Sessions, each Session on its own
// thread. Concurrent sessions must compute exactly what one session computes alone.
TEST_F(SessionTest, ConcurrentSessionsOnOneModelMatchASequentialRun) {
  const std::vector<float> expected = Logits(*model_, kPrompt);
  GenerateOptions g;
  g.max_tokens = 5;
  g.stop_at_eos = false;
  g.sampling.seed = 9;
  auto solo = model_->NewSession({});
  auto solo_out = (*solo)->Generate(kPrompt, g, {});
  ASSERT_TRUE(solo_out.ok());

  constexpr int kThreads = 4;
  std::vector<std::vector<float>> logits(kThreads);
  std::vector<std::vector<int32_t>> generated(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      auto s = model_->NewSession({});
      if (!s.ok()) return;
      for (int round = 0; round < 3; ++round) {
        auto l = (*s)->Evaluate(kPrompt);
        if (l.ok()) logits[i] = *l;
        (*s)->Reset();
      }
      auto out = (*s)->Generate(kPrompt, g, {});
      if (out.ok()) generated[i] = *out;
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(logits[i], expected) << "thread " << i;
    EXPECT_EQ(generated[i], *solo_out) << "thread " << i;
  }
}

TEST(ModelTest, InfoDescribesTheFile) {
  auto spec = SmallSpec("qwen2moe", "q8_0");
  auto m = MakeModel(spec, testing::MakeTempDir());
  ASSERT_TRUE(m);
  const ModelInfo& i = m->info();
  EXPECT_EQ(i.n_layer, 2);
  EXPECT_EQ(i.n_expert, 6);
  EXPECT_EQ(i.n_expert_used, 2);
  EXPECT_EQ(i.n_ff_shexp, 2 * spec.hidden);
  EXPECT_EQ(i.n_vocab, 600);
  // Q8_0: 34 bytes per 32 values; three 256x256 matrices per expert.
  EXPECT_EQ(i.expert_bytes, 3u * 256 * 256 / 32 * 34);
  EXPECT_EQ(i.expert_bytes_total, i.expert_bytes * 6 * 2);
}

TEST(ModelTest, OpenNamesAMissingFile) {
  auto m = Model::Open("/nonexistent/model.gguf", {});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("/nonexistent/model.gguf"), std::string::npos);
}

}  // namespace
}  // namespace moex
