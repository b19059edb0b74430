// moex inspect MODEL [--json] [--tensors]
#include <cstdio>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "moex/info.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace moex::cli {
namespace {

constexpr char kHelp[] =
    "usage: moex inspect MODEL.gguf [--json] [--tensors]\n"
    "  Shows the file's metadata, architecture and hyper-parameters, tensor types and sizes,\n"
    "  and the bytes of one expert. --tensors lists every tensor (always in --json).\n";

std::string HumanBytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u ? "%.2f %s" : "%.0f %s", v, units[u]);
  return buf;
}

void PrintJson(const FileDescription& d) {
  std::string o = "{";
  o += absl::StrCat("\"path\":", JsonString(d.path), ",\"version\":", d.version,
                    ",\"file_bytes\":", d.file_bytes, ",\"alignment\":", d.alignment);
  o += ",\"metadata\":{";
  for (size_t i = 0; i < d.metadata.size(); ++i) {
    if (i) o += ",";
    o += JsonString(d.metadata[i].first) + ":" + JsonString(d.metadata[i].second);
  }
  o += "},\"tensors\":[";
  for (size_t i = 0; i < d.tensors.size(); ++i) {
    const TensorDescription& t = d.tensors[i];
    if (i) o += ",";
    o += absl::StrCat("{\"name\":", JsonString(t.name), ",\"type\":", JsonString(t.type),
                      ",\"dims\":[", absl::StrJoin(t.dims, ","), "],\"offset\":", t.offset,
                      ",\"bytes\":", t.bytes, "}");
  }
  o += "]";
  if (d.has_model_info) {
    const ModelInfo& m = d.model;
    o += absl::StrCat(",\"model\":{\"architecture\":", JsonString(m.architecture),
                      ",\"name\":", JsonString(m.name), ",\"n_vocab\":", m.n_vocab,
                      ",\"n_ctx_train\":", m.n_ctx_train, ",\"n_embd\":", m.n_embd,
                      ",\"n_layer\":", m.n_layer, ",\"n_head\":", m.n_head,
                      ",\"n_head_kv\":", m.n_head_kv, ",\"head_dim\":", m.head_dim,
                      ",\"n_rot\":", m.n_rot, ",\"rope_freq_base\":", m.rope_freq_base,
                      ",\"n_ff\":", m.n_ff, ",\"n_expert\":", m.n_expert,
                      ",\"n_expert_used\":", m.n_expert_used, ",\"n_ff_exp\":", m.n_ff_exp,
                      ",\"n_ff_shexp\":", m.n_ff_shexp, ",\"expert_bytes\":", m.expert_bytes,
                      ",\"expert_bytes_total\":", m.expert_bytes_total, "}");
  } else {
    o += ",\"model_error\":" + JsonString(d.model_error);
  }
  o += "}\n";
  std::fputs(o.c_str(), stdout);
}

void PrintHuman(const FileDescription& d, bool tensors) {
  std::printf("file:       %s (%s, GGUF v%u, alignment %llu)\n", d.path.c_str(),
              HumanBytes(d.file_bytes).c_str(), d.version,
              static_cast<unsigned long long>(d.alignment));
  if (d.has_model_info) {
    const ModelInfo& m = d.model;
    std::printf("model:      %s \"%s\"\n", m.architecture.c_str(), m.name.c_str());
    std::printf(
        "shape:      %lld layers, hidden %lld, %lld heads (%lld kv) of %lld, vocab %lld, "
        "trained context %lld\n",
        (long long)m.n_layer, (long long)m.n_embd, (long long)m.n_head, (long long)m.n_head_kv,
        (long long)m.head_dim, (long long)m.n_vocab, (long long)m.n_ctx_train);
    if (m.n_expert > 0) {
      std::printf("experts:    %lld per layer, top-%lld, width %lld%s\n", (long long)m.n_expert,
                  (long long)m.n_expert_used, (long long)m.n_ff_exp,
                  m.n_ff_shexp ? absl::StrCat(", shared expert width ", m.n_ff_shexp).c_str() : "");
      std::printf("per expert: %s (gate+up+down); all routed experts %s (%.1f%% of the file)\n",
                  HumanBytes(m.expert_bytes).c_str(), HumanBytes(m.expert_bytes_total).c_str(),
                  100.0 * m.expert_bytes_total / d.file_bytes);
    } else {
      std::printf("dense:      FFN width %lld\n", (long long)m.n_ff);
    }
  } else {
    std::printf("model:      not runnable by moex: %s\n", d.model_error.c_str());
  }
  std::printf("metadata:   %zu keys\n", d.metadata.size());
  for (const auto& [k, v] : d.metadata) std::printf("  %-44s %s\n", k.c_str(), v.c_str());
  // Bytes by type: what the file is made of.
  std::map<std::string, std::pair<int, uint64_t>> by_type;
  for (const TensorDescription& t : d.tensors) {
    by_type[t.type].first++;
    by_type[t.type].second += t.bytes;
  }
  std::printf("tensors:    %zu\n", d.tensors.size());
  for (const auto& [type, cb] : by_type) {
    std::printf("  %-6s %4d tensors %12s\n", type.c_str(), cb.first, HumanBytes(cb.second).c_str());
  }
  if (tensors) {
    for (const TensorDescription& t : d.tensors) {
      std::printf("  %-36s %-6s [%s] %s @%llu\n", t.name.c_str(), t.type.c_str(),
                  absl::StrJoin(t.dims, ", ").c_str(), HumanBytes(t.bytes).c_str(),
                  static_cast<unsigned long long>(t.offset));
    }
  }
}

}  // namespace

int CmdInspect(int argc, char** argv) {
  Args args;
  std::string err;
  if (!args.Parse(argc, argv, {"model"}, {"json", "tensors", "help"}, &err)) {
    std::fprintf(stderr, "moex inspect: %s (see `moex inspect --help`)\n", err.c_str());
    return 2;
  }
  if (args.Has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  std::string path = args.Str("model");
  if (path.empty() && !args.positionals().empty()) path = args.positionals()[0];
  if (path.empty()) {
    std::fprintf(stderr, "moex inspect: no model file given (see `moex inspect --help`)\n");
    return 2;
  }
  absl::StatusOr<FileDescription> d = DescribeFile(path);
  if (!d.ok()) {
    std::fprintf(stderr, "moex inspect: %s\n", std::string(d.status().message()).c_str());
    return 1;
  }
  if (args.Has("json")) {
    PrintJson(*d);
  } else {
    PrintHuman(*d, args.Has("tensors"));
  }
  return 0;
}

}  // namespace moex::cli
