// Devices and calibration: the GPU and CPU profiles moex's cost model and simulated GPU
// use (`--device sim:PROFILE`, `--cpu-profile NAME`), and the measurement of this machine
// (`moex calibrate`). docs/DEVICE.md explains the time model and every profile number.
//
//   for (const moex::GpuProfileInfo& g : moex::ListGpuProfiles()) ...
//   moex::CalibrateOptions o;  o.hidden = 2048;  o.ffn = 768;  o.type = "q4_K";
//   auto r = moex::Calibrate(o);   // r->host: the "host" CPU profile; cached per machine
//
// Thread-safe free functions; Calibrate uses every core while it measures.
#ifndef MOEX_DEVICE_H_
#define MOEX_DEVICE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex {

struct GpuProfileInfo {
  std::string name;          // "rtx4060-8g"
  int64_t memory_bytes = 0;  // device memory a process can use
  double pcie_gbps = 0;      // sustained pinned host-to-device copy rate, GB/s
  double pcie_latency_us = 0;
  double mem_gbps = 0;  // sustained device memory bandwidth, GB/s
  double tflops = 0;    // dense FP16 tensor throughput (FP32 accumulation), TFLOP/s
  double launch_us = 0;
};

struct CpuProfileInfo {
  std::string name;     // "desktop-ddr5", "host"
  double mem_gbps = 0;  // sustained streaming read bandwidth, GB/s
  double gflops = 0;    // quantised integer GEMM throughput over all cores, GFLOP/s
  int cores = 0;
  double overhead_us = 0;  // fixed cost of one expert
};

// The built-in profiles (in file order) followed by those LoadProfiles added.
std::vector<GpuProfileInfo> ListGpuProfiles();
std::vector<CpuProfileInfo> ListCpuProfiles();
// kNotFound listing the known names.
absl::StatusOr<GpuProfileInfo> LookupGpuProfile(const std::string& name);
absl::StatusOr<CpuProfileInfo> LookupCpuProfile(const std::string& name);
// Adds the profiles of a file in the profiles.ini format (a `moex calibrate
// --save-profile` output); one with a known name replaces it for this process. Errors name
// the file, line and key; a bad file adds nothing.
absl::Status LoadProfiles(const std::string& path);
// The profiles as profiles.ini sections (what LoadProfiles reads).
std::string FormatProfiles(const std::vector<GpuProfileInfo>& gpus,
                           const std::vector<CpuProfileInfo>& cpus);

struct CalibrateOptions {
  // The expert to time on the CPU: gate and up (ffn x hidden), down (hidden x ffn), of
  // this ggml type (q4_0, q8_0, q4_K, q5_K, q6_K, f16, ...); both widths a multiple of the
  // type's block.
  int64_t hidden = 2048;
  int64_t ffn = 768;
  std::string type = "q4_K";
  int64_t batch = 32;     // tokens of the batched (prefill) measurement
  bool fresh = false;     // measure even when this machine's result for the shape is cached
  std::string cache_dir;  // "": $XDG_CACHE_HOME/moex, else ~/.cache/moex
  bool gpu = true;        // also measure CUDA device 0 when there is one
  // Smaller than the default (512 MiB) makes a quick, less exact measurement (tests).
  int64_t buffer_bytes = int64_t{512} << 20;
  std::function<void(const std::string&)> progress;  // one line per step
};

struct CalibrationResult {
  std::string cpu_model;  // from /proc/cpuinfo
  int cpu_threads = 0;
  double cpu_mem_gbps = 0;      // measured streaming read bandwidth
  int64_t expert_bytes = 0;     // one expert's weights
  double cpu_expert_us_t1 = 0;  // one expert, one token
  double cpu_expert_us_tn = 0;  // one expert, `batch` tokens
  int64_t batch = 0;
  double model_expert_us_t1 = 0;  // what the fitted host profile predicts for the two
  double model_expert_us_tn = 0;
  CpuProfileInfo host;  // "host": fitted so the cost model gives the measured times

  bool has_gpu = false;
  std::string no_gpu_reason;
  std::string gpu_device;  // the driver's name for it
  double gpu_h2d_gbps = 0, gpu_h2d_latency_us = 0, gpu_mem_gbps = 0, gpu_launch_us = 0;
  // The same expert as cpu_expert_us_* on the GPU (0 when its type has no CUDA kernel).
  double gpu_expert_us_t1 = 0, gpu_expert_us_tn = 0;
  GpuProfileInfo gpu;  // the measured numbers; tflops estimated from SMs x clock

  bool cached = false;     // read from the cache rather than measured now
  std::string cache_path;  // "" when the cache could not be written
};

absl::StatusOr<CalibrationResult> Calibrate(const CalibrateOptions& options);

}  // namespace moex

#endif  // MOEX_DEVICE_H_
