// Calibration: measures this machine so the cost model (device.h) describes it. The CPU
// side becomes the "host" CpuProfile (streaming bandwidth, the time of one expert of the
// model's shape and type at 1 and 32 tokens, fitted to CpuWorkSeconds); with a CUDA GPU,
// the pinned host-to-device copy rate and latency, the device memory bandwidth and the
// launch cost become a GpuProfile. Results are cached per machine and shape.
// Thread-safety: Calibrate may run concurrently with itself only with different cache
// files; it uses all cores while it measures.
#ifndef MOEX_RUNTIME_DEVICE_CALIBRATE_H_
#define MOEX_RUNTIME_DEVICE_CALIBRATE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "runtime/device/device.h"

namespace moex {

struct CalibrationOptions {
  int64_t hidden = 2048;      // the expert's input/output width (Qwen3-30B-A3B: 2048)
  int64_t ffn = 768;          // the expert's intermediate width (Qwen3-30B-A3B: 768)
  std::string type = "q4_K";  // ggml type name of the expert weights
  int64_t batch = 32;         // tokens of the GEMM measurement
  // Bytes of the bandwidth buffer and of the expert copies cycled through: far beyond the
  // caches, so the measurements read DRAM (tests use less to be quick).
  int64_t buffer_bytes = int64_t{512} << 20;
  double min_seconds = 0.15;  // per timing round (3 rounds, the best kept)
  bool fresh = false;         // measure even when a cached result exists
  std::string cache_dir;      // "": $XDG_CACHE_HOME/moex, else ~/.cache/moex
  bool gpu = true;            // measure GPU 0 when moex has CUDA and a device is present
  int gpu_index = 0;
  std::function<void(std::string_view)> progress;  // one line per step (may be empty)
};

struct CpuCalibration {
  std::string model;         // "AMD EPYC 7B13" (/proc/cpuinfo), the cache key's first part
  int threads = 0;           // threads the measurements used
  double mem_gbps = 0;       // streaming read bandwidth, all threads
  int64_t expert_bytes = 0;  // gate + up + down weights of one expert
  double expert_flops_per_token = 0;
  double expert_us_t1 = 0;  // one expert at 1 token (gate, up, SwiGLU, down)
  double expert_us_tn = 0;  // one expert at `batch` tokens
  int64_t batch = 0;
  double model_us_t1 = 0;  // CpuWorkSeconds(host, ...) for both: how well the fit holds
  double model_us_tn = 0;
  CpuProfile host;  // name "host"
};

struct GpuCalibration {
  std::string device;   // "NVIDIA H100 80GB HBM3"
  double h2d_gbps = 0;  // pinned host-to-device
  double h2d_latency_us = 0;
  double mem_gbps = 0;  // device-to-device copy, read + write bytes
  double launch_us = 0;
  // One expert of the measured shape and type with the forward pass's kernels, at 1 and
  // `batch` tokens (0 when kernels_cuda has no kernel for the type).
  double expert_us_t1 = 0, expert_us_tn = 0;
  GpuProfile profile;  // tflops: estimated from SMs x clock (not measured)
};

struct Calibration {
  std::string key;  // what the cache entry is for (CPU model, threads, shape, type, GPU)
  CpuCalibration cpu;
  bool has_gpu = false;
  std::string no_gpu_reason;  // why has_gpu is false
  GpuCalibration gpu;
  bool cached = false;     // read from the cache, not measured now
  std::string cache_path;  // the cache file read or written ("" when it could not be)
};

absl::StatusOr<Calibration> RunCalibration(const CalibrationOptions& options);

// The pieces, for tests and tools.
std::string CpuModelName();
std::string DefaultCalibrationCacheDir();
// Best of `repeats` parallel reads of a `bytes` buffer by `threads` threads, GB/s.
absl::StatusOr<double> MeasureCpuReadBandwidth(int64_t bytes, int threads, int repeats);
// Fits a CpuProfile named `name` to the measurements (bandwidth, expert times): see
// docs/DEVICE.md "Calibration".
CpuProfile FitCpuProfile(std::string name, double mem_gbps, int cores, double expert_bytes,
                         double flops_per_token, double us_t1, double us_tn, int64_t batch);

}  // namespace moex

#endif  // MOEX_RUNTIME_DEVICE_CALIBRATE_H_
