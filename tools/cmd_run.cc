// moex run / moex logits: evaluate and generate on the CPU.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "moex/moex.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/trace_record.h"

namespace moex::cli {
namespace {

constexpr char kRunHelp[] =
    "usage: moex run -m MODEL (-p TEXT | --tokens IDS) [-n N] [flags]\n"
    "  -p TEXT          the prompt as text: tokenized with the model's tokenizer, a BOS\n"
    "                   first if the vocabulary asks for one; control tokens written as\n"
    "                   text (<|im_start|>, [INST]) are recognised\n"
    "  --tokens 1,2,3   ... or the prompt as token ids (a BOS is not added)\n"
    "  -n N             tokens to generate                   (default 32)\n"
    "  -c N             context size                         (default min(trained, 4096))\n"
    "  -t N             threads                              (default: physical cores)\n"
    "  --temp X --top-k N --top-p X --min-p X --repeat-penalty X --repeat-last-n N --seed N\n"
    "                   sampling (defaults 0.8 40 0.95 0.05 1.0 64 0; --temp 0 = greedy)\n"
    "  --ignore-eos     keep going past the end-of-sequence token\n"
    "  --kv-policy SPEC KV compression: full | streaming|h2o|snapkv[:budget=N|F,...]\n"
    "  --kv-type T      KV rows: f32 f16 bf16 q8 q4                 (default f32)\n"
    "  --json           one JSON object on stdout: tokens, text, prefill_tps, decode_tps, ...\n"
    "  --trace OUT      record the routing of the prompt and the answer as a trace file\n"
    "                   (one sequence; for moex lrc)\n";

constexpr char kLogitsHelp[] =
    "usage: moex logits -m MODEL --tokens 1,2,3 --out FILE [-t N]\n"
    "  Writes the logits of every position: int32 n_tokens, int32 n_vocab,\n"
    "  float32[n_tokens][n_vocab] (little-endian).\n";

// Opens the model named by -m with `threads`; sets *err and returns null on failure.
// REQUIRES: -m was given (checked by the caller as a usage error).
std::unique_ptr<Model> OpenModel(const Args& a, int threads, std::string* err) {
  ModelOptions mo;
  mo.threads = threads;
  absl::StatusOr<std::unique_ptr<Model>> m = Model::Open(a.Str("model"), mo);
  if (!m.ok()) {
    *err = std::string(m.status().message());
    return nullptr;
  }
  return std::move(*m);
}

}  // namespace

int CmdLogits(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv, WithDevice({"model", "tokens", "out", "output", "threads", "ctx-size"}),
               {"help"}, &err)) {
    return Usage("logits", err);
  }
  if (a.Has("help")) {
    std::fputs(kLogitsHelp, stdout);
    std::fputs(kDeviceHelp, stdout);
    return 0;
  }
  if (a.Str("model").empty()) return Usage("logits", "no model file given (-m MODEL.gguf)");
  std::vector<int32_t> ids;
  if (!ParseIdList(a.Str("tokens"), &ids)) {
    return Usage("logits",
                 "--tokens needs a comma-separated list of ids, got '" + a.Str("tokens") + "'");
  }
  const std::string out = a.Has("out") ? a.Str("out") : a.Str("output");
  if (out.empty()) return Usage("logits", "no output file (--out FILE)");
  const int threads = static_cast<int>(a.Int("threads", 0, &err));
  const int64_t ctx = a.Int("ctx-size", 0, &err);
  if (!err.empty()) return Usage("logits", err);
  std::unique_ptr<Model> model = OpenModel(a, threads, &err);
  if (!model) return Fail("logits", err);
  SessionOptions so;
  so.context = std::max<int64_t>(ctx, static_cast<int64_t>(ids.size()));
  if (std::string e = ParseDevice(a, &so); !e.empty()) return Usage("logits", e);
  absl::StatusOr<std::unique_ptr<Session>> session = model->NewSession(so);
  if (!session.ok()) return Fail("logits", std::string(session.status().message()));
  absl::StatusOr<std::vector<float>> logits = (*session)->Evaluate(ids);
  if (!logits.ok()) return Fail("logits", std::string(logits.status().message()));

  const std::string tmp = out + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return Fail("logits", absl::StrCat("cannot write ", out));
  const int32_t header[2] = {static_cast<int32_t>(ids.size()),
                             static_cast<int32_t>(model->info().n_vocab)};
  bool ok = std::fwrite(header, sizeof(header), 1, f) == 1 &&
            std::fwrite(logits->data(), sizeof(float), logits->size(), f) == logits->size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), out.c_str()) != 0) {
    std::remove(tmp.c_str());
    return Fail("logits", absl::StrCat("cannot write ", out, " (disk full?)"));
  }
  std::fprintf(stderr, "moex logits: %zu positions x %lld logits -> %s (%.1f tokens/s)\n",
               ids.size(), static_cast<long long>(model->info().n_vocab), out.c_str(),
               (*session)->stats().prefill_tps());
  return 0;
}

int CmdRun(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv,
               WithDevice(WithSampling(
                   {"model", "tokens", "prompt", "n-predict", "threads", "ctx-size", "trace"})),
               {"help", "json", "ignore-eos"}, &err)) {
    return Usage("run", err);
  }
  if (a.Has("help")) {
    std::fputs(kRunHelp, stdout);
    std::fputs(kDeviceHelp, stdout);
    return 0;
  }
  if (a.Str("model").empty()) return Usage("run", "no model file given (-m MODEL.gguf)");
  if (a.Has("prompt") && a.Has("tokens")) {
    return Usage("run", "give the prompt with one of -p TEXT and --tokens IDS, not both");
  }
  std::vector<int32_t> ids;
  if (!a.Has("prompt") && !ParseIdList(a.Str("tokens"), &ids)) {
    return Usage("run",
                 "--tokens needs a comma-separated list of ids, got '" + a.Str("tokens") + "'");
  }
  GenerateOptions go;
  go.max_tokens = static_cast<int32_t>(a.Int("n-predict", 32, &err));
  go.stop_at_eos = !a.Has("ignore-eos");
  ParseSampling(a, &go.sampling, &err);
  SessionOptions so;
  so.context = a.Int("ctx-size", 0, &err);
  ParseKv(a, &so);
  if (std::string e = ParseDevice(a, &so); !e.empty()) return Usage("run", e);
  const int threads = static_cast<int>(a.Int("threads", 0, &err));
  if (!err.empty()) return Usage("run", err);
  std::unique_ptr<Model> model = OpenModel(a, threads, &err);
  if (!model) return Fail("run", err);
  const Tokenizer* tokenizer = model->tokenizer();
  if (a.Has("prompt")) {
    if (tokenizer == nullptr) {
      return Fail("run", a.Str("model") +
                             " has no tokenizer (no tokenizer.ggml.* keys); give "
                             "the prompt as token ids with --tokens");
    }
    EncodeOptions eo;
    eo.parse_special = true;
    absl::StatusOr<std::vector<int32_t>> enc = tokenizer->Encode(a.Str("prompt"), eo);
    if (!enc.ok()) return Fail("run", std::string(enc.status().message()));
    ids = std::move(*enc);
    if (ids.empty()) return Usage("run", "the prompt -p is empty");
  }
  absl::StatusOr<std::unique_ptr<Session>> session = model->NewSession(so);
  if (!session.ok()) return Fail("run", std::string(session.status().message()));
  std::unique_ptr<RoutingRecorder> trace;
  if (a.Has("trace")) {
    absl::StatusOr<std::unique_ptr<RoutingRecorder>> r =
        RoutingRecorder::Start(a.Str("trace"), *model, session->get());
    if (!r.ok()) return Fail("run", std::string(r.status().message()));
    trace = std::move(*r);
    trace->Begin("run");
  }

  const bool json = a.Has("json");
  const Model& m = *model;
  // Human mode streams the text as it comes; the stream decoder holds back the bytes of a
  // character split across byte tokens until it is whole.
  std::unique_ptr<Tokenizer::StreamDecoder> stream;
  if (tokenizer != nullptr) {
    stream = std::make_unique<Tokenizer::StreamDecoder>(tokenizer->NewStreamDecoder());
  }
  absl::StatusOr<std::vector<int32_t>> out = (*session)->Generate(ids, go, [&](int32_t tok) {
    if (!json) {
      const int32_t one[1] = {tok};
      const std::string piece = stream ? stream->Push(tok) : m.Detokenize(one);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  });
  if (!out.ok()) return Fail("run", std::string(out.status().message()));
  if (trace) {
    absl::Status ts = trace->Close();
    if (!ts.ok()) return Fail("run", std::string(ts.message()));
  }
  if (!json && stream) std::fputs(stream->Flush().c_str(), stdout);
  const Stats& st = (*session)->stats();
  const DeviceStats dev = (*session)->device_stats();
  if (json) {
    std::printf(
        "{\"model\":%s,\"prompt_tokens\":%lld,\"tokens\":[%s],\"text\":%s,"
        "\"generated_tokens\":%lld,\"prefill_seconds\":%.6f,\"decode_seconds\":%.6f,"
        "\"prefill_tps\":%.3f,\"decode_tps\":%.3f,\"threads\":%d,\"kv_bytes\":%lld,"
        "\"kv_peak_bytes\":%lld,\"device\":%s,\"device_prefill_tps\":%.3f,"
        "\"device_decode_tps\":%.3f,\"hit_rate\":%.4f}\n",
        JsonString(m.info().path).c_str(), static_cast<long long>(st.prompt_tokens),
        absl::StrJoin(*out, ",").c_str(), JsonString(m.Detokenize(*out)).c_str(),
        static_cast<long long>(st.generated_tokens), st.prefill_seconds, st.decode_seconds,
        st.prefill_tps(), st.decode_tps(),
        static_cast<int>(a.Int("threads", PhysicalCores(), &err)),
        static_cast<long long>((*session)->kv_bytes()),
        static_cast<long long>((*session)->kv_peak_bytes()), JsonString(dev.device).c_str(),
        st.device_prefill_tps(), st.device_decode_tps(),
        dev.hits + dev.misses > 0 ? static_cast<double>(dev.hits) / (dev.hits + dev.misses) : 0.0);
  } else {
    std::printf("\n");
    std::fprintf(stderr,
                 "moex run: prompt %lld tokens at %.1f tokens/s, generated %lld at %.1f tokens/s\n",
                 static_cast<long long>(st.prompt_tokens), st.prefill_tps(),
                 static_cast<long long>(st.generated_tokens), st.decode_tps());
    if (absl::StartsWith(dev.device, "sim:")) {
      std::fprintf(stderr, "moex run: on %s: prompt at %.1f tokens/s, generated at %.1f tokens/s\n",
                   dev.device.c_str(), st.device_prefill_tps(), st.device_decode_tps());
    } else if (dev.device != "cpu") {
      std::fprintf(stderr, "moex run: on %s, %lld of %lld expert runs on the GPU\n",
                   dev.device.c_str(), static_cast<long long>(dev.hits),
                   static_cast<long long>(dev.hits + dev.misses));
    }
    if (!dev.note.empty()) std::fprintf(stderr, "moex run: %s\n", dev.note.c_str());
  }
  return 0;
}

}  // namespace moex::cli
