#include "experts/moe_scheduler.h"

#include <algorithm>
#include <deque>
#include <limits>

namespace moex {

MoeCostModel::MoeCostModel(const GpuProfile& gpu, const CpuProfile& cpu, const ExpertShape& shape)
    : gpu_(gpu), cpu_(cpu), shape_(shape) {}

WorkCost MoeCostModel::Work(int64_t tokens) const {
  // Weights once, plus each token's activations in and out (hidden) and the two
  // intermediate rows (ffn), in F32.
  const double act = 4.0 * static_cast<double>(tokens) * (2.0 * shape_.hidden + 3.0 * shape_.ffn);
  return WorkCost{shape_.bytes + act, static_cast<double>(tokens) * shape_.FlopsPerToken()};
}

double MoeCostModel::Raw(Side side, int64_t tokens) const {
  const WorkCost w = Work(tokens);
  switch (side) {
    case Side::kCpu:
      return CpuWorkSeconds(cpu_, w.bytes, w.flops);
    case Side::kGpu:
      return GpuKernelSeconds(gpu_, w.bytes, w.flops);
    case Side::kCopy:
      return CopySeconds(gpu_, shape_.bytes);
  }
  return 0;
}

double MoeCostModel::Cpu(int64_t tokens) const { return scale_[0] * Raw(Side::kCpu, tokens); }
double MoeCostModel::Gpu(int64_t tokens) const { return scale_[1] * Raw(Side::kGpu, tokens); }
double MoeCostModel::Copy() const { return scale_[2] * Raw(Side::kCopy, 1); }

void MoeCostModel::Observe(Side side, int64_t tokens, double measured_s, double alpha) {
  const double predicted = Raw(side, tokens);
  if (!(predicted > 0) || !(measured_s > 0)) return;
  double& s = scale_[static_cast<int>(side)];
  s = (1 - alpha) * s + alpha * (measured_s / predicted);
}

namespace {

constexpr double kNever = std::numeric_limits<double>::infinity();

// The state of the three resources while a layer is being placed.
struct Placer {
  const MoeCostModel& cost;
  ResourceClock clock;
  int32_t copies_left;
  LayerSchedule out;

  // When the GPU would finish `job` if it took it now (kNever if it cannot).
  double GpuFinish(const ExpertJob& job, double* copy_end) const {
    double ready = job.ready_s;
    if (!job.resident) {
      if (copies_left <= 0) return kNever;
      ready = clock.link_s + cost.Copy();
    }
    *copy_end = ready;
    return std::max(clock.gpu_s, ready) + cost.Gpu(job.tokens);
  }
  double CpuFinish(const ExpertJob& job) const { return clock.cpu_s + cost.Cpu(job.tokens); }

  void TakeGpu(const ExpertJob& job) {
    double ready = 0;
    const double end = GpuFinish(job, &ready);
    ScheduledJob s{job.expert, job.tokens, true, !job.resident, 0, 0, end};
    if (!job.resident) {
      s.copy_end_s = ready;
      clock.link_s = ready;
      --copies_left;
      ++out.copies;
    }
    s.start_s = std::max(clock.gpu_s, ready);
    out.gpu_wait_s += std::max(0.0, ready - clock.gpu_s);
    clock.gpu_s = end;
    out.jobs.push_back(s);
  }
  void TakeCpu(const ExpertJob& job) {
    const double end = CpuFinish(job);
    out.jobs.push_back(ScheduledJob{job.expert, job.tokens, false, false, 0, clock.cpu_s, end});
    clock.cpu_s = end;
  }
};

}  // namespace

LayerSchedule ScheduleLayer(const std::vector<ExpertJob>& jobs, const MoeCostModel& cost,
                            PlacementRule rule, int32_t max_copies, const ResourceClock& start) {
  Placer p{cost, start, std::max(0, max_copies), {}};
  p.out.jobs.reserve(jobs.size());
  switch (rule) {
    case PlacementRule::kAlwaysCpu:
      for (const ExpertJob& j : jobs) p.TakeCpu(j);
      break;
    case PlacementRule::kResidentOrCpu:
      for (const ExpertJob& j : jobs) j.resident ? p.TakeGpu(j) : p.TakeCpu(j);
      break;
    case PlacementRule::kAlwaysGpu: {
      // Resident jobs first, so the GPU computes them while the misses are copied.
      std::vector<ExpertJob> order(jobs);
      std::stable_partition(order.begin(), order.end(),
                            [](const ExpertJob& j) { return j.resident; });
      for (const ExpertJob& j : order) {
        double unused;
        p.GpuFinish(j, &unused) < kNever ? p.TakeGpu(j) : p.TakeCpu(j);
      }
      break;
    }
    case PlacementRule::kHybrid: {
      std::deque<ExpertJob> q(jobs.begin(), jobs.end());
      std::stable_sort(q.begin(), q.end(), [](const ExpertJob& a, const ExpertJob& b) {
        if (a.resident != b.resident) return a.resident;
        return a.tokens > b.tokens;
      });
      while (!q.empty()) {
        double unused;
        const double gpu = p.GpuFinish(q.front(), &unused);
        const double cpu = p.CpuFinish(q.back());
        if (gpu <= cpu) {
          p.TakeGpu(q.front());
          q.pop_front();
        } else {
          p.TakeCpu(q.back());
          q.pop_back();
        }
      }
      break;
    }
  }
  p.out.end = p.clock;
  p.out.finish_s = std::max(p.clock.cpu_s, p.clock.gpu_s);
  return p.out;
}

}  // namespace moex
