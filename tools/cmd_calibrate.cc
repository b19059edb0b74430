// moex calibrate: measures this machine for the cost model (CPU bandwidth, one expert's CPU
// time at 1 and N tokens, the GPU's copy and memory rates when there is one), and lists
// the built-in device profiles.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "moex/device.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace moex::cli {
namespace {

constexpr char kHelp[] =
    "usage: moex calibrate [--hidden N --ffn N --type T --batch N] [--fresh] [--json]\n"
    "                      [--save-profile FILE [--gpu-name NAME]] [--profiles FILE]\n"
    "       moex calibrate --list-profiles [--json] [--profiles FILE]\n"
    "Measures this machine: the CPU's streaming read bandwidth, the CPU time of one\n"
    "expert (gate, up, down; random weights) at 1 and --batch tokens, the 'host' CPU\n"
    "profile fitted to them, and with a CUDA GPU its pinned host-to-device copy rate and\n"
    "latency, memory bandwidth and launch cost. Cached per machine, CPU and shape in\n"
    "$XDG_CACHE_HOME/moex (or ~/.cache/moex).\n"
    "  --hidden N         expert input width (default 2048, Qwen3-30B-A3B)\n"
    "  --ffn N            expert intermediate width (default 768)\n"
    "  --type T           expert weight type: q4_0, q8_0, q4_K, q5_K, q6_K, f16... (q4_K)\n"
    "  --batch N          tokens of the batched measurement (default 32)\n"
    "  --fresh            measure even when a cached result exists\n"
    "  --quick            64 MiB buffers instead of 512 MiB (faster, less exact)\n"
    "  --no-gpu           skip the GPU measurement\n"
    "  --save-profile F   write the result as profiles.ini sections ([cpu host], [gpu NAME])\n"
    "  --gpu-name NAME    the saved GPU profile's name (default: from the device's name)\n"
    "  --profiles F       load extra profiles (profiles.ini format) before listing\n"
    "  --list-profiles    print the GPU and CPU profiles and exit\n"
    "  --json             one JSON object on stdout (progress stays on stderr)\n";

std::string J(double v) { return absl::StrFormat("%.6g", v); }

std::string GpuJson(const GpuProfileInfo& g) {
  return absl::StrCat("{\"name\":", JsonString(g.name), ",\"memory_bytes\":", g.memory_bytes,
                      ",\"pcie_gbps\":", J(g.pcie_gbps),
                      ",\"pcie_latency_us\":", J(g.pcie_latency_us),
                      ",\"mem_gbps\":", J(g.mem_gbps), ",\"tflops\":", J(g.tflops),
                      ",\"launch_us\":", J(g.launch_us), "}");
}

std::string CpuJson(const CpuProfileInfo& c) {
  return absl::StrCat("{\"name\":", JsonString(c.name), ",\"mem_gbps\":", J(c.mem_gbps),
                      ",\"gflops\":", J(c.gflops), ",\"cores\":", c.cores,
                      ",\"overhead_us\":", J(c.overhead_us), "}");
}

int ListProfiles(bool json) {
  const std::vector<GpuProfileInfo> gpus = ListGpuProfiles();
  const std::vector<CpuProfileInfo> cpus = ListCpuProfiles();
  if (json) {
    std::string out = "{\"gpus\":[";
    for (size_t i = 0; i < gpus.size(); ++i) absl::StrAppend(&out, i ? "," : "", GpuJson(gpus[i]));
    out += "],\"cpus\":[";
    for (size_t i = 0; i < cpus.size(); ++i) absl::StrAppend(&out, i ? "," : "", CpuJson(cpus[i]));
    out += "]}\n";
    std::fputs(out.c_str(), stdout);
    return 0;
  }
  std::printf("%-16s %9s %9s %10s %9s %9s %9s\n", "GPU", "mem GiB", "PCIe GB/s", "latency us",
              "mem GB/s", "TFLOP/s", "launch us");
  for (const GpuProfileInfo& g : gpus) {
    std::printf("%-16s %9.1f %9.1f %10.1f %9.0f %9.1f %9.1f\n", g.name.c_str(),
                static_cast<double>(g.memory_bytes) / (1 << 30), g.pcie_gbps, g.pcie_latency_us,
                g.mem_gbps, g.tflops, g.launch_us);
  }
  std::printf("\n%-16s %9s %9s %6s %11s\n", "CPU", "mem GB/s", "GFLOP/s", "cores", "overhead us");
  for (const CpuProfileInfo& c : cpus) {
    std::printf("%-16s %9.1f %9.0f %6d %11.1f\n", c.name.c_str(), c.mem_gbps, c.gflops, c.cores,
                c.overhead_us);
  }
  std::printf("\n'host' is this machine's CPU: `moex calibrate --save-profile FILE`.\n");
  return 0;
}

}  // namespace

int CmdCalibrate(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv,
               {"hidden", "ffn", "type", "batch", "save-profile", "gpu-name", "profiles"},
               {"help", "json", "fresh", "quick", "no-gpu", "list-profiles"}, &err)) {
    return Usage("calibrate", err);
  }
  if (a.Has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (!a.positionals().empty()) {
    return Usage("calibrate", "unexpected argument '" + a.positionals()[0] + "'");
  }
  if (a.Has("profiles")) {
    absl::Status st = LoadProfiles(a.Str("profiles"));
    if (!st.ok()) return Fail("calibrate", std::string(st.message()));
  }
  if (a.Has("list-profiles")) return ListProfiles(a.Has("json"));

  CalibrateOptions o;
  o.hidden = a.Int("hidden", o.hidden, &err);
  o.ffn = a.Int("ffn", o.ffn, &err);
  o.batch = a.Int("batch", o.batch, &err);
  if (!err.empty()) return Usage("calibrate", err);
  o.type = a.Str("type", o.type);
  o.fresh = a.Has("fresh");
  o.gpu = !a.Has("no-gpu");
  if (a.Has("quick")) o.buffer_bytes = int64_t{64} << 20;
  o.progress = [](const std::string& line) {
    std::fprintf(stderr, "calibrate: %s\n", line.c_str());
  };
  absl::StatusOr<CalibrationResult> r = Calibrate(o);
  if (!r.ok()) {
    return r.status().code() == absl::StatusCode::kInvalidArgument
               ? Usage("calibrate", std::string(r.status().message()))
               : Fail("calibrate", std::string(r.status().message()));
  }

  if (a.Has("save-profile")) {
    std::vector<GpuProfileInfo> gpus;
    if (r->has_gpu) {
      gpus.push_back(r->gpu);
      if (a.Has("gpu-name")) gpus.back().name = a.Str("gpu-name");
    }
    const std::string text = absl::StrCat(
        "# moex calibrate: ", r->cpu_model, ", ", r->cpu_threads, " threads; expert ", o.hidden,
        "x", o.ffn, " ", o.type, "\n",
        r->has_gpu
            ? absl::StrCat("# GPU: ", r->gpu_device, " (tflops estimated from SMs x clock)\n")
            : std::string(),
        FormatProfiles(gpus, {r->host}));
    std::ofstream out(a.Str("save-profile"), std::ios::trunc);
    out << text;
    out.close();
    if (!out) return Fail("calibrate", "cannot write " + a.Str("save-profile"));
    std::fprintf(stderr, "calibrate: profiles written to %s (load them with --profiles)\n",
                 a.Str("save-profile").c_str());
  }

  const std::string tn = absl::StrCat("t", r->batch);
  if (a.Has("json")) {
    std::string gpu = "null";
    if (r->has_gpu) {
      gpu = absl::StrCat(
          "{\"device\":", JsonString(r->gpu_device), ",\"h2d_gbps\":", J(r->gpu_h2d_gbps),
          ",\"h2d_latency_us\":", J(r->gpu_h2d_latency_us), ",\"mem_gbps\":", J(r->gpu_mem_gbps),
          ",\"launch_us\":", J(r->gpu_launch_us), ",\"expert_us_t1\":", J(r->gpu_expert_us_t1),
          ",\"expert_us_", tn, "\":", J(r->gpu_expert_us_tn), ",\"profile\":", GpuJson(r->gpu),
          "}");
    }
    std::printf(
        "%s\n",
        absl::StrCat("{\"cpu_model\":", JsonString(r->cpu_model),
                     ",\"cpu_threads\":", r->cpu_threads, ",\"cpu_mem_gbps\":", J(r->cpu_mem_gbps),
                     ",\"expert_bytes\":", r->expert_bytes, ",\"batch\":", r->batch,
                     ",\"cpu_expert_us_t1\":", J(r->cpu_expert_us_t1), ",\"cpu_expert_us_", tn,
                     "\":", J(r->cpu_expert_us_tn), ",\"cpu_gflops\":", J(r->host.gflops),
                     ",\"model_expert_us_t1\":", J(r->model_expert_us_t1), ",\"model_expert_us_",
                     tn, "\":", J(r->model_expert_us_tn), ",\"host\":", CpuJson(r->host),
                     ",\"gpu\":", gpu, ",\"no_gpu_reason\":", JsonString(r->no_gpu_reason),
                     ",\"cached\":", r->cached ? "true" : "false",
                     ",\"cache_path\":", JsonString(r->cache_path), "}")
            .c_str());
    return 0;
  }
  std::printf("CPU            %s, %d threads\n", r->cpu_model.c_str(), r->cpu_threads);
  std::printf("memory         %.1f GB/s streaming read\n", r->cpu_mem_gbps);
  std::printf("expert         %lldx%lld %s, %.2f MB\n", static_cast<long long>(o.hidden),
              static_cast<long long>(o.ffn), o.type.c_str(), r->expert_bytes / 1e6);
  std::printf("  1 token      %9.1f us  (model %.1f)\n", r->cpu_expert_us_t1,
              r->model_expert_us_t1);
  std::printf("  %-3lld tokens   %9.1f us  (model %.1f)\n", static_cast<long long>(r->batch),
              r->cpu_expert_us_tn, r->model_expert_us_tn);
  std::printf("host profile   mem %.1f GB/s, %.0f GFLOP/s, %d cores, overhead %.1f us\n",
              r->host.mem_gbps, r->host.gflops, r->host.cores, r->host.overhead_us);
  if (r->has_gpu) {
    std::printf("GPU            %s\n", r->gpu_device.c_str());
    std::printf("  H2D pinned   %.1f GB/s, %.1f us per copy\n", r->gpu_h2d_gbps,
                r->gpu_h2d_latency_us);
    std::printf("  memory       %.0f GB/s (device-to-device copy)\n", r->gpu_mem_gbps);
    std::printf("  launch       %.1f us\n", r->gpu_launch_us);
    if (r->gpu_expert_us_t1 > 0) {
      std::printf("  expert       %.1f us at 1 token, %.1f us at %lld\n", r->gpu_expert_us_t1,
                  r->gpu_expert_us_tn, static_cast<long long>(r->batch));
    }
    std::printf("  tensor       %.0f TFLOP/s (estimated from SMs x clock)\n", r->gpu.tflops);
  } else {
    std::printf("GPU            none (%s)\n", r->no_gpu_reason.c_str());
  }
  std::printf("%s         %s\n", r->cached ? "cached" : "saved ",
              r->cache_path.empty() ? "(cache not writable)" : r->cache_path.c_str());
  return 0;
}

}  // namespace moex::cli
