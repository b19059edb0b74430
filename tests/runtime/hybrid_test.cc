// The hybrid control: intra-layer schedules on hand-made costs (the decode case where a
// copy never pays, the prefill case where it does), prefetch within its limits, the
// executor's clock on the simulated device against hand-computed times, and the
// trace-driven simulator's invariants on the real Mixtral trace.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "experts/hybrid_moe.h"
#include "experts/moe_scheduler.h"
#include "experts/prefetch.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/sim.h"
#include "moex/trace.h"
#include "runtime/core/ini.h"
#include "runtime/core/status_macros.h"
#include "tests/test_util.h"

namespace moex {
namespace {

using ::testing::HasSubstr;

// An expert of 10 MB: on this GPU a copy is 1 ms + 10 us, a resident expert 0.1 ms (+5 us
// launch) per 1-token call; on this CPU 0.5 ms + 2 us. Compute is cheap on both at one
// token (memory bound) and dominates at hundreds of tokens.
GpuProfile Gpu() {
  GpuProfile g;
  g.name = "t-gpu";
  g.memory_bytes = int64_t{1} << 30;
  g.pcie_gbps = 10;
  g.pcie_latency_us = 10;
  g.mem_gbps = 100;
  g.tflops = 10;
  g.launch_us = 5;
  return g;
}
CpuProfile Cpu() {
  CpuProfile c;
  c.name = "t-cpu";
  c.mem_gbps = 20;
  c.gflops = 200;
  c.cores = 4;
  c.overhead_us = 2;
  return c;
}
MoeCostModel Cost() { return MoeCostModel(Gpu(), Cpu(), ExpertShape{256, 512, 10e6}); }

ExpertJob Job(int32_t e, int32_t tokens, bool resident) {
  return ExpertJob{e, tokens, resident, 0};
}

TEST(MoeCostModelTest, UnitCostsAreTheDeviceFunctions) {
  const MoeCostModel c = Cost();
  const WorkCost w = c.Work(1);
  EXPECT_DOUBLE_EQ(c.Cpu(1), CpuWorkSeconds(Cpu(), w.bytes, w.flops));
  EXPECT_DOUBLE_EQ(c.Gpu(1), GpuKernelSeconds(Gpu(), w.bytes, w.flops));
  EXPECT_DOUBLE_EQ(c.Copy(), CopySeconds(Gpu(), 10e6));
  EXPECT_NEAR(c.Copy(), 1.01e-3, 1e-9);  // 10 us + 10 MB / 10 GB/s
  // Observe moves the scale toward measured / predicted.
  MoeCostModel m = Cost();
  m.Observe(MoeCostModel::Side::kCpu, 1, 2 * m.Cpu(1), 0.5);
  EXPECT_NEAR(m.scale(MoeCostModel::Side::kCpu), 1.5, 1e-12);
  EXPECT_NEAR(m.Cpu(1), 1.5 * c.Cpu(1), 1e-15);
}

TEST(ScheduleLayerTest, DecodeNeverCopiesWhenTheCpuIsFaster) {
  // Two misses of one token: copy + GPU = 1.01 + 0.105 ms each, CPU 0.502 ms each. The
  // CPU does both (1.004 ms) before a copy would even land.
  const MoeCostModel c = Cost();
  const LayerSchedule s =
      ScheduleLayer({Job(3, 1, false), Job(5, 1, false)}, c, PlacementRule::kHybrid, 8);
  ASSERT_EQ(s.jobs.size(), 2u);
  for (const ScheduledJob& j : s.jobs) EXPECT_FALSE(j.on_gpu) << j.expert;
  EXPECT_EQ(s.copies, 0);
  EXPECT_NEAR(s.finish_s, 2 * c.Cpu(1), 1e-12);
}

TEST(ScheduleLayerTest, DecodeCopiesWhenTheCpuQueueIsLonger) {
  // Four misses: CPU alone 4 x 0.502 = 2.008 ms. The two-ended greedy copies the front job
  // (lands 1.01 ms, done 1.115 ms) while the CPU takes the back three.
  const MoeCostModel c = Cost();
  const LayerSchedule s =
      ScheduleLayer({Job(0, 1, false), Job(1, 1, false), Job(2, 1, false), Job(3, 1, false)}, c,
                    PlacementRule::kHybrid, 8);
  int gpu = 0;
  for (const ScheduledJob& j : s.jobs) gpu += j.on_gpu;
  EXPECT_EQ(gpu, 1);
  EXPECT_EQ(s.copies, 1);
  EXPECT_NEAR(s.finish_s, std::max(3 * c.Cpu(1), c.Copy() + c.Gpu(1)), 1e-12);
  EXPECT_NEAR(s.gpu_wait_s, c.Copy(), 1e-12);
  // With no slot to copy into, the CPU takes all four.
  const LayerSchedule none =
      ScheduleLayer({Job(0, 1, false), Job(1, 1, false), Job(2, 1, false), Job(3, 1, false)}, c,
                    PlacementRule::kHybrid, 0);
  EXPECT_EQ(none.copies, 0);
  EXPECT_NEAR(none.finish_s, 4 * c.Cpu(1), 1e-12);
}

TEST(ScheduleLayerTest, PrefillCopiesTheBigExpert) {
  // 512 tokens: the CPU needs 512 x 2.6 MFLOP... = 3.9 ms of compute, the GPU 0.08 ms; the
  // copy (1.01 ms) pays. The small job (2 tokens) stays on the CPU.
  const MoeCostModel c = Cost();
  ASSERT_GT(c.Cpu(512), c.Copy() + c.Gpu(512));
  const LayerSchedule s =
      ScheduleLayer({Job(7, 2, false), Job(4, 512, false)}, c, PlacementRule::kHybrid, 8);
  ASSERT_EQ(s.jobs.size(), 2u);
  for (const ScheduledJob& j : s.jobs) {
    EXPECT_EQ(j.on_gpu, j.expert == 4) << j.expert;
    EXPECT_EQ(j.copied, j.expert == 4) << j.expert;
  }
  EXPECT_NEAR(s.finish_s, std::max(c.Copy() + c.Gpu(512), c.Cpu(2)), 1e-12);
}

TEST(ScheduleLayerTest, ResidentJobsGoToTheGpuAndRulesAreObeyed) {
  const MoeCostModel c = Cost();
  const std::vector<ExpertJob> jobs = {Job(1, 1, true), Job(2, 1, false), Job(3, 1, true)};
  const LayerSchedule h = ScheduleLayer(jobs, c, PlacementRule::kHybrid, 8);
  for (const ScheduledJob& j : h.jobs) EXPECT_EQ(j.on_gpu, j.expert != 2) << j.expert;
  EXPECT_NEAR(h.finish_s, std::max(2 * c.Gpu(1), c.Cpu(1)), 1e-12);

  const LayerSchedule r = ScheduleLayer(jobs, c, PlacementRule::kResidentOrCpu, 8);
  EXPECT_EQ(r.copies, 0);
  for (const ScheduledJob& j : r.jobs) EXPECT_EQ(j.on_gpu, j.expert != 2);

  const LayerSchedule g = ScheduleLayer(jobs, c, PlacementRule::kAlwaysGpu, 8);
  EXPECT_EQ(g.copies, 1);
  for (const ScheduledJob& j : g.jobs) EXPECT_TRUE(j.on_gpu);
  // Resident ones first, so the copy overlaps them: 2 x 0.105 < 1.01, then the copied one.
  EXPECT_NEAR(g.finish_s, c.Copy() + c.Gpu(1), 1e-12);

  const LayerSchedule cpu = ScheduleLayer(jobs, c, PlacementRule::kAlwaysCpu, 8);
  for (const ScheduledJob& j : cpu.jobs) EXPECT_FALSE(j.on_gpu);
  EXPECT_NEAR(cpu.finish_s, 3 * c.Cpu(1), 1e-12);
}

TEST(ScheduleLayerTest, InFlightCopiesAndBusyResources) {
  const MoeCostModel c = Cost();
  // A resident expert still landing at 0.8 ms: the GPU waits for it.
  ExpertJob landing = Job(1, 1, true);
  landing.ready_s = 0.8e-3;
  const LayerSchedule s = ScheduleLayer({landing}, c, PlacementRule::kResidentOrCpu, 0);
  EXPECT_NEAR(s.finish_s, 0.8e-3 + c.Gpu(1), 1e-12);
  EXPECT_NEAR(s.gpu_wait_s, 0.8e-3, 1e-12);
  // A link busy until 2 ms pushes a copy back.
  ResourceClock start;
  start.link_s = 2e-3;
  const LayerSchedule g = ScheduleLayer({Job(2, 1, false)}, c, PlacementRule::kAlwaysGpu, 1, start);
  EXPECT_NEAR(g.finish_s, 2e-3 + c.Copy() + c.Gpu(1), 1e-12);
}

ExpertCache MakeCache(ExpertCachePolicy p, int32_t layers, int32_t experts, int32_t slots) {
  ExpertCacheOptions o;
  o.policy = p;
  o.num_layers = layers;
  o.num_experts = experts;
  o.slots.assign(layers, slots);
  auto c = ExpertCache::Create(std::move(o));
  EXPECT_TRUE(c.ok()) << c.status();
  return *std::move(c);
}

TEST(PrefetchTest, ImpactFetchesWhatShortensTheNextLayerWithinLimits) {
  // The next layer will need experts 1, 2, 3 (one token each). Prefetched copies land
  // before it starts (3 ms away), so each resident guess moves a job off the CPU.
  const MoeCostModel c = Cost();
  ExpertCache cache = MakeCache(ExpertCachePolicy::kLru, 2, 8, 2);
  PrefetchRequest r;
  r.layer = 1;
  r.guesses = {{1, 1, 0.9}, {2, 1, 0.9}, {3, 1, 0.9}};
  r.layer_start_s = 3e-3;
  r.max_copies = 1;
  std::vector<int32_t> got = PlanPrefetch(PrefetchMode::kImpact, r, c, &cache);
  ASSERT_EQ(got.size(), 1u);  // never more than max_copies
  EXPECT_TRUE(cache.Resident(1, got[0]));
  EXPECT_TRUE(cache.Pinned(1, got[0]));
  r.max_copies = 8;
  got = PlanPrefetch(PrefetchMode::kImpact, r, c, &cache);
  EXPECT_EQ(got.size(), 1u);  // one slot left: the other is pinned, never evicted
  EXPECT_EQ(cache.size(1), 2);
  got = PlanPrefetch(PrefetchMode::kImpact, r, c, &cache);
  EXPECT_TRUE(got.empty());  // both slots pinned
}

TEST(PrefetchTest, NoGainNoCopy) {
  // The next layer starts now and the link is busy for 10 ms: nothing lands in time.
  const MoeCostModel c = Cost();
  ExpertCache cache = MakeCache(ExpertCachePolicy::kLru, 2, 8, 4);
  PrefetchRequest r;
  r.layer = 1;
  r.guesses = {{1, 1, 1.0}, {2, 1, 1.0}};
  r.link_free_s = 10e-3;
  r.max_copies = 4;
  EXPECT_TRUE(PlanPrefetch(PrefetchMode::kImpact, r, c, &cache).empty());
  EXPECT_TRUE(PlanPrefetch(PrefetchMode::kNone, r, c, &cache).empty());
  EXPECT_EQ(cache.size(1), 0);
}

TEST(PrefetchTest, ScoreRankFetchesTheBestScoredAbsentExperts) {
  const MoeCostModel c = Cost();
  ExpertCache cache = MakeCache(ExpertCachePolicy::kScore, 2, 8, 2);
  const int32_t ids[] = {6, 4, 2};
  const float scores[] = {0.6f, 0.3f, 0.1f};
  cache.ObserveRouting(1, ids, scores, 3);
  PrefetchRequest r;
  r.layer = 1;
  r.count = 2;
  r.max_copies = 8;
  std::vector<int32_t> got = PlanPrefetch(PrefetchMode::kScoreRank, r, c, &cache);
  EXPECT_EQ(got, (std::vector<int32_t>{6, 4}));
}

// The executor on the sim device, cpu-only, one layer: the clock is the dense kernel, the
// activations' trip to the CPU, two CPU experts, the trip back, on known unit costs.
TEST(HybridMoeTest, ClockOfACpuOnlyLayer) {
  const MoeCostModel c = Cost();
  auto dev = CreateSimDevice(SimDeviceOptions{Gpu(), Cpu(), 0});
  ASSERT_TRUE(dev.ok()) << dev.status();
  HybridMoeOptions o;
  o.policy = MoePolicy::kCpuOnly;
  o.num_layers = 1;
  o.num_experts = 8;
  o.top_k = 2;
  o.hidden = 256;
  auto h = HybridMoe::Create(o, c, dev->get());
  ASSERT_TRUE(h.ok()) << h.status();
  (*h)->BeginStep(1, 1);
  const WorkCost dense{1e6, 0};  // 5 us + 1 MB / 100 GB/s = 15 us
  ASSERT_TRUE((*h)->RunDense(dense, nullptr).ok());
  const int32_t experts[] = {3, 6};
  std::vector<int32_t> ran;
  HybridMoe::LayerInput in;
  in.tokens = 1;
  in.k = 2;
  in.experts = experts;
  ASSERT_TRUE((*h)->RunMoe(in,
                           [&](int32_t e, bool on_gpu) {
                             EXPECT_FALSE(on_gpu);
                             ran.push_back(e);
                             return absl::OkStatus();
                           })
                  .ok());
  auto t = (*h)->Synchronize();
  ASSERT_TRUE(t.ok());
  const double xfer = CopySeconds(Gpu(), 256 * 4);
  EXPECT_NEAR(*t, 15e-6 + xfer + 2 * c.Cpu(1) + xfer, 1e-12);
  std::sort(ran.begin(), ran.end());
  EXPECT_EQ(ran, (std::vector<int32_t>{3, 6}));
  EXPECT_EQ((*h)->stats().misses, 2);
  EXPECT_EQ((*h)->stats().layers[0].cpu_experts, 2);
}

TEST(HybridMoeTest, GpuOnlyNeedsRoomForEveryExpert) {
  auto dev = CreateSimDevice(SimDeviceOptions{Gpu(), Cpu(), 0});
  ASSERT_TRUE(dev.ok());
  HybridMoeOptions o;
  o.policy = MoePolicy::kGpuOnly;
  o.num_layers = 2;
  o.num_experts = 8;
  o.top_k = 2;
  o.slot_budget = 15;
  auto h = HybridMoe::Create(o, Cost(), dev->get());
  EXPECT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(h.status().message()), HasSubstr("all 16 experts"));
  o.slot_budget = 16;
  h = HybridMoe::Create(o, Cost(), dev->get());
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE((*h)->cache().Resident(1, 7));
  // Knobs a policy cannot honour are errors.
  o.cache_policy = ExpertCachePolicy::kLfu;
  EXPECT_THAT(std::string(HybridMoe::Create(o, Cost(), dev->get()).status().message()),
              HasSubstr("--cache-policy does not apply to --moe-policy gpu-only"));
  o.cache_policy.reset();
  o.policy = MoePolicy::kStaticLayers;
  o.prefetch = PrefetchMode::kImpact;
  EXPECT_THAT(std::string(HybridMoe::Create(o, Cost(), dev->get()).status().message()),
              HasSubstr("--prefetch needs a cache that admits experts"));
  o.policy = MoePolicy::kLruOnDemand;  // an admitting cache: prefetch is honoured
  h = HybridMoe::Create(o, Cost(), dev->get());
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ((*h)->prefetch(), PrefetchMode::kImpact);
  EXPECT_TRUE(ParseMoePolicy("hybrid").ok());
  EXPECT_THAT(std::string(ParseMoePolicy("gpu").status().message()), HasSubstr("static-layers"));
}

// A device that is lost mid-run (a GPU that falls off the bus, a CUDA error that poisons
// the context): after `healthy` operations every copy, launch and synchronisation fails.
class LostDevice final : public Device {
 public:
  LostDevice(std::unique_ptr<Device> inner, int healthy)
      : inner_(std::move(inner)), left_(healthy) {}
  DeviceKind kind() const override { return inner_->kind(); }
  std::string name() const override { return inner_->name(); }
  absl::StatusOr<DeviceAlloc> Allocate(int64_t bytes, std::string_view what) override {
    return inner_->Allocate(bytes, what);
  }
  void Free(DeviceAlloc& a) override { inner_->Free(a); }
  MemoryInfo memory() const override { return inner_->memory(); }
  absl::StatusOr<void*> AllocatePinned(int64_t bytes) override {
    return inner_->AllocatePinned(bytes);
  }
  void FreePinned(void* p) override { inner_->FreePinned(p); }
  absl::StatusOr<StreamId> CreateStream() override { return inner_->CreateStream(); }
  absl::Status CopyToDevice(StreamId s, void* d, const void* src, int64_t n) override {
    MOEX_RETURN_IF_ERROR(Tick());
    return inner_->CopyToDevice(s, d, src, n);
  }
  absl::Status CopyToHost(StreamId s, void* d, const void* src, int64_t n) override {
    MOEX_RETURN_IF_ERROR(Tick());
    return inner_->CopyToHost(s, d, src, n);
  }
  absl::Status Launch(StreamId s, const WorkCost& c,
                      const std::function<absl::Status(void*)>& fn) override {
    MOEX_RETURN_IF_ERROR(Tick());
    return inner_->Launch(s, c, fn);
  }
  absl::StatusOr<Event> Record(StreamId s) override {
    MOEX_RETURN_IF_ERROR(Tick());
    return inner_->Record(s);
  }
  absl::Status Wait(StreamId s, const Event& e) override {
    MOEX_RETURN_IF_ERROR(Tick());
    return inner_->Wait(s, e);
  }
  absl::StatusOr<double> Synchronize() override {
    MOEX_RETURN_IF_ERROR(Tick());
    return inner_->Synchronize();
  }
  double StreamTime(StreamId s) const override { return inner_->StreamTime(s); }
  int failures() const { return failures_; }

 private:
  absl::Status Tick() {
    if (left_ > 0) {
      --left_;
      return absl::OkStatus();
    }
    ++failures_;
    return absl::UnavailableError("t-gpu: device lost (injected)");
  }
  std::unique_ptr<Device> inner_;
  int left_;
  int failures_ = 0;
};

// A device lost in the middle of a decode: the layer that meets it returns the device's
// error (no crash, no hang), and so does every later call, at once.
TEST(HybridMoeTest, ALostDeviceIsAnErrorNotAHang) {
  for (int healthy : {0, 3, 10, 40}) {
    SCOPED_TRACE(healthy);
    auto sim = CreateSimDevice(SimDeviceOptions{Gpu(), Cpu(), 0});
    ASSERT_TRUE(sim.ok());
    LostDevice dev(std::move(*sim), healthy);
    HybridMoeOptions o;
    o.policy = MoePolicy::kLruOnDemand;  // copies on every miss: the device is busy
    o.num_layers = 2;
    o.num_experts = 8;
    o.top_k = 2;
    o.hidden = 256;
    o.slot_budget = 4;
    auto h = HybridMoe::Create(o, Cost(), &dev);
    if (!h.ok()) {  // lost before the executor could set up its streams
      EXPECT_EQ(h.status().code(), absl::StatusCode::kUnavailable) << h.status();
      continue;
    }
    absl::Status st;
    for (int step = 0; step < 8 && st.ok(); ++step) {
      (*h)->BeginStep(step, 1);
      for (int32_t layer = 0; layer < 2 && st.ok(); ++layer) {
        st = (*h)->RunDense(WorkCost{1e6, 0}, nullptr);
        if (!st.ok()) break;
        const int32_t experts[] = {static_cast<int32_t>((step + layer) % 8),
                                   static_cast<int32_t>((step + 3) % 8)};
        HybridMoe::LayerInput in;
        in.layer = layer;
        in.tokens = 1;
        in.k = 2;
        in.experts = experts;
        st = (*h)->RunMoe(in, [&](int32_t, bool) { return absl::OkStatus(); });
      }
    }
    ASSERT_FALSE(st.ok()) << "8 steps ran on a device lost after " << healthy << " operations";
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("device lost"));
    // Later calls fail too, and return.
    (*h)->BeginStep(100, 1);
    const int32_t experts[] = {1, 2};
    HybridMoe::LayerInput in;
    in.tokens = 1;
    in.k = 2;
    in.experts = experts;
    const absl::Status again = (*h)->RunMoe(in, [](int32_t, bool) { return absl::OkStatus(); });
    EXPECT_FALSE(again.ok());
    EXPECT_FALSE((*h)->Synchronize().ok());
    EXPECT_GT(dev.failures(), 0);
  }
}

TEST(IniTest, SectionsEntriesAndErrors) {
  auto s = ParseIni("# c\n[shape a]\nx = 1 # one\ny=two\n\n[gpu b c]\n", "f.ini");
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->size(), 2u);
  EXPECT_EQ((*s)[0].kind, "shape");
  EXPECT_EQ((*s)[1].name, "b c");
  IniReader r((*s)[0], "f.ini");
  int64_t x = 0;
  double missing = 7;
  EXPECT_TRUE(r.Integer("x", &x).ok());
  EXPECT_EQ(x, 1);
  EXPECT_TRUE(r.Number("z", &missing, true).ok());
  EXPECT_EQ(missing, 7);
  EXPECT_THAT(std::string(r.Number("z", &missing).message()),
              HasSubstr("f.ini:2: [shape a] is missing key 'z'"));
  EXPECT_THAT(std::string(r.Finish().message()), HasSubstr("f.ini:4: [shape a] unknown key 'y'"));
  EXPECT_THAT(std::string(r.Integer("y", &x).message()), HasSubstr("'two' is not an integer"));
  EXPECT_THAT(std::string(ParseIni("a = 1\n", "g").status().message()),
              HasSubstr("g:1: key 'a' before any [KIND NAME] section"));
  EXPECT_THAT(std::string(ParseIni("[a b]\nk=1\nk=2\n", "g").status().message()),
              HasSubstr("g:3: key 'k' given twice in [a b]"));
  EXPECT_THAT(std::string(ParseIni("[ab]\n", "g").status().message()),
              HasSubstr("the name is missing"));
  EXPECT_THAT(std::string(ParseIni("[a b]\n[a b]\n", "g").status().message()),
              HasSubstr("g:2: [a b] is defined twice in this file (first at line 1)"));
  EXPECT_TRUE(ParseIni("[a b]\n[c b]\n", "g").ok());  // the same name, another kind
}

TEST(IniTest, FormatKindsAndNames) {
  const IniFormat f{.kinds = {"gpu", "cpu"}, .plain_names = true};
  EXPECT_TRUE(ParseIni("[gpu a-1_b.c]\n[cpu x]\n", "f", f).ok());
  EXPECT_THAT(std::string(ParseIni("[tpu z]\n", "f", f).status().message()),
              HasSubstr("f:1: section '[tpu z]': expected [gpu NAME] or [cpu NAME]"));
  EXPECT_THAT(std::string(ParseIni("[gpu a b]\n", "f", f).status().message()),
              HasSubstr("the name must be letters"));
  EXPECT_THAT(std::string(ParseIni("\nk = 1\n", "f", f).status().message()),
              HasSubstr("f:2: key 'k' before any [gpu NAME] or [cpu NAME] section"));
}

TEST(IniTest, RangesAndKnownKeys) {
  auto s = ParseIni("[t a]\npos = 0\nnn = -1e-3\nbad = nan\nint = 7\nbig = 3000000000\nneg = -2\n",
                    "f.ini");
  ASSERT_TRUE(s.ok()) << s.status();
  IniReader r((*s)[0], "f.ini");
  double d = 0;
  EXPECT_THAT(std::string(r.Number("pos", &d, false, IniRange::kPositive).message()),
              HasSubstr("f.ini:2: [t a] key 'pos': 0 must be > 0"));
  EXPECT_TRUE(r.Number("pos", &d, false, IniRange::kNonNegative).ok());
  EXPECT_THAT(std::string(r.Number("nn", &d, false, IniRange::kNonNegative).message()),
              HasSubstr("must be >= 0"));
  EXPECT_THAT(std::string(r.Number("bad", &d).message()), HasSubstr("'nan' is not a number"));
  int32_t i32 = 0;
  int64_t i64 = 0;
  EXPECT_TRUE(r.Integer("int", &i32, false, IniRange::kPositive).ok());
  EXPECT_EQ(i32, 7);
  EXPECT_TRUE(r.Integer("big", &i64).ok());
  EXPECT_EQ(i64, 3000000000);
  EXPECT_THAT(std::string(r.Integer("big", &i32).message()), HasSubstr("out of range"));
  EXPECT_EQ(i32, 7);  // unchanged on error
  EXPECT_THAT(std::string(r.Integer("neg", &i64, false, IniRange::kPositive).message()),
              HasSubstr("key 'neg': '-2' is not a positive integer"));
  EXPECT_THAT(std::string(r.Integer("pos", &i64, false, IniRange::kPositive).message()),
              HasSubstr("is not a positive integer"));
  EXPECT_TRUE(r.Finish().ok());
  IniReader r2((*s)[0], "f.ini");
  EXPECT_TRUE(r2.Number("pos", &d, true).ok());
  EXPECT_TRUE(r2.Number("other", &d, true).ok());
  EXPECT_THAT(std::string(r2.Finish().message()),
              HasSubstr("f.ini:3: [t a] unknown key 'nn' (known: pos, other)"));
}

TEST(ModelShapesTest, EveryIssueShapeIsBuiltIn) {
  for (const char* name : {"mixtral-8x7b", "qwen3-30b-a3b", "qwen1.5-moe-a2.7b", "olmoe-1b-7b",
                           "deepseek-v2-lite", "gpt-oss-20b"}) {
    auto m = FindModelShape(name);
    ASSERT_TRUE(m.ok()) << name << ": " << m.status();
    EXPECT_GT(m->layers, 0);
    EXPECT_GT(m->top_k, 0);
    EXPECT_LE(m->top_k, m->experts);
    EXPECT_GT(m->hidden * m->expert_ffn, 0);
  }
  EXPECT_THAT(std::string(FindModelShape("gpt-5").status().message()), HasSubstr("mixtral-8x7b"));
}

class SimulateTraceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path =
        testing::TestDataDir() + "/traces/mixtral-8x7b-instruct-fp8/gsm8k_2_routing.jsonl";
    auto t = ImportMixtralJsonl(path, 8);
    if (!t.ok()) GTEST_SKIP() << "no Mixtral trace: " << t.status();
    trace_ = *std::move(t);
  }
  SimReport Run(SimOptions o) {
    auto r = SimulateTrace(trace_, o);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : SimReport{};
  }
  Trace trace_;
};

TEST_F(SimulateTraceTest, PoliciesKeepTheirPromises) {
  SimOptions o;
  o.gpu = "rtx4090-24g";
  o.gpu_mem = "25%";
  o.policy = "cpu-only";
  const SimReport cpu = Run(o);
  EXPECT_EQ(cpu.hit_rate, 0);
  EXPECT_EQ(cpu.bytes_copied_per_token, 0);
  EXPECT_EQ(cpu.decode_tokens, trace_.tokens());
  EXPECT_GT(cpu.decode_tps, 0);
  // Every expert on the CPU can go no faster than the CPU's bandwidth allows.
  EXPECT_LT(cpu.decode_tps, cpu.bound_tps);

  o.policy = "static-layers";
  const SimReport st = Run(o);
  EXPECT_EQ(st.slots, 64);  // 8 whole layers of 8: the deepest (llama.cpp's --n-cpu-moe)
  EXPECT_EQ(st.bytes_copied_per_token, 0);
  EXPECT_NEAR(st.hit_rate, 0.25, 1e-12);  // 8 of 32 layers, every use
  for (int l = 0; l < 32; ++l) EXPECT_EQ(st.layers[l].slots, l >= 24 ? 8 : 0);

  o.policy = "lru-ondemand";
  const SimReport lru = Run(o);
  EXPECT_EQ(lru.cpu_ms_per_token, 0);  // every miss copied, none on the CPU
  EXPECT_GT(lru.bytes_copied_per_token, 0);

  o.policy = "hybrid";
  const SimReport hy = Run(o);
  EXPECT_EQ(hy.slots, 64);
  EXPECT_EQ(hy.cache_policy, "score");
  EXPECT_EQ(hy.prefetch, "impact");
  // Deterministic: the same run twice gives the same figures.
  const SimReport again = Run(o);
  EXPECT_EQ(hy.decode_tps, again.decode_tps);
  EXPECT_EQ(hy.hit_rate, again.hit_rate);
}

TEST_F(SimulateTraceTest, OracleAccuracyIsWhatWasAskedFor) {
  SimOptions o;
  o.gpu = "rtx4090-24g";
  o.gpu_mem = "25%";
  o.predictor = "oracle";
  o.predict_accuracy = 1.0;
  EXPECT_NEAR(Run(o).predictor_recall, 1.0, 1e-12);
  o.predict_accuracy = 0.7;
  EXPECT_NEAR(Run(o).predictor_recall, 0.7, 0.03);
  o.predictor = "none";
  EXPECT_EQ(Run(o).predictor_recall, -1);
}

TEST_F(SimulateTraceTest, ErrorsNameTheLimit) {
  SimOptions o;
  o.gpu = "rtx4060-8g";
  o.gpu_mem = "50%";
  auto r = SimulateTrace(trace_, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("exceed the rtx4060-8g's"));
  o.gpu_mem = "";
  o.model_shape = "qwen3-30b-a3b";
  r = SimulateTrace(trace_, o);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("the shape 'qwen3-30b-a3b' has 48"));
  o.model_shape = "mixtral-8x7b";
  o.gpu_mem = "12 parsecs";
  EXPECT_THAT(std::string(SimulateTrace(trace_, o).status().message()), HasSubstr("--gpu-mem"));
}

}  // namespace
}  // namespace moex
