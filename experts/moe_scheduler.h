// The intra-layer CPU/GPU scheduler of HybriMoE (DAC'25, arXiv 2504.05897; our notes in
// ../shared/docs/ALGORITHMS.md §2a), with its cost model.
//
// After a layer's routing every activated expert is one job with `tokens` tokens. Three
// resources work at once: the CPU (computes experts from host memory), the GPU (computes
// experts resident in its slots) and the link (copies a missing expert into a slot, after
// which the GPU can compute it). The schedule minimises the layer's finish time, the later
// of the CPU's and the GPU's last job.
//
// Costs come from the same functions the simulated device charges (runtime/device), so on
// the sim device a plan's predicted times are the times it takes; with a real device the
// measured times refine the model online (MoeCostModel::Observe).
#ifndef MOEX_EXPERTS_MOE_SCHEDULER_H_
#define MOEX_EXPERTS_MOE_SCHEDULER_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/device/device.h"

namespace moex {

// One routed expert's size.
struct ExpertShape {
  int64_t hidden = 0;
  int64_t ffn = 0;   // the expert's intermediate size
  double bytes = 0;  // gate + up + down weights in their file types
  double FlopsPerToken() const { return 6.0 * static_cast<double>(hidden) * ffn; }
};

// What one expert costs on each side, from the GPU and CPU profiles, scaled by what was
// measured (Observe). Seconds.
class MoeCostModel {
 public:
  MoeCostModel() = default;
  MoeCostModel(const GpuProfile& gpu, const CpuProfile& cpu, const ExpertShape& shape);

  double Cpu(int64_t tokens) const;  // one expert on the CPU
  double Gpu(int64_t tokens) const;  // one resident expert on the GPU
  double Copy() const;               // one expert over the link
  // The bytes and FLOPs of one expert's kernel, what the device is charged.
  WorkCost Work(int64_t tokens) const;

  enum class Side { kCpu, kGpu, kCopy };
  // A measured time of something the model predicted: the model's scale for that side
  // moves toward measured/predicted (exponential average, weight `alpha`).
  void Observe(Side side, int64_t tokens, double measured_s, double alpha = 0.2);
  double scale(Side side) const { return scale_[static_cast<int>(side)]; }

  const ExpertShape& shape() const { return shape_; }
  const GpuProfile& gpu() const { return gpu_; }
  const CpuProfile& cpu() const { return cpu_; }

 private:
  double Raw(Side side, int64_t tokens) const;
  GpuProfile gpu_;
  CpuProfile cpu_;
  ExpertShape shape_;
  double scale_[3] = {1, 1, 1};
};

// How a layer's jobs may be placed.
enum class PlacementRule {
  kHybrid,         // HybriMoE: GPU, copy-then-GPU or CPU, whatever finishes first
  kResidentOrCpu,  // resident on the GPU, everything else on the CPU, no copies
  kAlwaysGpu,      // every miss is copied and computed on the GPU (on-demand offload)
  kAlwaysCpu,      // routed experts on the CPU
};

struct ExpertJob {
  int32_t expert = 0;
  int32_t tokens = 1;
  bool resident = false;
  // Resident but its copy is still in flight: it lands at this time (relative to the
  // layer's start, like every time below); 0 when it is there.
  double ready_s = 0;
};

struct ScheduledJob {
  int32_t expert = 0;
  int32_t tokens = 0;
  bool on_gpu = false;
  bool copied = false;    // copied now, on demand, before the GPU computes it
  double copy_end_s = 0;  // when that copy lands
  double start_s = 0, end_s = 0;
};

// When each resource can start, relative to the layer's start.
struct ResourceClock {
  double cpu_s = 0, gpu_s = 0, link_s = 0;
};

struct LayerSchedule {
  std::vector<ScheduledJob> jobs;  // in the order each side runs them
  ResourceClock end;               // when each resource is done with this layer
  double finish_s = 0;             // max(end.cpu_s, end.gpu_s)
  double gpu_wait_s = 0;           // GPU idle time waiting for copies to land (stall)
  int32_t copies = 0;
};

// Schedules one layer. `max_copies` bounds the on-demand copies (free or evictable slots).
// Decode (every job one token) and prefill alike.
//
// kHybrid is HybriMoE's two-ended greedy: jobs sorted resident first, then by tokens
// (descending); the GPU takes from the front (big, resident), the CPU from the back (small);
// each step the next job goes to the side that would finish it earlier; a non-resident job
// taken by the GPU first waits for its copy, copies being serial on the link.
LayerSchedule ScheduleLayer(const std::vector<ExpertJob>& jobs, const MoeCostModel& cost,
                            PlacementRule rule, int32_t max_copies,
                            const ResourceClock& start = {});

}  // namespace moex

#endif  // MOEX_EXPERTS_MOE_SCHEDULER_H_
