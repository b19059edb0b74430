// Device and CPU profiles: the cost model, reading profiles.ini (the syntax is
// runtime/core/ini.h's), the built-in table and the registry of user-added profiles.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/core/ini.h"
#include "runtime/core/status_macros.h"
#include "runtime/device/device.h"

namespace moex {
namespace embedded {
extern const char kProfilesIni[];  // profiles.ini, compiled in by moex_embed_text()
}  // namespace embedded

namespace {

// Rates and sizes must be positive; fixed costs may be zero. With `optional` an absent key
// is left alone, so the caller can check every value before it asks for the missing ones.
absl::Status ReadGpu(IniReader& r, bool optional, GpuProfile* g) {
  double memory_gib = static_cast<double>(g->memory_bytes) / 1073741824.0;
  MOEX_RETURN_IF_ERROR(r.Number("memory_gib", &memory_gib, optional, IniRange::kPositive));
  g->memory_bytes = static_cast<int64_t>(std::llround(memory_gib * 1073741824.0));
  MOEX_RETURN_IF_ERROR(r.Number("pcie_gbps", &g->pcie_gbps, optional, IniRange::kPositive));
  MOEX_RETURN_IF_ERROR(
      r.Number("pcie_latency_us", &g->pcie_latency_us, optional, IniRange::kNonNegative));
  MOEX_RETURN_IF_ERROR(r.Number("mem_gbps", &g->mem_gbps, optional, IniRange::kPositive));
  MOEX_RETURN_IF_ERROR(r.Number("tflops", &g->tflops, optional, IniRange::kPositive));
  return r.Number("launch_us", &g->launch_us, optional, IniRange::kNonNegative);
}

absl::Status ReadCpu(IniReader& r, bool optional, CpuProfile* c) {
  MOEX_RETURN_IF_ERROR(r.Number("mem_gbps", &c->mem_gbps, optional, IniRange::kPositive));
  MOEX_RETURN_IF_ERROR(r.Number("gflops", &c->gflops, optional, IniRange::kPositive));
  int32_t cores = c->cores;
  MOEX_RETURN_IF_ERROR(r.Integer("cores", &cores, optional, IniRange::kPositive));
  c->cores = cores;
  return r.Number("overhead_us", &c->overhead_us, optional, IniRange::kNonNegative);
}

// The keys are read twice so that the error is the most specific one: a bad value first
// (at its line), then an unknown key (a misspelt key is reported as such, with the known
// ones, not as the key it was meant to be missing), and only then a missing key.
template <typename P>
absl::Status ReadSection(const IniSection& s, std::string_view file,
                         absl::Status (*read)(IniReader&, bool, P*), std::vector<P>* out) {
  IniReader r(s, file);
  P p;
  p.name = s.name;
  MOEX_RETURN_IF_ERROR(read(r, /*optional=*/true, &p));
  MOEX_RETURN_IF_ERROR(r.Finish());
  MOEX_RETURN_IF_ERROR(read(r, /*optional=*/false, &p));
  out->push_back(std::move(p));
  return absl::OkStatus();
}

std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

// Profiles added at run time (AddProfiles); searched before the built-in ones.
struct Registry {
  std::mutex mu;
  std::vector<GpuProfile> gpus;
  std::vector<CpuProfile> cpus;
};
Registry& UserProfiles() {
  static Registry* r = new Registry;
  return *r;
}

template <typename P>
void Upsert(std::vector<P>& list, const P& p) {
  for (P& q : list) {
    if (q.name == p.name) {
      q = p;
      return;
    }
  }
  list.push_back(p);
}

}  // namespace

double GpuKernelSeconds(const GpuProfile& gpu, double bytes, double flops) {
  const double mem_s = bytes / (gpu.mem_gbps * 1e9);
  const double compute_s = flops / (gpu.tflops * 1e12);
  return gpu.launch_us * 1e-6 + std::max(mem_s, compute_s);
}

double CpuWorkSeconds(const CpuProfile& cpu, double bytes, double flops) {
  const double mem_s = bytes / (cpu.mem_gbps * 1e9);
  const double compute_s = flops / (cpu.gflops * 1e9);
  return cpu.overhead_us * 1e-6 + std::max(mem_s, compute_s);
}

double CopySeconds(const GpuProfile& gpu, double bytes) {
  return gpu.pcie_latency_us * 1e-6 + bytes / (gpu.pcie_gbps * 1e9);
}

absl::Status ParseProfiles(std::string_view text, std::string_view file_name,
                           std::vector<GpuProfile>* gpus, std::vector<CpuProfile>* cpus) {
  // Profile names are typed on command lines (--device sim:NAME), hence plain names.
  const IniFormat format{.kinds = {"gpu", "cpu"}, .plain_names = true};
  MOEX_ASSIGN_OR_RETURN(std::vector<IniSection> sections, ParseIni(text, file_name, format));
  std::vector<GpuProfile> new_gpus;
  std::vector<CpuProfile> new_cpus;
  for (const IniSection& s : sections) {
    absl::Status st = s.kind == "gpu" ? ReadSection(s, file_name, ReadGpu, &new_gpus)
                                      : ReadSection(s, file_name, ReadCpu, &new_cpus);
    if (!st.ok()) return st;
  }
  // Only a wholly valid file changes the caller's lists.
  gpus->insert(gpus->end(), new_gpus.begin(), new_gpus.end());
  cpus->insert(cpus->end(), new_cpus.begin(), new_cpus.end());
  return absl::OkStatus();
}

namespace {

struct Builtins {
  std::vector<GpuProfile> gpus;
  std::vector<CpuProfile> cpus;
};

const Builtins& GetBuiltins() {
  static const Builtins* b = [] {
    auto* out = new Builtins;
    absl::Status st =
        ParseProfiles(embedded::kProfilesIni, "profiles.ini (built in)", &out->gpus, &out->cpus);
    // The file is checked by the build's tests (device_test); a broken one is a build bug.
    if (!st.ok()) {
      std::fprintf(stderr, "moex: internal error: %s\n", std::string(st.message()).c_str());
      std::abort();
    }
    return out;
  }();
  return *b;
}

}  // namespace

const std::vector<GpuProfile>& BuiltinGpuProfiles() { return GetBuiltins().gpus; }
const std::vector<CpuProfile>& BuiltinCpuProfiles() { return GetBuiltins().cpus; }

std::vector<GpuProfile> AllGpuProfiles() {
  std::vector<GpuProfile> out = BuiltinGpuProfiles();
  Registry& r = UserProfiles();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const GpuProfile& g : r.gpus) Upsert(out, g);
  return out;
}

std::vector<CpuProfile> AllCpuProfiles() {
  std::vector<CpuProfile> out = BuiltinCpuProfiles();
  Registry& r = UserProfiles();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const CpuProfile& c : r.cpus) Upsert(out, c);
  return out;
}

absl::StatusOr<GpuProfile> FindGpuProfile(std::string_view name) {
  std::vector<GpuProfile> all = AllGpuProfiles();
  std::vector<std::string> names;
  for (const GpuProfile& g : all) {
    if (g.name == name) return g;
    names.push_back(g.name);
  }
  return absl::NotFoundError(absl::StrCat("no GPU profile '", std::string(name),
                                          "' (known: ", absl::StrJoin(names, ", "), ")"));
}

absl::StatusOr<CpuProfile> FindCpuProfile(std::string_view name) {
  std::vector<CpuProfile> all = AllCpuProfiles();
  std::vector<std::string> names;
  for (const CpuProfile& c : all) {
    if (c.name == name) return c;
    names.push_back(c.name);
  }
  std::string hint;
  if (name == "host") {
    hint =
        "; 'host' is measured by calibration (moex calibrate --save-profile FILE, then "
        "--profiles FILE)";
  }
  return absl::NotFoundError(absl::StrCat("no CPU profile '", std::string(name),
                                          "' (known: ", absl::StrJoin(names, ", "), ")", hint));
}

absl::Status AddProfiles(std::string_view text, std::string_view file_name) {
  std::vector<GpuProfile> gpus;
  std::vector<CpuProfile> cpus;
  absl::Status st = ParseProfiles(text, file_name, &gpus, &cpus);
  if (!st.ok()) return st;
  Registry& r = UserProfiles();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const GpuProfile& g : gpus) Upsert(r.gpus, g);
  for (const CpuProfile& c : cpus) Upsert(r.cpus, c);
  return absl::OkStatus();
}

absl::Status LoadProfileFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open profile file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read profile file ", path));
  return AddProfiles(ss.str(), path);
}

std::string FormatGpuProfile(const GpuProfile& g) {
  return absl::StrCat("[gpu ", g.name, "]\n",
                      "memory_gib = ", Num(static_cast<double>(g.memory_bytes) / 1073741824.0),
                      "\npcie_gbps = ", Num(g.pcie_gbps),
                      "\npcie_latency_us = ", Num(g.pcie_latency_us),
                      "\nmem_gbps = ", Num(g.mem_gbps), "\ntflops = ", Num(g.tflops),
                      "\nlaunch_us = ", Num(g.launch_us), "\n");
}

std::string FormatCpuProfile(const CpuProfile& c) {
  return absl::StrCat("[cpu ", c.name, "]\n", "mem_gbps = ", Num(c.mem_gbps),
                      "\ngflops = ", Num(c.gflops), "\ncores = ", c.cores,
                      "\noverhead_us = ", Num(c.overhead_us), "\n");
}

}  // namespace moex
