// Device and CPU profiles: the cost model, the profiles.ini parser, the built-in table and
// the registry of user-added profiles.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/device/device.h"

namespace moex {
namespace device_internal {
extern const char kBuiltinProfilesIni[];  // profiles_data.cc, generated from profiles.ini
}  // namespace device_internal

namespace {

// What a key may hold: rates and sizes must be positive, fixed costs may be zero.
enum class KeyRule { kPositive, kNonNegative, kPositiveInt };

struct KeySpec {
  const char* name;
  KeyRule rule;
};

constexpr KeySpec kGpuKeys[] = {
    {"memory_gib", KeyRule::kPositive},
    {"pcie_gbps", KeyRule::kPositive},
    {"pcie_latency_us", KeyRule::kNonNegative},
    {"mem_gbps", KeyRule::kPositive},
    {"tflops", KeyRule::kPositive},
    {"launch_us", KeyRule::kNonNegative},
};
constexpr KeySpec kCpuKeys[] = {
    {"mem_gbps", KeyRule::kPositive},
    {"gflops", KeyRule::kPositive},
    {"cores", KeyRule::kPositiveInt},
    {"overhead_us", KeyRule::kNonNegative},
};

template <size_t N>
std::string KeyList(const KeySpec (&keys)[N]) {
  std::vector<std::string> names;
  for (const KeySpec& k : keys) names.emplace_back(k.name);
  return absl::StrJoin(names, ", ");
}

// absl::StripAsciiWhitespace takes Debian Abseil's own string_view, not std::string_view.
std::string_view Strip(std::string_view s) {
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.front()))) {
    s.remove_prefix(1);
  }
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.back()))) {
    s.remove_suffix(1);
  }
  return s;
}

bool ValidName(std::string_view name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return false;
    }
  }
  return true;
}

// One section being read: its kind, name, the line it opened on and the values seen.
struct Section {
  bool gpu = false;
  std::string name;
  int line = 0;
  std::vector<std::pair<std::string, double>> values;
};

absl::Status FinishSection(const Section& s, std::string_view file, std::vector<GpuProfile>* gpus,
                           std::vector<CpuProfile>* cpus) {
  auto get = [&](const char* key, double* out) -> absl::Status {
    for (const auto& [k, v] : s.values) {
      if (k == key) {
        *out = v;
        return absl::OkStatus();
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(std::string(file), ":", s.line, ": [",
                                                   s.gpu ? "gpu " : "cpu ", s.name,
                                                   "] is missing key '", key, "'"));
  };
  absl::Status st;
  if (s.gpu) {
    GpuProfile g;
    g.name = s.name;
    double mem_gib = 0;
    if (!(st = get("memory_gib", &mem_gib)).ok()) return st;
    g.memory_bytes = static_cast<int64_t>(std::llround(mem_gib * 1073741824.0));
    if (!(st = get("pcie_gbps", &g.pcie_gbps)).ok()) return st;
    if (!(st = get("pcie_latency_us", &g.pcie_latency_us)).ok()) return st;
    if (!(st = get("mem_gbps", &g.mem_gbps)).ok()) return st;
    if (!(st = get("tflops", &g.tflops)).ok()) return st;
    if (!(st = get("launch_us", &g.launch_us)).ok()) return st;
    gpus->push_back(std::move(g));
  } else {
    CpuProfile c;
    c.name = s.name;
    double cores = 0;
    if (!(st = get("mem_gbps", &c.mem_gbps)).ok()) return st;
    if (!(st = get("gflops", &c.gflops)).ok()) return st;
    if (!(st = get("cores", &cores)).ok()) return st;
    c.cores = static_cast<int>(cores);
    if (!(st = get("overhead_us", &c.overhead_us)).ok()) return st;
    cpus->push_back(std::move(c));
  }
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
  const std::string file(file_name);
  std::vector<GpuProfile> new_gpus;
  std::vector<CpuProfile> new_cpus;
  std::set<std::string> seen_sections;
  Section cur;
  bool in_section = false;
  int line_no = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    line = Strip(line);
    if (line.empty()) {
      if (end == text.size()) break;
      continue;
    }
    const std::string at = absl::StrCat(file, ":", line_no, ": ");
    if (line.front() == '[') {
      if (line.back() != ']') {
        return absl::InvalidArgumentError(
            absl::StrCat(at, "section header '", std::string(line), "' does not end in ']'"));
      }
      if (in_section) {
        absl::Status st = FinishSection(cur, file, &new_gpus, &new_cpus);
        if (!st.ok()) return st;
      }
      std::string_view inner = Strip(line.substr(1, line.size() - 2));
      const size_t space = inner.find(' ');
      std::string_view kind = inner.substr(0, space);
      std::string_view name =
          space == std::string_view::npos ? std::string_view() : Strip(inner.substr(space + 1));
      if (kind != "gpu" && kind != "cpu") {
        return absl::InvalidArgumentError(absl::StrCat(at, "section '[", std::string(inner),
                                                       "]': expected [gpu NAME] or [cpu NAME]"));
      }
      if (!ValidName(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, "section '[", std::string(inner),
                         "]': the name must be letters, digits, '-', '_' or '.'"));
      }
      const std::string key = absl::StrCat(std::string(kind), " ", std::string(name));
      if (!seen_sections.insert(key).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, "[", key, "] is defined twice in this file"));
      }
      cur = Section();
      cur.gpu = kind == "gpu";
      cur.name = std::string(name);
      cur.line = line_no;
      in_section = true;
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, "expected 'key = value' or a [gpu NAME] / [cpu NAME] header, got '",
                       std::string(line), "'"));
    }
    const std::string key(Strip(line.substr(0, eq)));
    const std::string value(Strip(line.substr(eq + 1)));
    if (!in_section) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, "key '", key, "' before any [gpu NAME] / [cpu NAME] section"));
    }
    const KeySpec* spec = nullptr;
    if (cur.gpu) {
      for (const KeySpec& k : kGpuKeys) {
        if (key == k.name) spec = &k;
      }
    } else {
      for (const KeySpec& k : kCpuKeys) {
        if (key == k.name) spec = &k;
      }
    }
    const std::string section = absl::StrCat("[", cur.gpu ? "gpu " : "cpu ", cur.name, "]");
    if (spec == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, "unknown key '", key, "' in ", section,
                       " (known: ", cur.gpu ? KeyList(kGpuKeys) : KeyList(kCpuKeys), ")"));
    }
    for (const auto& kv : cur.values) {
      if (kv.first == key) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, "key '", key, "' given twice in ", section));
      }
    }
    double v = 0;
    if (!absl::SimpleAtod(value, &v) || !std::isfinite(v)) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, "key '", key, "': '", value, "' is not a number"));
    }
    switch (spec->rule) {
      case KeyRule::kPositive:
        if (!(v > 0)) {
          return absl::InvalidArgumentError(
              absl::StrCat(at, "key '", key, "': ", value, " must be > 0"));
        }
        break;
      case KeyRule::kNonNegative:
        if (v < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat(at, "key '", key, "': ", value, " must be >= 0"));
        }
        break;
      case KeyRule::kPositiveInt:
        if (!(v >= 1) || v != std::floor(v) || v > 1e6) {
          return absl::InvalidArgumentError(
              absl::StrCat(at, "key '", key, "': ", value, " must be a positive integer"));
        }
        break;
    }
    cur.values.emplace_back(key, v);
  }
  if (in_section) {
    absl::Status st = FinishSection(cur, file, &new_gpus, &new_cpus);
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
    absl::Status st = ParseProfiles(device_internal::kBuiltinProfilesIni, "profiles.ini (built in)",
                                    &out->gpus, &out->cpus);
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
