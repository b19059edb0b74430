// The simulated GPU: host memory under the profile's exact budget, host computation, and a
// virtual clock per stream advanced by the profile's cost model (device.h, docs/DEVICE.md).
#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/device/device.h"
#include "runtime/device/device_internal.h"

namespace moex {
namespace {

// A hardware unit that several streams share (the H2D link, the D2H link, the GPU's SMs):
// its busy intervals, sorted and disjoint. An operation takes the earliest gap at or after
// the time its stream is ready, so work issued later on a stream that is behind in virtual
// time can still use a gap before work issued earlier on a stream that is ahead.
class Engine {
 public:
  // Books `duration` seconds starting no earlier than `ready`; returns the end time.
  double Book(double ready, double duration) {
    // Intervals are sorted and disjoint, so their ends are sorted too: skip those that end
    // by `ready` with a binary search (a long run books tens of thousands between barriers).
    auto it =
        std::upper_bound(busy_.begin(), busy_.end(), ready,
                         [](double t, const std::pair<double, double>& x) { return t < x.second; });
    double start = ready;
    for (; it != busy_.end(); ++it) {
      const auto& [b, e] = *it;
      if (b >= start + duration) break;  // fits in the gap before this interval
      start = std::max(start, e);
    }
    // Keep the list sorted: the new interval goes before the first one starting after it.
    busy_.insert(it, {start, start + duration});
    return start + duration;
  }
  // Nothing can start before `t` any more (a barrier passed): forget what ended by then.
  void Forget(double t) {
    busy_.erase(std::remove_if(busy_.begin(), busy_.end(),
                               [t](const std::pair<double, double>& x) { return x.second <= t; }),
                busy_.end());
  }

 private:
  std::vector<std::pair<double, double>> busy_;
};

class SimDevice : public device_internal::HostMemoryDevice {
 public:
  SimDevice(const SimDeviceOptions& o, int64_t budget)
      : HostMemoryDevice("sim:" + o.gpu.name, budget, o.gpu.memory_bytes),
        gpu_(o.gpu),
        cpu_(o.cpu),
        name_("sim:" + o.gpu.name),
        clocks_(1, 0.0) {}

  DeviceKind kind() const override { return DeviceKind::kSim; }
  std::string name() const override { return name_; }

  absl::StatusOr<StreamId> CreateStream() override {
    std::lock_guard<std::mutex> lock(mu_);
    clocks_.push_back(floor_);
    return static_cast<StreamId>(clocks_.size() - 1);
  }

  absl::Status CopyToDevice(StreamId stream, void* dst, const void* src, int64_t bytes) override {
    return Copy(stream, dst, src, bytes, &h2d_, "CopyToDevice");
  }
  absl::Status CopyToHost(StreamId stream, void* dst, const void* src, int64_t bytes) override {
    return Copy(stream, dst, src, bytes, &d2h_, "CopyToHost");
  }

  absl::Status Launch(StreamId stream, const WorkCost& cost,
                      const std::function<absl::Status(void*)>& fn) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      absl::Status st = CheckStream(stream, "Launch");
      if (!st.ok()) return st;
    }
    if (cost.bytes < 0 || cost.flops < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          name_, ": Launch with a negative cost (", cost.bytes, " bytes, ", cost.flops, " flops)"));
    }
    // Outside the lock: fn may use the device itself (allocate scratch, record events).
    absl::Status st = fn(nullptr);
    if (!st.ok()) return st;
    std::lock_guard<std::mutex> lock(mu_);
    if (stream == kHostStream) {
      // One host lane: its work is serial by construction, no engine to share.
      clocks_[stream] += CpuWorkSeconds(cpu_, cost.bytes, cost.flops);
    } else {
      clocks_[stream] =
          gpu_engine_.Book(clocks_[stream], GpuKernelSeconds(gpu_, cost.bytes, cost.flops));
      Prune();
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Event> Record(StreamId stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status st = CheckStream(stream, "Record");
    if (!st.ok()) return st;
    Event e;
    e.stream = stream;
    e.serial = ++serial_;
    e.seconds = clocks_[stream];
    return e;
  }

  absl::Status Wait(StreamId stream, const Event& event) override {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status st = CheckStream(stream, "Wait");
    if (!st.ok()) return st;
    if (event.serial == 0 || event.serial > serial_ || !ValidStream(event.stream)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name_, ": Wait on an event this device did not record (stream ",
                       event.stream, ", serial ", event.serial, ")"));
    }
    clocks_[stream] = std::max(clocks_[stream], event.seconds);
    return absl::OkStatus();
  }

  absl::StatusOr<double> Synchronize() override {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = *std::max_element(clocks_.begin(), clocks_.end());
    std::fill(clocks_.begin(), clocks_.end(), t);
    floor_ = t;
    h2d_.Forget(t);
    d2h_.Forget(t);
    gpu_engine_.Forget(t);
    return t;
  }

  absl::Status Delay(StreamId stream, double seconds) override {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status st = CheckStream(stream, "Delay");
    if (!st.ok()) return st;
    if (!(seconds >= 0)) return absl::InvalidArgumentError(absl::StrCat(name_, ": negative delay"));
    clocks_[stream] += seconds;
    return absl::OkStatus();
  }

  double StreamTime(StreamId stream) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return ValidStream(stream) ? clocks_[stream] : -1.0;
  }

 private:
  bool ValidStream(StreamId s) const { return s >= 0 && static_cast<size_t>(s) < clocks_.size(); }
  absl::Status CheckStream(StreamId s, const char* op) const {
    if (ValidStream(s)) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(name_, ": ", op, " on unknown stream ", s,
                                                   " (streams 0..", clocks_.size() - 1, ")"));
  }

  absl::Status Copy(StreamId stream, void* dst, const void* src, int64_t bytes, Engine* link,
                    const char* op) {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status st = CheckStream(stream, op);
    if (!st.ok()) return st;
    // Both pointers null: a copy that only takes time (the trace-driven simulator moves no
    // data; the arithmetic of a simulated run reads weights in place).
    if (bytes < 0 || (bytes > 0 && ((dst == nullptr) != (src == nullptr)))) {
      return absl::InvalidArgumentError(
          absl::StrCat(name_, ": ", op, " of ", bytes, " bytes with a null or negative argument"));
    }
    if (bytes > 0 && dst != nullptr) std::memcpy(dst, src, static_cast<size_t>(bytes));
    clocks_[stream] = link->Book(clocks_[stream], CopySeconds(gpu_, static_cast<double>(bytes)));
    Prune();
    return absl::OkStatus();
  }

  // No operation starts before the earliest stream clock, so the engines can forget what
  // ended by then; without it the busy lists of a long run between barriers grow without
  // bound. Every 256 bookings keeps the cost negligible.
  void Prune() {
    if (++bookings_ % 256 != 0) return;
    const double t = *std::min_element(clocks_.begin(), clocks_.end());
    h2d_.Forget(t);
    d2h_.Forget(t);
    gpu_engine_.Forget(t);
  }

  const GpuProfile gpu_;
  const CpuProfile cpu_;
  const std::string name_;

  mutable std::mutex mu_;
  std::vector<double> clocks_;  // [stream]: when the work issued on it ends
  double floor_ = 0;            // the last barrier (Synchronize)
  uint64_t serial_ = 0;
  Engine h2d_, d2h_, gpu_engine_;
  uint64_t bookings_ = 0;
};

absl::Status CheckGpuProfile(const GpuProfile& g) {
  if (g.memory_bytes > 0 && g.pcie_gbps > 0 && g.mem_gbps > 0 && g.tflops > 0 &&
      g.pcie_latency_us >= 0 && g.launch_us >= 0) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("GPU profile '", g.name,
                   "' is incomplete: memory, PCIe and memory bandwidth and TFLOP/s must be > 0"));
}

absl::Status CheckCpuProfile(const CpuProfile& c) {
  if (c.mem_gbps > 0 && c.gflops > 0 && c.overhead_us >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "CPU profile '", c.name,
      "' is incomplete: the simulated device needs its bandwidth and GFLOP/s (> 0) for the "
      "host lane (a built-in profile such as desktop-ddr5, or the calibrated 'host')"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Device>> CreateSimDevice(const SimDeviceOptions& options) {
  absl::Status st = CheckGpuProfile(options.gpu);
  if (!st.ok()) return st;
  st = CheckCpuProfile(options.cpu);
  if (!st.ok()) return st;
  if (options.budget_bytes < 0 || options.budget_bytes > options.gpu.memory_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("sim:", options.gpu.name, ": a memory budget of ", options.budget_bytes,
                     " bytes is outside 0..", options.gpu.memory_bytes, " (the profile's memory)"));
  }
  const int64_t budget =
      options.budget_bytes == 0 ? options.gpu.memory_bytes : options.budget_bytes;
  return std::unique_ptr<Device>(new SimDevice(options, budget));
}

}  // namespace moex
