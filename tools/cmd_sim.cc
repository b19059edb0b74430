// moex sim: trace-driven simulation of hybrid CPU/GPU inference (include/moex/sim.h).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "moex/info.h"
#include "moex/sim.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/trace_files.h"

namespace moex::cli {
namespace {

constexpr char kHelp[] =
    "usage: moex sim --trace T... (--model-shape SHAPE | --model M.gguf) [options]\n"
    "Replays a routing trace through the hybrid scheduler, GPU expert cache and prefetcher\n"
    "on a simulated GPU: estimated tokens/s without running the model.\n"
    "  --trace T         trace file(s): moex trace output, .csv import, Mixtral .jsonl\n"
    "  --format F        trace | csv | mixtral-jsonl (default: by extension)\n"
    "  --experts N       expert count of imported traces (default: largest id + 1)\n"
    "  --model-shape S   a built-in shape (--list-shapes); or\n"
    "  --model M         the shape (and exact expert size) of a GGUF file\n"
    "  --quant Q         q4_k_m (default), q5_k_m, q4_0, q8_0, f16, mxfp4\n"
    "  --profile P       GPU profile (default rtx4060-8g; moex calibrate --list-profiles)\n"
    "  --cpu-profile C   CPU profile (default desktop-ddr5)\n"
    "  --profiles F      extra profiles (moex calibrate --save-profile of another machine)\n"
    "  --gpu-mem SIZE    GPU memory for expert slots: 6GiB, 512MiB, or 25% of the experts\n"
    "                    (default: what is left after weights, KV and workspace)\n"
    "  --policy P        hybrid (default), static-layers, lru-ondemand, cpu-only, gpu-only;\n"
    "                    a comma list or `all` runs several and prints a comparison\n"
    "  --cache-policy C  score, lru, lfu, static, belady (default: the policy's)\n"
    "  --prefetch M      impact, score-rank, none (hybrid only; default impact)\n"
    "  --prefetch-count N  score-rank: experts per layer (default top-k)\n"
    "  --predictor P     previous-token (default), oracle, none\n"
    "  --predict-accuracy A  oracle accuracy (default 0.9)\n"
    "  --context N       KV positions each decoded token attends (default 1024)\n"
    "  --prefill N       the first N tokens of each sequence run as one prefill batch\n"
    "  --seed S          oracle draws (default 1)\n"
    "  --json            one JSON object on stdout\n"
    "  --list-shapes     the built-in model shapes\n";

std::string ReportJson(const SimReport& r) {
  std::string o = absl::StrFormat(
      "{\"policy\":%s,\"cache_policy\":%s,\"prefetch\":%s,\"predictor\":%s,"
      "\"model_shape\":%s,\"quant\":%s,\"gpu\":%s,\"cpu\":%s,"
      "\"decode_tps\":%.4f,\"prefill_tps\":%.4f,\"hit_rate\":%.6f,"
      "\"bytes_copied_per_token\":%.1f,\"stall_ms_per_token\":%.4f,\"cpu_ms_per_token\":%.4f,"
      "\"predictor_recall\":%.4f,\"prefetch_copies\":%d,\"ondemand_copies\":%d,"
      "\"decode_tokens\":%d,\"prefill_tokens\":%d,\"expert_bytes\":%.0f,\"slots\":%d,"
      "\"gpu_expert_share\":%.4f,\"dense_bytes\":%.0f,\"gpu_memory_bytes\":%.0f,"
      "\"cpu_bound_tps\":%.4f,\"layers\":[",
      JsonString(r.policy), JsonString(r.cache_policy), JsonString(r.prefetch),
      JsonString(r.predictor), JsonString(r.model_shape), JsonString(r.quant), JsonString(r.gpu),
      JsonString(r.cpu), r.decode_tps, r.prefill_tps, r.hit_rate, r.bytes_copied_per_token,
      r.stall_ms_per_token, r.cpu_ms_per_token, r.predictor_recall, r.prefetch_copies,
      r.ondemand_copies, r.decode_tokens, r.prefill_tokens, r.expert_bytes, r.slots,
      r.gpu_expert_share, r.dense_bytes, r.gpu_memory_bytes, r.bound_tps);
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const SimLayer& s = r.layers[l];
    absl::StrAppendFormat(
        &o, "%s{\"slots\":%d,\"gpu_experts\":%.4f,\"cpu_experts\":%.4f,\"hit_rate\":%.4f}",
        l ? "," : "", s.slots, s.gpu_experts_per_token, s.cpu_experts_per_token, s.hit_rate);
  }
  return o + "]}";
}

}  // namespace

int CmdSim(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv,
               {"trace", "format", "experts", "model-shape", "model", "quant", "profile",
                "cpu-profile", "gpu-mem", "policy", "cache-policy", "prefetch", "prefetch-count",
                "profiles", "predictor", "predict-accuracy", "context", "prefill", "seed"},
               {"help", "json", "list-shapes"}, &err)) {
    return Usage("sim", err);
  }
  if (a.Has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (a.Has("list-shapes")) {
    for (const ModelShape& m : BuiltinModelShapes()) {
      std::printf("%-20s %2d MoE layers, %3d experts, top-%d, hidden %lld, expert ffn %lld\n",
                  m.name.c_str(), m.layers, m.experts, m.top_k, static_cast<long long>(m.hidden),
                  static_cast<long long>(m.expert_ffn));
    }
    return 0;
  }
  SimOptions o;
  if (a.Has("model-shape") && a.Has("model")) return Usage("sim", "give --model-shape or --model");
  if (a.Has("model-shape")) o.model_shape = a.Str("model-shape");
  o.quant = a.Str("quant", o.quant);
  if (a.Has("model")) {
    auto d = DescribeFile(a.Str("model"));
    if (!d.ok()) return Fail("sim", std::string(d.status().message()));
    if (!d->has_model_info) return Fail("sim", d->model_error);
    const ModelInfo& i = d->model;
    if (i.n_expert <= 0) return Fail("sim", absl::StrCat(a.Str("model"), " has no routed experts"));
    ModelShape& m = o.shape;
    m.name = i.name.empty() ? a.Str("model") : i.name;
    m.layers = static_cast<int32_t>(i.n_layer);
    m.hidden = i.n_embd;
    m.experts = static_cast<int32_t>(i.n_expert);
    m.top_k = static_cast<int32_t>(i.n_expert_used);
    m.expert_ffn = i.n_ff_exp > 0 ? i.n_ff_exp : i.n_ff;
    m.shared_ffn = i.n_ff_shexp;
    m.heads = static_cast<int32_t>(i.n_head);
    m.kv_heads = static_cast<int32_t>(i.n_head_kv);
    m.head_dim = static_cast<int32_t>(i.head_dim);
    m.vocab = i.n_vocab;
    o.expert_bytes = static_cast<double>(i.expert_bytes_total) / (i.n_layer * i.n_expert);
  }
  if (std::string e = LoadProfilesFlag(a); !e.empty()) return Usage("sim", e);
  o.gpu = a.Str("profile", o.gpu);
  o.cpu = a.Str("cpu-profile", o.cpu);
  o.gpu_mem = a.Str("gpu-mem");
  o.cache_policy = a.Str("cache-policy");
  o.prefetch = a.Str("prefetch");
  o.predictor = a.Str("predictor", o.predictor);
  o.prefetch_count = static_cast<int32_t>(a.Int("prefetch-count", 0, &err));
  o.predict_accuracy = a.Float("predict-accuracy", o.predict_accuracy, &err);
  o.context = a.Int("context", o.context, &err);
  o.prefill_tokens = a.Int("prefill", 0, &err);
  o.seed = a.Int("seed", 1, &err);
  if (!err.empty()) return Usage("sim", err);
  if (a.Has("predict-accuracy") && o.predictor != "oracle") {
    return Usage("sim", "--predict-accuracy needs --predictor oracle");
  }
  std::vector<std::string> policies = absl::StrSplit(a.Str("policy", "hybrid"), ',');
  if (policies.size() == 1 && policies[0] == "all") {
    policies = {"hybrid", "static-layers", "lru-ondemand", "cpu-only", "gpu-only"};
  }
  std::vector<std::string> paths;
  if (a.Has("trace")) paths.push_back(a.Str("trace"));
  for (const std::string& p : a.positionals()) paths.push_back(p);
  Trace trace;
  if (!LoadTraces(paths, a.Str("format"), a.Int("experts", 0, &err), false, &trace, &err)) {
    return Fail("sim", err);
  }
  std::vector<SimReport> reports;
  std::vector<std::string> skipped;
  for (const std::string& p : policies) {
    o.policy = p;
    std::fprintf(stderr, "simulating %s ...\n", p.c_str());
    auto r = SimulateTrace(trace, o);
    // In a comparison a policy that cannot run here (gpu-only without room) is reported,
    // not fatal.
    if (!r.ok() && policies.size() > 1 && absl::IsResourceExhausted(r.status())) {
      skipped.push_back(absl::StrCat(p, ": ", r.status().message()));
      continue;
    }
    if (!r.ok()) return Fail("sim", std::string(r.status().message()));
    reports.push_back(*std::move(r));
  }
  if (a.Has("json")) {
    if (reports.size() == 1 && policies.size() == 1) {
      std::printf("%s\n", ReportJson(reports[0]).c_str());
      return 0;
    }
    std::string o2 = "{\"runs\":[";
    for (size_t i = 0; i < reports.size(); ++i) o2 += (i ? "," : "") + ReportJson(reports[i]);
    o2 += "],\"skipped\":[";
    for (size_t i = 0; i < skipped.size(); ++i) o2 += (i ? "," : "") + JsonString(skipped[i]);
    std::printf("%s]}\n", o2.c_str());
    return 0;
  }
  if (!reports.empty()) {
    const SimReport& r0 = reports[0];
    std::printf(
        "%s %s on %s + %s: %lld decode tokens, expert %.1f MiB, %lld slots (%.0f%% of "
        "the experts), predictor %s\n",
        r0.model_shape.c_str(), r0.quant.c_str(), r0.gpu.c_str(), r0.cpu.c_str(),
        static_cast<long long>(r0.decode_tokens), r0.expert_bytes / 1048576,
        static_cast<long long>(r0.slots), 100 * r0.gpu_expert_share, r0.predictor.c_str());
  }
  std::printf("%-14s %-7s %-10s %10s %11s %9s %12s %10s %9s\n", "policy", "cache", "prefetch",
              "decode t/s", "prefill t/s", "hit rate", "MB copy/tok", "stall ms", "cpu ms");
  for (const SimReport& r : reports) {
    std::printf("%-14s %-7s %-10s %10.2f %11.1f %9.3f %12.1f %10.2f %9.2f\n", r.policy.c_str(),
                r.cache_policy.c_str(), r.prefetch.c_str(), r.decode_tps, r.prefill_tps, r.hit_rate,
                r.bytes_copied_per_token / 1e6, r.stall_ms_per_token, r.cpu_ms_per_token);
  }
  for (const std::string& s : skipped) std::printf("skipped %s\n", s.c_str());
  return 0;
}

}  // namespace moex::cli
