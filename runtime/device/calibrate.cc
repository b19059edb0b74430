// Calibration (calibrate.h): CPU bandwidth and expert times, GPU copy and memory rates,
// and the per-machine cache of the results.
#include "runtime/device/calibrate.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels_cpu/ops.h"
#include "kernels_cpu/quant.h"
#ifdef MOEX_HAVE_CUDA
#include "kernels_cuda/cuda_ops.h"
#include "kernels_cuda/cuda_runtime_wrap.h"
#endif

namespace moex {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void Progress(const CalibrationOptions& o, const std::string& line) {
  if (o.progress) o.progress(line);
}

// Physical cores (distinct physical id / core id pairs of /proc/cpuinfo); the thread
// count when the file does not say.
int PhysicalCores() {
  std::ifstream in("/proc/cpuinfo");
  std::set<std::pair<std::string, std::string>> cores;
  std::string line, phys = "0";
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string k = line.substr(0, colon), v = line.substr(colon + 1);
    absl::StripAsciiWhitespace(&k);
    absl::StripAsciiWhitespace(&v);
    if (k == "physical id") phys = v;
    if (k == "core id") cores.insert({phys, v});
  }
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return cores.empty() ? threads : std::min(threads, static_cast<int>(cores.size()));
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// A buffer of `n` bytes with the expert's weights repeated: the copies have distinct
// addresses, so cycling through them reads DRAM as a decode step does, not the cache.
struct ExpertWeights {
  int64_t gate_up_row = 0, down_row = 0;  // bytes of a row
  int64_t bytes = 0;                      // one expert: gate + up + down
  std::vector<uint8_t> data;              // `copies` experts, `bytes` apart
  int64_t copies = 0;
};

absl::StatusOr<ExpertWeights> MakeExperts(const kcpu::TypeTraits& t, int64_t hidden, int64_t ffn,
                                          int64_t total_bytes) {
  ExpertWeights w;
  w.gate_up_row = kcpu::RowBytes(t, hidden);
  w.down_row = kcpu::RowBytes(t, ffn);
  w.bytes = 2 * ffn * w.gate_up_row + hidden * w.down_row;
  w.copies = std::max<int64_t>(2, (total_bytes + w.bytes - 1) / w.bytes);
  w.data.resize(static_cast<size_t>(w.bytes * w.copies));
  std::mt19937 rng(12345);
  std::normal_distribution<float> dist(0.f, 0.02f);
  std::vector<float> row(static_cast<size_t>(std::max(hidden, ffn)));
  uint8_t* p = w.data.data();
  for (int64_t r = 0; r < 2 * ffn; ++r, p += w.gate_up_row) {
    for (int64_t i = 0; i < hidden; ++i) row[i] = dist(rng);
    kcpu::QuantizeRow(t.type, row.data(), p, hidden);
  }
  for (int64_t r = 0; r < hidden; ++r, p += w.down_row) {
    for (int64_t i = 0; i < ffn; ++i) row[i] = dist(rng);
    kcpu::QuantizeRow(t.type, row.data(), p, ffn);
  }
  for (int64_t c = 1; c < w.copies; ++c) {
    std::memcpy(w.data.data() + c * w.bytes, w.data.data(), static_cast<size_t>(w.bytes));
  }
  return w;
}

// Seconds per expert at `n` tokens: gate and up products, SwiGLU, down product, cycling
// through the copies; the best of three rounds of at least `min_seconds` each (other
// processes on the machine only ever make a round slower).
double TimeExpert(const ExpertWeights& w, kcpu::GgmlType type, int64_t hidden, int64_t ffn,
                  int64_t n, double min_seconds) {
  std::vector<float> x(static_cast<size_t>(n * hidden)), gate(static_cast<size_t>(n * ffn)),
      up(gate.size()), out(x.size());
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (float& v : x) v = dist(rng);
  int64_t next = 0;
  auto run_one = [&] {
    const uint8_t* e = w.data.data() + (next++ % w.copies) * w.bytes;
    kcpu::MatMul(type, e, ffn, hidden, x.data(), n, gate.data());
    kcpu::MatMul(type, e + ffn * w.gate_up_row, ffn, hidden, x.data(), n, up.data());
    kcpu::SwiGlu(gate.data(), up.data(), n * ffn);
    kcpu::MatMul(type, e + 2 * ffn * w.gate_up_row, hidden, ffn, gate.data(), n, out.data());
  };
  for (int i = 0; i < 3; ++i) run_one();  // thread pool and buffers warm
  double best = 1e30;
  for (int round = 0; round < 3; ++round) {
    int64_t count = 0;
    const Clock::time_point t0 = Clock::now();
    double elapsed = 0;
    do {
      run_one();
      ++count;
      elapsed = SecondsSince(t0);
    } while (elapsed < min_seconds || count < 4);
    best = std::min(best, elapsed / static_cast<double>(count));
  }
  return best;
}

// ---- the cache ------------------------------------------------------------------------

std::string Fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

std::string Serialize(const Calibration& c) {
  std::string s = "# moex calibration cache (moex calibrate); delete to measure again\n";
  auto kv = [&s](const std::string& k, const std::string& v) { s += k + " = " + v + "\n"; };
  kv("key", c.key);
  kv("cpu_model", c.cpu.model);
  kv("cpu_threads", std::to_string(c.cpu.threads));
  kv("cpu_mem_gbps", Fmt(c.cpu.mem_gbps));
  kv("expert_bytes", std::to_string(c.cpu.expert_bytes));
  kv("expert_flops_per_token", Fmt(c.cpu.expert_flops_per_token));
  kv("expert_us_t1", Fmt(c.cpu.expert_us_t1));
  kv("expert_us_tn", Fmt(c.cpu.expert_us_tn));
  kv("batch", std::to_string(c.cpu.batch));
  kv("host_cores", std::to_string(c.cpu.host.cores));
  kv("has_gpu", c.has_gpu ? "1" : "0");
  kv("no_gpu_reason", c.no_gpu_reason);
  if (c.has_gpu) {
    kv("gpu_device", c.gpu.device);
    kv("gpu_h2d_gbps", Fmt(c.gpu.h2d_gbps));
    kv("gpu_h2d_latency_us", Fmt(c.gpu.h2d_latency_us));
    kv("gpu_mem_gbps", Fmt(c.gpu.mem_gbps));
    kv("gpu_launch_us", Fmt(c.gpu.launch_us));
    kv("gpu_expert_us_t1", Fmt(c.gpu.expert_us_t1));
    kv("gpu_expert_us_tn", Fmt(c.gpu.expert_us_tn));
    kv("gpu_name", c.gpu.profile.name);
    kv("gpu_memory_bytes", std::to_string(c.gpu.profile.memory_bytes));
    kv("gpu_tflops", Fmt(c.gpu.profile.tflops));
  }
  return s;
}

// Reads a cache file back; false when it is absent, for another key, or damaged (then it
// is measured again and overwritten).
bool Deserialize(const std::string& text, const std::string& key, Calibration* c) {
  std::map<std::string, std::string> m;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t eq = line.find(" = ");
    if (eq == std::string::npos) return false;
    m[line.substr(0, eq)] = line.substr(eq + 3);
  }
  if (m["key"] != key) return false;
  bool ok = true;
  auto num = [&](const char* k) {
    double v = 0;
    if (!absl::SimpleAtod(m[k], &v) || !std::isfinite(v)) ok = false;
    return v;
  };
  c->key = key;
  c->cpu.model = m["cpu_model"];
  c->cpu.threads = static_cast<int>(num("cpu_threads"));
  c->cpu.mem_gbps = num("cpu_mem_gbps");
  c->cpu.expert_bytes = static_cast<int64_t>(num("expert_bytes"));
  c->cpu.expert_flops_per_token = num("expert_flops_per_token");
  c->cpu.expert_us_t1 = num("expert_us_t1");
  c->cpu.expert_us_tn = num("expert_us_tn");
  c->cpu.batch = static_cast<int64_t>(num("batch"));
  c->cpu.host.cores = static_cast<int>(num("host_cores"));
  c->has_gpu = m["has_gpu"] == "1";
  c->no_gpu_reason = m["no_gpu_reason"];
  if (c->has_gpu) {
    c->gpu.device = m["gpu_device"];
    c->gpu.h2d_gbps = num("gpu_h2d_gbps");
    c->gpu.h2d_latency_us = num("gpu_h2d_latency_us");
    c->gpu.mem_gbps = num("gpu_mem_gbps");
    c->gpu.launch_us = num("gpu_launch_us");
    c->gpu.expert_us_t1 = num("gpu_expert_us_t1");
    c->gpu.expert_us_tn = num("gpu_expert_us_tn");
    c->gpu.profile.name = m["gpu_name"];
    c->gpu.profile.memory_bytes = static_cast<int64_t>(num("gpu_memory_bytes"));
    c->gpu.profile.tflops = num("gpu_tflops");
  }
  return ok && c->cpu.mem_gbps > 0 && c->cpu.expert_us_t1 > 0 && c->cpu.expert_us_tn > 0 &&
         c->cpu.batch > 0 && c->cpu.host.cores > 0;
}

// What follows from the measured numbers (the fit, the GPU profile), so a cached result
// and a fresh one are completed the same way.
void Complete(Calibration* c) {
  CpuCalibration& cpu = c->cpu;
  cpu.host =
      FitCpuProfile("host", cpu.mem_gbps, cpu.host.cores, static_cast<double>(cpu.expert_bytes),
                    cpu.expert_flops_per_token, cpu.expert_us_t1, cpu.expert_us_tn, cpu.batch);
  cpu.model_us_t1 = 1e6 * CpuWorkSeconds(cpu.host, static_cast<double>(cpu.expert_bytes),
                                         cpu.expert_flops_per_token);
  cpu.model_us_tn =
      1e6 * CpuWorkSeconds(cpu.host, static_cast<double>(cpu.expert_bytes),
                           cpu.expert_flops_per_token * static_cast<double>(cpu.batch));
  if (c->has_gpu) {
    GpuProfile& g = c->gpu.profile;
    g.pcie_gbps = c->gpu.h2d_gbps;
    g.pcie_latency_us = c->gpu.h2d_latency_us;
    g.mem_gbps = c->gpu.mem_gbps;
    g.launch_us = c->gpu.launch_us;
  }
}

#ifdef MOEX_HAVE_CUDA
// A profile name from the device's: "NVIDIA GeForce RTX 4060" -> "nvidia-geforce-rtx-4060".
std::string ProfileName(const std::string& device) {
  std::string out;
  for (char c : device) {
    if (absl::ascii_isalnum(static_cast<unsigned char>(c))) {
      out += absl::ascii_tolower(static_cast<unsigned char>(c));
    } else if (!out.empty() && out.back() != '-') {
      out += '-';
    }
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out.empty() ? "gpu" : out;
}

// Dense FP16 tensor FLOP per clock per SM with FP32 accumulation (profiles.ini's rule):
// A100 2048, H100 4096, GeForce Ampere/Ada/Blackwell 512.
double TensorFlopsPerClockPerSm(int major, int minor) {
  if (major == 8 && minor == 0) return 2048;
  if (major == 9 || major == 10) return 4096;
  return 512;
}

// Frees what the GPU measurement allocated, whichever way it leaves.
struct CudaScratch {
  void* pinned = nullptr;
  void* a = nullptr;
  void* b = nullptr;
  void* stream = nullptr;
  void* e0 = nullptr;
  void* e1 = nullptr;
  void *experts = nullptr, *x = nullptr, *gate = nullptr, *up = nullptr, *out = nullptr;
  ~CudaScratch() {
    if (stream) kcuda::CudaStreamSynchronize(stream);
    if (e0) kcuda::CudaEventDestroy(e0);
    if (e1) kcuda::CudaEventDestroy(e1);
    if (stream) kcuda::CudaStreamDestroy(stream);
    if (a) kcuda::CudaFree(a);
    if (b) kcuda::CudaFree(b);
    if (pinned) kcuda::CudaFreeHost(pinned);
    for (void* p : {experts, x, gate, up, out}) {
      if (p) kcuda::CudaFree(p);
    }
  }
};

// Measures GPU `index`; "" on success, else why not (then has_gpu stays false). `w`: the
// CPU measurement's expert copies, timed on the GPU too when kernels_cuda reads the type.
std::string MeasureGpu(const CalibrationOptions& o, const ExpertWeights& w,
                       const kcpu::TypeTraits& t, Calibration* c) {
  int count = 0;
  std::string err = kcuda::CudaGetDeviceCount(&count);
  if (!err.empty()) return err;
  if (count <= o.gpu_index) return "no CUDA device " + std::to_string(o.gpu_index);
  err = kcuda::CudaSetDevice(o.gpu_index);
  if (err.empty()) err = kcuda::CudaDeviceName(o.gpu_index, &c->gpu.device);
  int sms = 0, clock_khz = 0, major = 0, minor = 0;
  if (err.empty()) err = kcuda::CudaDeviceShape(o.gpu_index, &sms, &clock_khz, &major, &minor);
  size_t free_b = 0, total_b = 0;
  if (err.empty()) err = kcuda::CudaMemGetInfo(&free_b, &total_b);
  if (!err.empty()) return err;
  Progress(o, "GPU: " + c->gpu.device + ": pinned host-to-device copies");
  constexpr size_t kBig = 64 << 20, kSmall = 4096, kD2D = 256 << 20;
  CudaScratch s;
  err = kcuda::CudaMallocHost(&s.pinned, kBig);
  if (err.empty()) err = kcuda::CudaMalloc(&s.a, kD2D);
  if (err.empty()) err = kcuda::CudaMalloc(&s.b, kD2D);
  if (err.empty()) err = kcuda::CudaStreamCreate(&s.stream);
  if (err.empty()) err = kcuda::CudaEventCreate(&s.e0);
  if (err.empty()) err = kcuda::CudaEventCreate(&s.e1);
  if (!err.empty()) return err;
  std::memset(s.pinned, 1, kBig);
  // Seconds per operation of `reps` back-to-back operations, best of 3.
  auto timed = [&](int reps, const std::function<std::string()>& op, double* seconds) {
    *seconds = 1e30;
    for (int round = 0; round < 3; ++round) {
      std::string e = kcuda::CudaEventRecord(s.e0, s.stream);
      for (int i = 0; i < reps && e.empty(); ++i) e = op();
      if (e.empty()) e = kcuda::CudaEventRecord(s.e1, s.stream);
      if (e.empty()) e = kcuda::CudaEventSynchronize(s.e1);
      float ms = 0;
      if (e.empty()) e = kcuda::CudaEventElapsedMs(s.e0, s.e1, &ms);
      if (!e.empty()) return e;
      *seconds = std::min(*seconds, ms * 1e-3 / reps);
    }
    return std::string();
  };
  double t_small = 0, t_big = 0, t_d2d = 0, t_launch = 0;
  err = timed(
      8, [&] { return kcuda::CudaMemcpyH2DAsync(s.a, s.pinned, kBig, s.stream); }, &t_big);
  if (err.empty()) {
    err = timed(
        200, [&] { return kcuda::CudaMemcpyH2DAsync(s.a, s.pinned, kSmall, s.stream); }, &t_small);
  }
  if (err.empty()) {
    Progress(o, "GPU: device memory bandwidth and launch cost");
    err = timed(
        10, [&] { return kcuda::CudaMemcpyD2DAsync(s.b, s.a, kD2D, s.stream); }, &t_d2d);
  }
  if (err.empty())
    err = timed(
        1000, [&] { return kcuda::CudaLaunchEmpty(s.stream); }, &t_launch);
  if (!err.empty()) return err;
  // One expert at 1 and `batch` tokens with the forward pass's kernels (gate and up
  // products, SwiGLU, down product), cycling through the copies so that every expert is
  // read from device memory, not the L2.
  if (kcuda::IsSupportedWeightType(t.type)) {
    Progress(o, absl::StrCat("GPU: one ", t.name, " expert at 1 and ", o.batch, " tokens"));
    const int64_t n_max = std::max<int64_t>(1, o.batch);
    err = kcuda::CudaMalloc(&s.experts, w.data.size());
    if (err.empty()) err = kcuda::CudaMalloc(&s.x, n_max * o.hidden * 4);
    if (err.empty()) err = kcuda::CudaMalloc(&s.gate, n_max * o.ffn * 4);
    if (err.empty()) err = kcuda::CudaMalloc(&s.up, n_max * o.ffn * 4);
    if (err.empty()) err = kcuda::CudaMalloc(&s.out, n_max * o.hidden * 4);
    if (err.empty()) {
      err = kcuda::CudaMemcpyH2DAsync(s.experts, w.data.data(), w.data.size(), s.stream);
    }
    if (err.empty()) err = kcuda::CudaMemsetAsync(s.x, 0, n_max * o.hidden * 4, s.stream);
    int64_t next = 0;
    int64_t n = 1;
    auto expert = [&]() -> std::string {
      const auto* e = static_cast<const uint8_t*>(s.experts) + (next++ % w.copies) * w.bytes;
      auto* x = static_cast<const float*>(s.x);
      auto* g = static_cast<float*>(s.gate);
      std::string e1 = kcuda::MatMul(t.type, e, o.ffn, o.hidden, x, n, g, s.stream);
      if (e1.empty()) {
        e1 = kcuda::MatMul(t.type, e + o.ffn * w.gate_up_row, o.ffn, o.hidden, x, n,
                           static_cast<float*>(s.up), s.stream);
      }
      if (e1.empty()) e1 = kcuda::SwiGlu(g, static_cast<float*>(s.up), n * o.ffn, s.stream);
      if (e1.empty()) {
        e1 = kcuda::MatMul(t.type, e + 2 * o.ffn * w.gate_up_row, o.hidden, o.ffn, g, n,
                           static_cast<float*>(s.out), s.stream);
      }
      return e1;
    };
    const int reps = static_cast<int>(std::max<int64_t>(w.copies, 8));
    double t1 = 0, tn = 0;
    if (err.empty()) err = timed(reps, expert, &t1);
    n = n_max;
    if (err.empty()) err = timed(reps, expert, &tn);
    if (!err.empty()) return err;
    c->gpu.expert_us_t1 = t1 * 1e6;
    c->gpu.expert_us_tn = tn * 1e6;
  }
  // Two sizes give the line t = latency + bytes / rate.
  const double rate = static_cast<double>(kBig - kSmall) / std::max(t_big - t_small, 1e-9);
  c->gpu.h2d_gbps = rate / 1e9;
  c->gpu.h2d_latency_us = std::max(0.0, (t_small - kSmall / rate) * 1e6);
  c->gpu.mem_gbps = 2.0 * kD2D / t_d2d / 1e9;  // a copy reads and writes every byte
  c->gpu.launch_us = t_launch * 1e6;
  c->gpu.profile.name = ProfileName(c->gpu.device);
  // The whole card less what is already taken (our context, the display, other processes).
  c->gpu.profile.memory_bytes = static_cast<int64_t>(free_b);
  c->gpu.profile.tflops = sms * (clock_khz * 1e3) * TensorFlopsPerClockPerSm(major, minor) / 1e12;
  return std::string();
}
#endif  // MOEX_HAVE_CUDA

}  // namespace

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon == std::string::npos) break;
      std::string v = line.substr(colon + 1);
      absl::StripAsciiWhitespace(&v);
      if (!v.empty()) return v;
    }
  }
  return "unknown CPU";
}

std::string DefaultCalibrationCacheDir() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/moex";
  const char* home = std::getenv("HOME");
  if (home != nullptr && home[0] != '\0') return std::string(home) + "/.cache/moex";
  return "";
}

absl::StatusOr<double> MeasureCpuReadBandwidth(int64_t bytes, int threads, int repeats) {
  if (bytes < (1 << 20) || threads < 1 || repeats < 1) {
    return absl::InvalidArgumentError(absl::StrCat("bandwidth measurement needs >= 1 MiB, ",
                                                   ">= 1 thread and >= 1 repeat (got ", bytes,
                                                   " bytes, ", threads, ", ", repeats, ")"));
  }
  const size_t n = static_cast<size_t>(bytes) / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new (std::nothrow) uint64_t[n]);
  if (!buf) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no memory for a ", bytes, "-byte bandwidth buffer"));
  }
  std::vector<uint64_t> sums(static_cast<size_t>(threads));
  // Each thread touches its own slice first, so on NUMA machines the pages are local.
  auto pass = [&](bool fill) {
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        const size_t b = n * t / threads, e = n * (t + 1) / threads;
        if (fill) {
          for (size_t i = b; i < e; ++i) buf[i] = i;
          return;
        }
        // Independent accumulators let the compiler keep several vector loads in flight.
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t i = b;
        for (; i + 4 <= e; i += 4) {
          s0 += buf[i];
          s1 += buf[i + 1];
          s2 += buf[i + 2];
          s3 += buf[i + 3];
        }
        for (; i < e; ++i) s0 += buf[i];
        sums[t] = s0 + s1 + s2 + s3;
      });
    }
    for (std::thread& th : ts) th.join();
  };
  pass(true);
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    const Clock::time_point t0 = Clock::now();
    pass(false);
    best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / SecondsSince(t0) / 1e9);
  }
  // The sums are checked so the reads cannot be optimised away: sum of 0..n-1.
  uint64_t total = 0;
  for (uint64_t s : sums) total += s;
  if (total != static_cast<uint64_t>(n) * (n - 1) / 2) {
    return absl::InternalError("bandwidth measurement read back a wrong sum");
  }
  return best;
}

CpuProfile FitCpuProfile(std::string name, double mem_gbps, int cores, double expert_bytes,
                         double flops_per_token, double us_t1, double us_tn, int64_t batch) {
  CpuProfile p;
  p.name = std::move(name);
  p.cores = cores;
  const double t1 = us_t1 * 1e-6, tn = us_tn * 1e-6;
  double bw = mem_gbps * 1e9;
  double mem_s = expert_bytes / bw;
  // One token is memory-bound: what the expert takes beyond reading its weights at the
  // streaming rate is the fixed cost. A kernel faster than the streaming figure (weights
  // partly in cache) leaves no fixed cost and sets the rate instead.
  double overhead = t1 - mem_s;
  if (overhead < 0) {
    overhead = 0;
    bw = expert_bytes / t1;
    mem_s = t1;
  }
  // At `batch` tokens what is left beyond the fixed cost is compute when it exceeds the
  // memory time; otherwise compute never bound it and its rate is at least this.
  const double n = static_cast<double>(batch);
  double gflops = flops_per_token * n / std::max(tn - overhead, mem_s) / 1e9;
  // A small expert can be compute-bound at one token already (its weights read in less
  // time than its arithmetic): then both times lie on the compute line, o + n F / g.
  if (flops_per_token / (gflops * 1e9) > mem_s && tn > t1) {
    const double g = (n - 1) * flops_per_token / (tn - t1);
    const double o = t1 - flops_per_token / g;
    if (o >= 0 && flops_per_token / g >= mem_s) {
      gflops = g / 1e9;
      overhead = o;
    }
  }
  p.mem_gbps = bw / 1e9;
  p.gflops = gflops;
  p.overhead_us = overhead * 1e6;
  return p;
}

absl::StatusOr<Calibration> RunCalibration(const CalibrationOptions& o) {
  const kcpu::TypeTraits* t = kcpu::FindTypeTraitsByName(o.type.c_str());
  if (t == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown weight type '", o.type, "'"));
  }
  if (!t->can_quantize) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration cannot make random ", t->name, " weights (no quantiser)"));
  }
  if (o.hidden <= 0 || o.ffn <= 0 || o.hidden % t->block_elems || o.ffn % t->block_elems) {
    return absl::InvalidArgumentError(absl::StrCat("expert shape hidden=", o.hidden, " ffn=", o.ffn,
                                                   " must be positive multiples of ",
                                                   t->block_elems, " (the ", t->name, " block)"));
  }
  if (o.batch < 2 || o.batch > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("batch ", o.batch, " is outside 2..4096"));
  }
  Calibration c;
  c.cpu.model = CpuModelName();
  c.cpu.threads = static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
  c.key = absl::StrCat("cpu=", c.cpu.model, ";threads=", c.cpu.threads, ";hidden=", o.hidden,
                       ";ffn=", o.ffn, ";type=", t->name, ";batch=", o.batch);
#ifdef MOEX_HAVE_CUDA
  if (o.gpu) {
    int count = 0;
    std::string name;
    if (kcuda::CudaGetDeviceCount(&count).empty() && count > o.gpu_index &&
        kcuda::CudaDeviceName(o.gpu_index, &name).empty()) {
      absl::StrAppend(&c.key, ";gpu=", name);
    }
  }
#endif
  const std::string dir = o.cache_dir.empty() ? DefaultCalibrationCacheDir() : o.cache_dir;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(Fnv1a(c.key)));
  const std::string path = dir.empty() ? "" : dir + "/calibration-" + hex + ".txt";
  if (!o.fresh && !path.empty()) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    Calibration cached;
    if (in && Deserialize(ss.str(), c.key, &cached)) {
      cached.cached = true;
      cached.cache_path = path;
      Complete(&cached);
      Progress(o, "using the cached calibration " + path + " (--fresh to measure again)");
      return cached;
    }
  }

  Progress(o, absl::StrCat("CPU: streaming read bandwidth (", c.cpu.threads, " threads)"));
  absl::StatusOr<double> bw = MeasureCpuReadBandwidth(o.buffer_bytes, c.cpu.threads, 5);
  if (!bw.ok()) return bw.status();
  c.cpu.mem_gbps = *bw;

  Progress(o, absl::StrCat("CPU: one ", t->name, " expert ", o.hidden, "x", o.ffn, " at 1 and ",
                           o.batch, " tokens"));
  absl::StatusOr<ExpertWeights> w = MakeExperts(*t, o.hidden, o.ffn, o.buffer_bytes);
  if (!w.ok()) return w.status();
  c.cpu.expert_bytes = w->bytes;
  c.cpu.expert_flops_per_token = 2.0 * 3.0 * static_cast<double>(o.hidden * o.ffn);
  c.cpu.batch = o.batch;
  c.cpu.expert_us_t1 = 1e6 * TimeExpert(*w, t->type, o.hidden, o.ffn, 1, o.min_seconds);
  c.cpu.expert_us_tn = 1e6 * TimeExpert(*w, t->type, o.hidden, o.ffn, o.batch, o.min_seconds);
  c.cpu.host.cores = PhysicalCores();

#ifdef MOEX_HAVE_CUDA
  if (o.gpu) {
    c.no_gpu_reason = MeasureGpu(o, *w, *t, &c);
    c.has_gpu = c.no_gpu_reason.empty();
  } else {
    c.no_gpu_reason = "GPU measurement not asked for";
  }
#else
  c.no_gpu_reason = "moex was built without CUDA";
#endif
  Complete(&c);

  if (!path.empty()) {
    // Best effort: a read-only home only costs a measurement next time.
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    const std::string tmp = path + ".tmp" + std::to_string(::getpid());
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << Serialize(c);
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
      std::filesystem::remove(tmp, ec);
    } else {
      c.cache_path = path;
    }
  }
  return c;
}

}  // namespace moex
