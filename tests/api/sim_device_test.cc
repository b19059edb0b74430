// A model run on the simulated GPU (--device sim:PROFILE) computes exactly what the CPU
// computes, whatever the hybrid policy puts where: bit-identical logits and greedy tokens,
// on every architecture of the shared test models; the device reports its own clock and
// what moved; the memory budget is enforced with an error that names it.
#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/moex.h"
#include "tests/test_util.h"

namespace moex {
namespace {

using ::testing::HasSubstr;

const std::vector<int32_t> kPrompt = {1, 17, 300, 42, 599, 5, 77, 1000, 3};

struct RunResult {
  std::vector<float> logits;
  std::vector<int32_t> tokens;
  DeviceStats device;
  Stats stats;
};

RunResult RunModel(const Model& m, const SessionOptions& so) {
  RunResult r;
  auto s = m.NewSession(so);
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return r;
  auto l = (*s)->Evaluate(kPrompt);
  EXPECT_TRUE(l.ok()) << l.status();
  if (l.ok()) r.logits = *l;
  (*s)->Reset();
  GenerateOptions g;
  g.max_tokens = 8;
  g.stop_at_eos = false;
  g.sampling.temperature = 0;
  auto out = (*s)->Generate(kPrompt, g, {});
  EXPECT_TRUE(out.ok()) << out.status();
  if (out.ok()) r.tokens = *out;
  r.device = (*s)->device_stats();
  r.stats = (*s)->stats();
  return r;
}

SessionOptions Sim(const std::string& policy) {
  SessionOptions so;
  so.context = 64;
  so.device = "sim:rtx4060-8g";
  so.cpu_profile = "desktop-ddr5";  // a fixed profile: no calibration in tests
  so.gpu_mem = "25%";
  so.moe_policy = policy;
  return so;
}

class SimDeviceModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(SimDeviceModelTest, EveryPolicyComputesWhatTheCpuComputes) {
  const std::string path = testing::TestDataDir() + "/models/" + GetParam() + ".gguf";
  auto m = Model::Open(path, {});
  if (!m.ok()) GTEST_SKIP() << "no test model: " << m.status();
  SessionOptions cpu_so;
  cpu_so.context = 64;
  const RunResult cpu = RunModel(**m, cpu_so);
  ASSERT_FALSE(cpu.logits.empty());
  EXPECT_EQ(cpu.device.device, "cpu");
  EXPECT_EQ(cpu.stats.device_decode_seconds, 0);
  const ModelInfo& info = (*m)->info();
  for (const std::string policy :
       {"hybrid", "static-layers", "lru-ondemand", "cpu-only", "gpu-only"}) {
    SCOPED_TRACE(policy);
    const RunResult sim = RunModel(**m, Sim(policy));
    ASSERT_EQ(sim.logits.size(), cpu.logits.size());
    EXPECT_EQ(0,
              std::memcmp(sim.logits.data(), cpu.logits.data(), cpu.logits.size() * sizeof(float)));
    EXPECT_EQ(sim.tokens, cpu.tokens);
    const DeviceStats& d = sim.device;
    EXPECT_EQ(d.device, "sim:rtx4060-8g");
    EXPECT_EQ(d.moe_policy, policy);
    EXPECT_GT(d.seconds, 0);
    EXPECT_GT(sim.stats.device_prefill_seconds, 0);
    EXPECT_GT(sim.stats.device_decode_seconds, 0);
    // Every routed expert use is a hit or a miss; every expert run is on one side.
    int64_t runs = 0, cpu_runs = 0;
    for (size_t l = 0; l < d.layer_gpu_experts.size(); ++l) {
      runs += d.layer_gpu_experts[l] + d.layer_cpu_experts[l];
      cpu_runs += d.layer_cpu_experts[l];
    }
    EXPECT_EQ(runs, d.hits + d.misses);
    EXPECT_EQ(d.layer_gpu_experts.size(), static_cast<size_t>(info.n_layer));
    if (policy == "cpu-only") {
      EXPECT_EQ(d.hits, 0);
      EXPECT_EQ(d.bytes_copied, 0);
      EXPECT_EQ(d.slots, 0);
    }
    if (policy == "gpu-only") {
      EXPECT_EQ(d.misses, 0);
      EXPECT_EQ(cpu_runs, 0);
      EXPECT_EQ(d.slots, info.n_layer * info.n_expert);
    }
    if (policy == "static-layers") EXPECT_EQ(d.bytes_copied, 0);
    if (policy == "lru-ondemand") {
      // Misses are copied while the layer has unpinned slots (a prefill batch that uses
      // more experts than a layer has slots runs the rest on the CPU).
      EXPECT_GT(d.ondemand_copies, 0);
      EXPECT_EQ(d.prefetch_copies + d.refresh_copies, 0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(SharedModels, SimDeviceModelTest,
                         ::testing::Values("vis-mixtral-q4_0", "vis-qwen2moe-q8_0",
                                           "vis-qwen3moe-q4_k_m", "vis-olmoe-q5_k_m"));

TEST(SimDeviceOptionsTest, ErrorsNameTheLimitAndTheChoices) {
  const std::string path = testing::TestDataDir() + "/models/vis-qwen3moe-q4_k_m.gguf";
  auto m = Model::Open(path, {});
  if (!m.ok()) GTEST_SKIP() << "no test model: " << m.status();
  SessionOptions so = Sim("hybrid");
  so.gpu_mem = "100GiB";  // more slots than experts: capped at all of them, which fit
  EXPECT_TRUE((*m)->NewSession(so).ok());
  so.device = "sim:rtx9999";
  EXPECT_THAT(std::string((*m)->NewSession(so).status().message()), HasSubstr("rtx4060-8g"));
  so.device = "sim:rtx4060-8g";
  so.moe_policy = "fastest";
  EXPECT_THAT(std::string((*m)->NewSession(so).status().message()), HasSubstr("static-layers"));
  so.moe_policy = "hybrid";
  so.cache_policy = "belady";
  EXPECT_THAT(std::string((*m)->NewSession(so).status().message()), HasSubstr("moex sim only"));
  so.cache_policy = "";
  // A context whose KV cache alone exceeds the card: the device's budget refuses it.
  so.device = "sim:rtx4060-8g";
  so.context = int64_t{1} << 24;
  auto s = (*m)->NewSession(so);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted) << s.status();
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("dense weights + KV"));
}

}  // namespace
}  // namespace moex
