// moex bench: prefill and decode speed of a model, against the machine's limit.
//
// Decode is memory-bound: every decoded token reads the weights it uses once, so the
// bound is (streaming read bandwidth) / (weight bytes read per token). The bandwidth is
// measured in the same run, because it varies between sittings on shared machines.
// Each figure is the median of --reps repetitions.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "moex/device.h"
#include "moex/info.h"
#include "moex/moex.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace moex::cli {
namespace {

constexpr char kHelp[] =
    "usage: moex bench -m MODEL [-p N] [-n N] [--depth N] [--reps N] [-t N] [--no-pin] "
    "[--no-prefault]\n"
    "                  [--json]\n"
    "  -p N              prompt tokens to prefill                   (default 128)\n"
    "  -n N              tokens to decode after it                  (default 32)\n"
    "  --depth N         decode after a context of N tokens instead (prefill not timed)\n"
    "  --reps N          repetitions; the median is reported       (default 3)\n"
    "  --no-pin          leave the worker threads unpinned (default: one per core, hwloc)\n"
    "  --no-prefault     map the weights lazily (default: all pages entered at load when\n"
    "                    the file fits in available memory; load_s says what that took)\n"
    "  --kv-policy SPEC --kv-type T   KV-cache compression, as for run\n"
    "  --json            {\"prefill_tps\",\"decode_tps\",\"bytes_per_token\",\"mem_bw_gbps\",\n"
    "                     \"bw_fraction\",\"kv_bytes\",...} on stdout; with --device sim:P also\n"
    "                     "
    "\"sim_prefill_tps\",\"sim_decode_tps\",\"hit_rate\",\"bytes_copied_per_token\",\n"
    "                     \"stall_ms_per_token\" and the per-layer CPU/GPU split; with\n"
    "                     --device cuda \"gpu_expert_share\",\"gpu_mem_bw_gbps\",\n"
    "                     \"gpu_bw_fraction\" and the split (mem_bw_gbps is the host's)\n";

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Weight bytes one decoded token reads: every tensor once, except the routed experts
// (only top-k of them per layer) and the token embedding (one row).
double BytesPerToken(const FileDescription& d) {
  const ModelInfo& m = d.model;
  double bytes = 0, embd = 0;
  for (const TensorDescription& t : d.tensors) {
    if (t.name == "token_embd.weight") {
      embd = static_cast<double>(t.bytes);
      continue;
    }
    bytes += static_cast<double>(t.bytes);
  }
  if (m.n_expert > 0) {
    bytes -= static_cast<double>(m.expert_bytes_total);
    bytes += static_cast<double>(m.expert_bytes_total) * m.n_expert_used / m.n_expert;
  }
  return bytes + (m.n_vocab > 0 ? embd / m.n_vocab : 0);
}

}  // namespace

int CmdBench(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv,
               WithDevice({"model", "n-prompt", "prompt", "n-predict", "depth", "reps", "threads",
                           "kv-policy", "kv-type", "ctx-size"}),
               {"help", "json", "no-pin", "no-prefault"}, &err)) {
    return Usage("bench", err);
  }
  if (a.Has("help")) {
    std::fputs(kHelp, stdout);
    std::fputs(kDeviceHelp, stdout);
    return 0;
  }
  if (a.Str("model").empty()) return Usage("bench", "no model file given (-m MODEL.gguf)");
  // -p is the prompt length here (llama-bench's habit), a number.
  const int64_t n_prompt = a.Int("prompt", 128, &err);
  const int64_t n_decode = a.Int("n-predict", 32, &err);
  const int64_t depth = a.Int("depth", 0, &err);
  const int64_t reps = a.Int("reps", 3, &err);
  ModelOptions mo;
  mo.threads = static_cast<int>(a.Int("threads", 0, &err));
  mo.pin_threads = !a.Has("no-pin");
  mo.prefault = !a.Has("no-prefault");
  if (!err.empty()) return Usage("bench", err);
  if (n_prompt < 1 || n_decode < 1 || reps < 1 || depth < 0) {
    return Usage("bench", "-p, -n and --reps must be positive");
  }
  absl::StatusOr<FileDescription> desc = DescribeFile(a.Str("model"));
  if (!desc.ok()) return Fail("bench", std::string(desc.status().message()));
  if (!desc->has_model_info) return Fail("bench", desc->model_error);
  const auto t_load = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Open(a.Str("model"), mo);
  if (!model.ok()) return Fail("bench", std::string(model.status().message()));
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const ModelInfo& info = (*model)->info();

  SessionOptions so;
  so.context = a.Int("ctx-size", (depth > 0 ? depth : n_prompt) + n_decode, &err);
  ParseKv(a, &so);
  if (std::string e = ParseDevice(a, &so); !e.empty()) return Usage("bench", e);
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(info.n_vocab - 1));
  std::vector<int32_t> prompt(depth > 0 ? depth : n_prompt);
  for (int32_t& t : prompt) t = tok(rng);

  std::vector<double> prefill_tps, decode_tps, sim_prefill_tps, sim_decode_tps;
  DeviceStats dev;  // of the last repetition
  int64_t kv_bytes = 0, kv_peak = 0, kv_alloc = 0;
  for (int64_t r = 0; r < reps; ++r) {
    absl::StatusOr<std::unique_ptr<Session>> s = (*model)->NewSession(so);
    if (!s.ok()) return Usage("bench", std::string(s.status().message()));
    GenerateOptions g;
    g.max_tokens = static_cast<int32_t>(n_decode);
    g.stop_at_eos = false;
    g.sampling.temperature = 0;
    absl::StatusOr<std::vector<int32_t>> out = (*s)->Generate(prompt, g, {});
    if (!out.ok()) return Fail("bench", std::string(out.status().message()));
    const Stats& st = (*s)->stats();
    prefill_tps.push_back(st.prefill_tps());
    // The first sampled token comes from the prefill; the decode steps are the rest.
    decode_tps.push_back(st.decode_tps());
    sim_prefill_tps.push_back(st.device_prefill_tps());
    sim_decode_tps.push_back(st.device_decode_tps());
    dev = (*s)->device_stats();
    if (r == 0 && !dev.note.empty()) std::fprintf(stderr, "moex bench: %s\n", dev.note.c_str());
    kv_bytes = (*s)->kv_bytes();
    kv_peak = (*s)->kv_peak_bytes();
    kv_alloc = (*s)->kv_allocated_bytes();
    if (!a.Has("json")) {
      std::fprintf(stderr, "\rmoex bench: repetition %lld/%lld", (long long)r + 1, (long long)reps);
    }
  }
  const double bw = MeasureReadBandwidth(mo.threads);
  const double bpt = BytesPerToken(*desc);
  const double dec = Median(decode_tps), pre = Median(prefill_tps);
  const double fraction = bw > 0 ? dec * bpt / bw : 0;
  const int threads = mo.threads > 0 ? mo.threads : PhysicalCores();
  const bool sim = absl::StartsWith(dev.device, "sim:");
  const bool cuda = absl::StartsWith(dev.device, "cuda");
  const double uses = static_cast<double>(dev.hits + dev.misses);
  const double hit_rate = uses > 0 ? dev.hits / uses : 0;
  const double per_tok = dev.tokens > 0 ? 1.0 / dev.tokens : 0;
  // Expert runs per token and layer on each side.
  std::string split;
  for (size_t l = 0; l < dev.layer_gpu_experts.size(); ++l) {
    absl::StrAppendFormat(&split, "%s{\"gpu_experts\":%.4f,\"cpu_experts\":%.4f}", l ? "," : "",
                          dev.layer_gpu_experts[l] * per_tok, dev.layer_cpu_experts[l] * per_tok);
  }
  std::string sim_json;
  if (sim) {
    sim_json = absl::StrFormat(
        ",\"device\":%s,\"moe_policy\":%s,\"cache_policy\":%s,\"prefetch\":%s,"
        "\"sim_prefill_tps\":%.3f,\"sim_decode_tps\":%.3f,\"hit_rate\":%.4f,"
        "\"bytes_copied_per_token\":%.0f,\"stall_ms_per_token\":%.4f,\"slots\":%d,"
        "\"expert_bytes\":%.0f,\"ondemand_copies\":%d,\"prefetch_copies\":%d,"
        "\"refresh_copies\":%d,\"prefetch_used\":%d,\"layers\":[%s]",
        JsonString(dev.device), JsonString(dev.moe_policy), JsonString(dev.cache_policy),
        JsonString(dev.prefetch), Median(sim_prefill_tps), Median(sim_decode_tps), hit_rate,
        dev.bytes_copied * per_tok, 1e3 * dev.stall_seconds * per_tok, dev.slots, dev.expert_bytes,
        dev.ondemand_copies, dev.prefetch_copies, dev.refresh_copies, dev.prefetch_used, split);
  }
  double gpu_bw = 0;  // the GPU's memory bandwidth (calibration, cached per machine)
  if (cuda) {
    CalibrateOptions co;
    absl::StatusOr<CalibrationResult> cal = Calibrate(co);
    if (cal.ok() && cal->has_gpu) gpu_bw = cal->gpu_mem_gbps * 1e9;
  }
  const double gpu_fraction = gpu_bw > 0 ? dec * bpt / gpu_bw : 0;
  if (cuda) {
    // A real GPU: the times above are its own; the split is static (whole layers). The
    // limit is the GPU's bandwidth when every expert is there (bw_fraction stays the host's).
    sim_json = absl::StrFormat(
        ",\"device\":%s,\"moe_policy\":%s,\"gpu_expert_share\":%.4f,\"slots\":%d,"
        "\"gpu_mem_bw_gbps\":%.1f,\"gpu_bw_fraction\":%.4f,\"layers\":[%s]",
        JsonString(dev.device), JsonString(dev.moe_policy), hit_rate, dev.slots, gpu_bw / 1e9,
        gpu_fraction, split);
  }
  if (a.Has("json")) {
    std::printf(
        "{\"model\":%s,\"threads\":%d,\"n_prompt\":%lld,\"n_decode\":%lld,\"depth\":%lld,"
        "\"reps\":%lld,\"prefill_tps\":%.3f,\"decode_tps\":%.3f,\"bytes_per_token\":%.0f,"
        "\"mem_bw_gbps\":%.3f,\"bw_fraction\":%.4f,\"decode_bound_tps\":%.3f,"
        "\"kv_policy\":%s,\"kv_type\":%s,\"kv_bytes\":%lld,\"kv_peak_bytes\":%lld,"
        "\"kv_allocated_bytes\":%lld,"
        "\"load_s\":%.3f%s}\n",
        JsonString(a.Str("model")).c_str(), threads, (long long)prompt.size(), (long long)n_decode,
        (long long)depth, (long long)reps, pre, dec, bpt, bw / 1e9, fraction,
        bpt > 0 ? bw / bpt : 0, JsonString(so.kv_policy).c_str(), JsonString(so.kv_type).c_str(),
        (long long)kv_bytes, (long long)kv_peak, (long long)kv_alloc, load_s, sim_json.c_str());
  } else {
    std::fprintf(stderr, "\n");
    std::printf("%s, %d threads, loaded in %.2f s\n", info.path.c_str(), threads, load_s);
    std::printf("  %s %lld tokens: %.1f tok/s (median of %lld)\n",
                depth > 0 ? "context" : "prefill", (long long)prompt.size(), pre, (long long)reps);
    std::printf(
        "  decode %lld tokens: %.2f tok/s; %.1f MB of weights per token; read bandwidth "
        "%.1f GB/s -> bound %.2f tok/s; %.0f%% of it\n",
        (long long)n_decode, dec, bpt / 1e6, bw / 1e9, bpt > 0 ? bw / bpt : 0, 100 * fraction);
    std::printf("  KV cache: %.2f MB now, peak %.2f MB, %.2f MB of pages held (%s, %s)\n",
                kv_bytes / 1e6, kv_peak / 1e6, kv_alloc / 1e6, so.kv_policy.c_str(),
                so.kv_type.c_str());
    if (cuda) {
      std::printf(
          "  on %s (%s): %lld expert slots, %.0f%% of the expert runs on the GPU; its bandwidth "
          "%.0f GB/s -> decode at %.1f%% of it\n",
          dev.device.c_str(), dev.moe_policy.c_str(), (long long)dev.slots, 100 * hit_rate,
          gpu_bw / 1e9, 100 * gpu_fraction);
    }
    if (sim) {
      std::printf(
          "  on %s (%s, cache %s, prefetch %s, %lld expert slots): prefill %.1f tok/s, decode "
          "%.2f tok/s; hit rate %.3f, %.1f MB copied and %.3f ms stalled per token\n",
          dev.device.c_str(), dev.moe_policy.c_str(), dev.cache_policy.c_str(),
          dev.prefetch.c_str(), (long long)dev.slots, Median(sim_prefill_tps),
          Median(sim_decode_tps), hit_rate, dev.bytes_copied * per_tok / 1e6,
          1e3 * dev.stall_seconds * per_tok);
    }
  }
  return 0;
}

}  // namespace moex::cli
