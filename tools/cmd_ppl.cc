// moex ppl: perplexity of a text, with the KV cache compressed as it would be in use.
//
// The text is tokenised once and cut into windows of -c tokens (a BOS when the
// vocabulary has one, then c - 1 text tokens), each its own sequence, starting every
// --stride tokens. Each window is fed in chunks of --chunk tokens; after every chunk the
// KV policy brings the cache within its budget, so later tokens are predicted from the
// compressed cache, as in decode. Every token after the first of a window is scored.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "moex/moex.h"
#include "moex/tokenizer.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace moex::cli {
namespace {

constexpr char kHelp[] =
    "usage: moex ppl -m MODEL --file TEXT [flags]\n"
    "  -c N              window (context) in tokens, BOS included   (default 256)\n"
    "  --stride N        tokens between window starts               (default c - 1)\n"
    "  --chunk N         tokens fed at a time; the KV policy compresses after each\n"
    "                    (default: the whole window with --kv-policy full, else 16)\n"
    "  --kv-policy SPEC  full | streaming|h2o|snapkv[:budget=N|F,window=N,sinks=N,pool=N]\n"
    "                    | pyramid|cake|mikv[:budget=..,score=snapkv|h2o,beta=20 (pyramid),\n"
    "                    tau1=1,tau2=1 (cake),hi=0.5,bits=2|4|8 (mikv)]\n"
    "  --kv-type T       f32 f16 bf16 q8 q4 q4kivi                  (default f32)\n"
    "  --max-windows N   stop after N windows                       (default: all)\n"
    "  -t N              threads\n"
    "  --json            {\"ppl\",\"tokens\",\"windows\",\"top1\",\"kv_bytes_per_token\",\n"
    "                     \"kv_peak_bytes\",...} on stdout\n";

}  // namespace

int CmdPpl(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv,
               {"model", "file", "ctx-size", "stride", "chunk", "kv-policy", "kv-type",
                "max-windows", "threads"},
               {"help", "json"}, &err)) {
    return Usage("ppl", err);
  }
  if (a.Has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (a.Str("model").empty()) return Usage("ppl", "no model file given (-m MODEL.gguf)");
  if (a.Str("file").empty()) return Usage("ppl", "no text given (--file TEXT)");
  const int64_t ctx = a.Int("ctx-size", 256, &err);
  const int64_t stride = a.Int("stride", ctx - 1, &err);
  const std::string policy = a.Str("kv-policy", "full");
  const int64_t chunk = a.Int("chunk", policy == "full" ? ctx : 16, &err);
  const int64_t max_windows = a.Int("max-windows", -1, &err);
  ModelOptions mo;
  mo.threads = static_cast<int>(a.Int("threads", 0, &err));
  if (!err.empty()) return Usage("ppl", err);
  if (ctx < 2 || stride < 1 || chunk < 1)
    return Usage("ppl", "-c >= 2, --stride >= 1, --chunk >= 1");

  std::string text;
  if (!ReadFile(a.Str("file"), &text)) return Fail("ppl", "cannot read " + a.Str("file"));

  absl::StatusOr<std::unique_ptr<Model>> model = Model::Open(a.Str("model"), mo);
  if (!model.ok()) return Fail("ppl", std::string(model.status().message()));
  const Tokenizer* tok = (*model)->tokenizer();
  if (tok == nullptr) return Fail("ppl", a.Str("model") + " has no tokenizer");
  EncodeOptions eo;
  eo.add_bos = false;
  absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text, eo);
  if (!ids.ok()) return Fail("ppl", std::string(ids.status().message()));
  const bool bos = tok->bos() >= 0;
  const int64_t body = ctx - (bos ? 1 : 0);
  if (static_cast<int64_t>(ids->size()) < body) {
    return Fail("ppl", absl::StrCat(a.Str("file"), " has ", ids->size(),
                                    " tokens, fewer than one window of ", body));
  }
  SessionOptions so;
  so.context = ctx;
  so.kv_policy = policy;
  so.kv_type = a.Str("kv-type", "f32");
  absl::StatusOr<std::unique_ptr<Session>> session = (*model)->NewSession(so);
  if (!session.ok()) return Usage("ppl", std::string(session.status().message()));
  Session& s = **session;
  const int64_t n_vocab = (*model)->info().n_vocab;

  double nll = 0, bytes_per_token = 0, seconds = 0;
  int64_t scored = 0, top1 = 0, windows = 0, peak = 0;
  const std::vector<std::vector<int32_t>> all_windows =
      TextWindows(*ids, tok->bos(), ctx, stride, max_windows);
  const int64_t n_windows_total = static_cast<int64_t>(all_windows.size());
  for (const std::vector<int32_t>& w : all_windows) {
    s.Reset();
    for (int64_t c0 = 0; c0 < ctx; c0 += chunk) {
      const int64_t n = std::min(chunk, ctx - c0);
      absl::StatusOr<std::vector<float>> logits =
          s.Evaluate(std::span<const int32_t>(w).subspan(c0, n));
      if (!logits.ok()) return Fail("ppl", std::string(logits.status().message()));
      seconds += s.stats().prefill_seconds;
      for (int64_t i = 0; i < n && c0 + i + 1 < ctx; ++i) {
        const float* l = logits->data() + i * n_vocab;
        const int32_t next = w[c0 + i + 1];
        float mx = l[0];
        int32_t am = 0;
        for (int64_t v = 1; v < n_vocab; ++v) {
          if (l[v] > mx) mx = l[v], am = static_cast<int32_t>(v);
        }
        double z = 0;
        for (int64_t v = 0; v < n_vocab; ++v) z += std::exp(static_cast<double>(l[v]) - mx);
        nll += std::log(z) + mx - l[next];
        top1 += am == next;
        ++scored;
      }
    }
    bytes_per_token += static_cast<double>(s.kv_bytes()) / ctx;
    peak = std::max(peak, s.kv_peak_bytes());
    ++windows;
    if (!a.Has("json")) {
      std::fprintf(stderr, "\rmoex ppl: window %lld/%lld, ppl so far %.3f", (long long)windows,
                   (long long)n_windows_total, std::exp(nll / scored));
    }
  }
  const double ppl = std::exp(nll / scored);
  if (a.Has("json")) {
    std::printf(
        "{\"model\":%s,\"file\":%s,\"ppl\":%.6f,\"tokens\":%lld,\"windows\":%lld,"
        "\"ctx\":%lld,\"chunk\":%lld,\"kv_policy\":%s,\"kv_type\":%s,\"top1\":%.6f,"
        "\"kv_bytes_per_token\":%.1f,\"kv_peak_bytes\":%lld,\"tokens_per_second\":%.1f}\n",
        JsonString(a.Str("model")).c_str(), JsonString(a.Str("file")).c_str(), ppl,
        (long long)scored, (long long)windows, (long long)ctx, (long long)chunk,
        JsonString(policy).c_str(), JsonString(so.kv_type).c_str(),
        static_cast<double>(top1) / scored, bytes_per_token / windows, (long long)peak,
        seconds > 0 ? windows * ctx / seconds : 0.0);
  } else {
    std::fprintf(stderr, "\n");
    std::printf(
        "ppl %.4f over %lld tokens (%lld windows of %lld), top-1 %.3f, KV %.0f bytes per "
        "token, peak %lld bytes (%s, %s)\n",
        ppl, (long long)scored, (long long)windows, (long long)ctx,
        static_cast<double>(top1) / scored, bytes_per_token / windows, (long long)peak,
        policy.c_str(), so.kv_type.c_str());
  }
  return 0;
}

}  // namespace moex::cli
