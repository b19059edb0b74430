// The device layer: one interface for where work runs, three implementations.
//
//   cpu   the host itself: "device" memory is host memory, streams run in order on the
//         calling thread, time is the wall clock.
//   cuda  a real GPU through kernels_cuda/ (plain C++ wrappers; no CUDA type here).
//   sim   a simulated GPU: memory is host memory but the byte budget of the profile is
//         enforced exactly; copies and kernels run their host function (so every number is
//         the CPU's, bit for bit) and advance a virtual clock by the cost the profile gives.
//
// Time model (all devices): work is issued on streams; work on one stream runs in order,
// work on different streams may overlap; an Event marks a point of a stream that another
// stream can wait for. The simulated device keeps one virtual clock per stream (seconds
// since Create): an operation starts at max(stream clock, waited events) and ends after its
// cost; host work runs on the host lane (kHostStream) with the CPU profile's costs.
// This is what lets the scheduler, the expert cache and the prefetcher be exercised and
// timed on machines without a GPU (docs/DEVICE.md).
//
// (Added.) Two refinements of the simulated clock, both what the hardware does:
//  - Shared engines. All host-to-device copies share one link (one copy engine per
//    direction, as on GeForce cards), device-to-host copies the other direction, and all
//    GPU kernels share the GPU: an operation starts at max(stream clock, waited events,
//    the earliest gap in its engine's busy time that fits it). Without this, two streams
//    copying at once would each get the whole PCIe bandwidth. Work on one stream only, or
//    on streams that never overlap in time, is unaffected.
//  - Synchronize is a barrier: it sets every stream's clock (the host lane's too) to the
//    latest one, so work issued after it starts no earlier; new streams start there too.
#ifndef MOEX_RUNTIME_DEVICE_DEVICE_H_
#define MOEX_RUNTIME_DEVICE_DEVICE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex {

// ---- profiles ----------------------------------------------------------------------------
// Numbers describing a GPU and its link, and a CPU; from the data file
// runtime/device/profiles.ini (compiled in), a user file, or a calibration run.
struct GpuProfile {
  std::string name;            // "rtx4060-8g"
  int64_t memory_bytes = 0;    // device memory a process can use
  double pcie_gbps = 0;        // sustained pinned host-to-device copy rate, GB/s (1e9 B/s)
  double pcie_latency_us = 0;  // fixed cost of one copy
  double mem_gbps = 0;         // sustained device memory bandwidth, GB/s
  double tflops = 0;           // dense FP16 tensor throughput reachable by our kernels, TFLOP/s
  double launch_us = 0;        // fixed cost of one kernel launch
};

struct CpuProfile {
  std::string name;     // "desktop-ddr5" or "host"
  double mem_gbps = 0;  // sustained streaming read bandwidth, GB/s
  double gflops = 0;    // throughput of the quantised integer GEMM over all cores, GFLOP/s
  int cores = 0;
  double overhead_us = 0;  // fixed cost of one expert on the CPU (dispatch, sync)
};

// Time of one kernel (or one expert) that reads `bytes` and does `flops`: a fixed cost plus
// the larger of the memory and the compute time (roofline). The scheduler's cost model and
// the simulated clock both use these, so a plan's predicted time is the simulated time.
double GpuKernelSeconds(const GpuProfile& gpu, double bytes, double flops);
double CpuWorkSeconds(const CpuProfile& cpu, double bytes, double flops);
double CopySeconds(const GpuProfile& gpu, double bytes);

// The named profiles (built in, from runtime/device/profiles.ini), in file order.
const std::vector<GpuProfile>& BuiltinGpuProfiles();
const std::vector<CpuProfile>& BuiltinCpuProfiles();
// Looks a name up; kNotFound lists the known names.
absl::StatusOr<GpuProfile> FindGpuProfile(std::string_view name);
absl::StatusOr<CpuProfile> FindCpuProfile(std::string_view name);
// Parses a profile file in the profiles.ini format (sections `[gpu NAME]` / `[cpu NAME]`,
// `key = value` lines, `#` comments). Errors name the file, line and key.
absl::Status ParseProfiles(std::string_view text, std::string_view file_name,
                           std::vector<GpuProfile>* gpus, std::vector<CpuProfile>* cpus);
// (Added.) The file's profiles are appended to *gpus / *cpus only when the whole file is
// valid. Rates and memory must be > 0, fixed costs >= 0, cores a positive integer.

// Profiles added at run time from a user file (`--profiles FILE`, a `moex calibrate
// --save-profile` output). Find* and All* search them first: a user profile replaces a
// built-in one of the same name. Thread-safe.
absl::Status AddProfiles(std::string_view text, std::string_view file_name);
absl::Status LoadProfileFile(const std::string& path);
// Built-in plus user-added profiles (user ones replacing built-ins of the same name).
std::vector<GpuProfile> AllGpuProfiles();
std::vector<CpuProfile> AllCpuProfiles();
// One `[gpu NAME]` / `[cpu NAME]` section in the profiles.ini format (ParseProfiles reads
// it back to the same values, to 6 significant digits).
std::string FormatGpuProfile(const GpuProfile& gpu);
std::string FormatCpuProfile(const CpuProfile& cpu);

// ---- the device interface ---------------------------------------------------------------
enum class DeviceKind { kCpu, kCuda, kSim };

using StreamId = int32_t;
inline constexpr StreamId kHostStream = 0;  // host (CPU) work; every device has it

// A point in a stream's work. `seconds` is the completion time on the device's clock
// (virtual for sim, measured for cpu/cuda once the work has finished).
struct Event {
  StreamId stream = -1;
  uint64_t serial = 0;
  double seconds = 0;
};

// Device memory. Moved, never copied; released by Device::Free or when the device goes.
struct DeviceAlloc {
  void* ptr = nullptr;  // device address (host address on cpu/sim)
  int64_t bytes = 0;
  uint64_t id = 0;
};

struct MemoryInfo {
  int64_t budget_bytes = 0;  // what this process may allocate (the --gpu-mem budget)
  int64_t used_bytes = 0;
  int64_t peak_bytes = 0;
  int64_t total_bytes = 0;  // the device's memory (the profile's on sim)
};

// What a kernel costs, for the simulated clock (ignored by cpu and cuda, which measure).
struct WorkCost {
  double bytes = 0;  // bytes read and written
  double flops = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string name()
      const = 0;  // "cpu", "cuda:0 (NVIDIA H100 80GB HBM3)", "sim:rtx4060-8g"

  // Memory within the budget; beyond it kResourceExhausted naming `what`, the request, what
  // is used and the budget. Never over-commits on sim.
  virtual absl::StatusOr<DeviceAlloc> Allocate(int64_t bytes, std::string_view what) = 0;
  virtual void Free(DeviceAlloc& alloc) = 0;
  virtual MemoryInfo memory() const = 0;

  // Page-locked host memory for staging copies (plain host memory on cpu/sim).
  virtual absl::StatusOr<void*> AllocatePinned(int64_t bytes) = 0;
  virtual void FreePinned(void* ptr) = 0;

  // A new stream (ids > kHostStream). Streams live as long as the device.
  virtual absl::StatusOr<StreamId> CreateStream() = 0;

  // Host-to-device copy on `stream`; `src` must stay valid until the stream passes it.
  // sim: dst and src both null is a copy that only takes time (no bytes move), what the
  // trace-driven simulator and the simulated run's expert copies use.
  virtual absl::Status CopyToDevice(StreamId stream, void* dst, const void* src, int64_t bytes) = 0;
  virtual absl::Status CopyToHost(StreamId stream, void* dst, const void* src, int64_t bytes) = 0;

  // Runs `fn` on `stream`. cuda: fn receives the native stream (cudaStream_t as void*) and
  // launches kernels on it; cpu and sim: fn runs now on the calling thread with nullptr and
  // computes on the host; sim then advances the stream's clock by the GPU cost of `cost`
  // (by the CPU profile's cost on kHostStream).
  virtual absl::Status Launch(StreamId stream, const WorkCost& cost,
                              const std::function<absl::Status(void* native_stream)>& fn) = 0;

  virtual absl::StatusOr<Event> Record(StreamId stream) = 0;
  // Later work on `stream` starts after `event`.
  virtual absl::Status Wait(StreamId stream, const Event& event) = 0;
  // Waits for all streams; returns the device clock (seconds since creation; virtual on sim).
  virtual absl::StatusOr<double> Synchronize() = 0;
  // The clock of one stream: when its issued work ends (sim), or now (cpu/cuda).
  virtual double StreamTime(StreamId stream) const = 0;

  // (Added.) When `event` completed, on the device clock. sim and cpu know it at Record
  // (event.seconds); cuda waits for the event and measures it.
  virtual absl::StatusOr<double> EventTime(const Event& event) { return event.seconds; }

  // A latency the caller knows of, with no engine busy meanwhile: `stream`'s later work
  // starts `seconds` later on sim (e.g. the GPU reading activations from mapped pinned host
  // memory: a PCIe round trip that takes no copy engine). cpu and cuda: nothing to do, the
  // real latency happens by itself.
  virtual absl::Status Delay(StreamId stream, double seconds) { return absl::OkStatus(); }
};

struct SimDeviceOptions {
  GpuProfile gpu;
  CpuProfile cpu;
  int64_t budget_bytes = 0;  // 0: the profile's memory
};

std::unique_ptr<Device> CreateCpuDevice();
// (Added.) With a byte budget on Allocate (0: the machine's physical memory).
std::unique_ptr<Device> CreateCpuDevice(int64_t budget_bytes);
absl::StatusOr<std::unique_ptr<Device>> CreateSimDevice(const SimDeviceOptions& options);
// kUnavailable (with the driver's words) when moex was built without CUDA or no GPU is
// present. budget_bytes 0: the free memory at creation.
absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(int index, int64_t budget_bytes);

// The N of "cuda" (0) or "cuda:N"; kInvalidArgument for anything else.
absl::StatusOr<int> ParseCudaDeviceIndex(std::string_view spec);

// "cpu", "cuda", "cuda:N", "sim:PROFILE" (a GPU profile name). For sim, `cpu` is the host
// side's profile and `budget_bytes` the memory budget (0: the profile's).
absl::StatusOr<std::unique_ptr<Device>> CreateDevice(std::string_view spec, const CpuProfile& cpu,
                                                     int64_t budget_bytes);

}  // namespace moex

#endif  // MOEX_RUNTIME_DEVICE_DEVICE_H_
