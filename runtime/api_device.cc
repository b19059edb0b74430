// include/moex/device.h over runtime/device/: the public mirror structs are filled from
// the internal ones, so no internal type reaches the public header.
#include <string>
#include <vector>

#include "moex/device.h"
#include "runtime/device/calibrate.h"
#include "runtime/device/device.h"

namespace moex {
namespace {

GpuProfileInfo ToInfo(const GpuProfile& g) {
  GpuProfileInfo i;
  i.name = g.name;
  i.memory_bytes = g.memory_bytes;
  i.pcie_gbps = g.pcie_gbps;
  i.pcie_latency_us = g.pcie_latency_us;
  i.mem_gbps = g.mem_gbps;
  i.tflops = g.tflops;
  i.launch_us = g.launch_us;
  return i;
}

CpuProfileInfo ToInfo(const CpuProfile& c) {
  CpuProfileInfo i;
  i.name = c.name;
  i.mem_gbps = c.mem_gbps;
  i.gflops = c.gflops;
  i.cores = c.cores;
  i.overhead_us = c.overhead_us;
  return i;
}

GpuProfile FromInfo(const GpuProfileInfo& i) {
  GpuProfile g;
  g.name = i.name;
  g.memory_bytes = i.memory_bytes;
  g.pcie_gbps = i.pcie_gbps;
  g.pcie_latency_us = i.pcie_latency_us;
  g.mem_gbps = i.mem_gbps;
  g.tflops = i.tflops;
  g.launch_us = i.launch_us;
  return g;
}

CpuProfile FromInfo(const CpuProfileInfo& i) {
  CpuProfile c;
  c.name = i.name;
  c.mem_gbps = i.mem_gbps;
  c.gflops = i.gflops;
  c.cores = i.cores;
  c.overhead_us = i.overhead_us;
  return c;
}

}  // namespace

std::vector<GpuProfileInfo> ListGpuProfiles() {
  std::vector<GpuProfileInfo> out;
  for (const GpuProfile& g : AllGpuProfiles()) out.push_back(ToInfo(g));
  return out;
}

std::vector<CpuProfileInfo> ListCpuProfiles() {
  std::vector<CpuProfileInfo> out;
  for (const CpuProfile& c : AllCpuProfiles()) out.push_back(ToInfo(c));
  return out;
}

absl::StatusOr<GpuProfileInfo> LookupGpuProfile(const std::string& name) {
  absl::StatusOr<GpuProfile> g = FindGpuProfile(name);
  if (!g.ok()) return g.status();
  return ToInfo(*g);
}

absl::StatusOr<CpuProfileInfo> LookupCpuProfile(const std::string& name) {
  absl::StatusOr<CpuProfile> c = FindCpuProfile(name);
  if (!c.ok()) return c.status();
  return ToInfo(*c);
}

absl::Status LoadProfiles(const std::string& path) { return LoadProfileFile(path); }

std::string FormatProfiles(const std::vector<GpuProfileInfo>& gpus,
                           const std::vector<CpuProfileInfo>& cpus) {
  std::string out;
  for (const GpuProfileInfo& g : gpus) out += FormatGpuProfile(FromInfo(g)) + "\n";
  for (const CpuProfileInfo& c : cpus) out += FormatCpuProfile(FromInfo(c)) + "\n";
  return out;
}

absl::StatusOr<CalibrationResult> Calibrate(const CalibrateOptions& options) {
  CalibrationOptions o;
  o.hidden = options.hidden;
  o.ffn = options.ffn;
  o.type = options.type;
  o.batch = options.batch;
  o.fresh = options.fresh;
  o.cache_dir = options.cache_dir;
  o.gpu = options.gpu;
  o.buffer_bytes = options.buffer_bytes;
  if (options.progress) {
    o.progress = [&options](std::string_view line) { options.progress(std::string(line)); };
  }
  absl::StatusOr<Calibration> c = RunCalibration(o);
  if (!c.ok()) return c.status();
  CalibrationResult r;
  r.cpu_model = c->cpu.model;
  r.cpu_threads = c->cpu.threads;
  r.cpu_mem_gbps = c->cpu.mem_gbps;
  r.expert_bytes = c->cpu.expert_bytes;
  r.cpu_expert_us_t1 = c->cpu.expert_us_t1;
  r.cpu_expert_us_tn = c->cpu.expert_us_tn;
  r.batch = c->cpu.batch;
  r.model_expert_us_t1 = c->cpu.model_us_t1;
  r.model_expert_us_tn = c->cpu.model_us_tn;
  r.host = ToInfo(c->cpu.host);
  r.has_gpu = c->has_gpu;
  r.no_gpu_reason = c->no_gpu_reason;
  if (c->has_gpu) {
    r.gpu_device = c->gpu.device;
    r.gpu_h2d_gbps = c->gpu.h2d_gbps;
    r.gpu_h2d_latency_us = c->gpu.h2d_latency_us;
    r.gpu_mem_gbps = c->gpu.mem_gbps;
    r.gpu_launch_us = c->gpu.launch_us;
    r.gpu_expert_us_t1 = c->gpu.expert_us_t1;
    r.gpu_expert_us_tn = c->gpu.expert_us_tn;
    r.gpu = ToInfo(c->gpu.profile);
  }
  r.cached = c->cached;
  r.cache_path = c->cache_path;
  return r;
}

}  // namespace moex
