// moex gen: a model with random weights for any supported architecture and type.
#include <cstdio>
#include <string>

#include "moex/info.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace moex::cli {
namespace {

constexpr char kHelp[] =
    "usage: moex gen --arch ARCH --type TYPE -o OUT.gguf [flags]\n"
    "  --arch        llama | qwen2moe | qwen3moe | olmoe          (default qwen3moe)\n"
    "  --type        f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_K q5_K q6_K q4_k_m q5_k_m\n"
    "                                                              (default q4_k_m)\n"
    "  --hidden N    embedding width (multiple of 32)              (default 256)\n"
    "  --layers N    blocks                                        (default 4)\n"
    "  --heads N / --kv-heads N / --head-dim N                     (default 8 / 4 / hidden/heads)\n"
    "  --experts N   routed experts per layer (0 = dense, llama)   (default 8)\n"
    "  --top-k N     experts per token                             (default 2)\n"
    "  --ffn N       expert (or dense) FFN width                   (default 512)\n"
    "  --shared-ffn N  shared expert width (qwen2moe; default 2*hidden)\n"
    "  --vocab-size N  (default: the --vocab file's size, else 4096)\n"
    "  --vocab FILE  copy the tokenizer from this GGUF             (default: a byte vocabulary)\n"
    "  --ctx N       trained context length written to the file    (default 4096)\n"
    "  --seed N      random seed                                   (default 1)\n";

}  // namespace

int CmdGen(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv,
               {"arch", "type", "hidden", "layers", "heads", "kv-heads", "head-dim", "experts",
                "top-k", "ffn", "shared-ffn", "vocab-size", "vocab", "seed", "output", "ctx"},
               {"help", "quiet"}, &err)) {
    std::fprintf(stderr, "moex gen: %s\n%s", err.c_str(), kHelp);
    return 2;
  }
  if (a.Has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  SyntheticModelSpec s;
  s.arch = a.Str("arch", s.arch);
  s.type = a.Str("type", s.type);
  s.hidden = a.Int("hidden", s.hidden, &err);
  s.layers = a.Int("layers", s.layers, &err);
  s.heads = a.Int("heads", s.heads, &err);
  s.kv_heads = a.Int("kv-heads", s.kv_heads, &err);
  s.head_dim = a.Int("head-dim", s.head_dim, &err);
  s.experts = a.Int("experts", s.experts, &err);
  s.top_k = a.Int("top-k", s.top_k, &err);
  s.ffn = a.Int("ffn", s.ffn, &err);
  s.shared_ffn = a.Int("shared-ffn", s.shared_ffn, &err);
  s.vocab_size = a.Int("vocab-size", s.vocab_size, &err);
  s.context = a.Int("ctx", s.context, &err);
  s.seed = static_cast<uint64_t>(a.Int("seed", 1, &err));
  s.vocab_path = a.Str("vocab");
  const std::string out = a.Str("output");
  if (!err.empty()) {
    std::fprintf(stderr, "moex gen: %s\n", err.c_str());
    return 2;
  }
  if (out.empty()) {
    std::fprintf(stderr, "moex gen: no output file (-o OUT.gguf)\n%s", kHelp);
    return 2;
  }
  const bool quiet = a.Has("quiet");
  absl::Status st = WriteSyntheticModel(s, out, [quiet](double f) {
    if (!quiet) std::fprintf(stderr, "\rmoex gen: %3.0f%% of the weights written", 100 * f);
  });
  if (!quiet) std::fputc('\n', stderr);
  if (!st.ok()) {
    std::fprintf(stderr, "moex gen: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  std::fprintf(stderr, "moex gen: wrote %s\n", out.c_str());
  return 0;
}

}  // namespace moex::cli
