// moex trace: records the router's choices of a model on a text, as a trace file
// (docs/TRACE_FORMAT.md) for `moex lrc`.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "moex/moex.h"
#include "moex/trace.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace moex::cli {
namespace {

constexpr char kHelp[] =
    "usage: moex trace -m MODEL --file TEXT [--ctx N] [--decode] [--probs] [--predict D]\n"
    "                  -o OUT.trace\n"
    "  -m MODEL       a GGUF MoE model\n"
    "  --file TEXT    the text, tokenized with the model's tokenizer and cut into windows\n"
    "  --ctx N        window size in tokens: BOS + N-1 text tokens, each window its own\n"
    "                 sequence; a last, shorter window is dropped          (default: 256)\n"
    "  --max-windows N  stop after N windows                              (default: all)\n"
    "  --decode       run each window token by token (decode) instead of one prefill\n"
    "  --probs        also record the full router probabilities (large)\n"
    "  --predict D    also record the cross-layer gates' guesses for layers l+1 .. l+D\n"
    "                 (trace format version 2; `moex lrc` scores them)\n"
    "  -o OUT.trace   the trace file\n"
    "  -t N           threads                                   (default: physical cores)\n";

}  // namespace

int CmdTrace(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv, {"model", "file", "ctx", "output", "threads", "max-windows", "predict"},
               {"help", "decode", "probs"}, &err)) {
    return Usage("trace", err);
  }
  if (a.Has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (a.Str("model").empty()) return Usage("trace", "no model file given (-m MODEL.gguf)");
  if (a.Str("file").empty()) return Usage("trace", "no text given (--file TEXT)");
  if (a.Str("output").empty()) return Usage("trace", "no output file (-o OUT.trace)");
  const int64_t ctx = a.Int("ctx", 256, &err);
  const int64_t max_windows = a.Int("max-windows", -1, &err);
  const int threads = static_cast<int>(a.Int("threads", 0, &err));
  const int64_t predict = a.Int("predict", 0, &err);
  if (!err.empty()) return Usage("trace", err);
  if (ctx < 2 || ctx > (1 << 20)) return Usage("trace", "--ctx must be between 2 and 1048576");
  if (a.Has("predict") && (predict < 1 || predict > 4096)) {
    return Usage("trace", "--predict must be between 1 and 4096");
  }

  std::string text;
  if (!ReadFile(a.Str("file"), &text)) {
    return Fail("trace", absl::StrCat("cannot read ", a.Str("file")));
  }

  ModelOptions mo;
  mo.threads = threads;
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Open(a.Str("model"), mo);
  if (!model.ok()) return Fail("trace", std::string(model.status().message()));
  const ModelInfo& info = (*model)->info();
  if (info.n_expert < 1) {
    return Fail("trace", absl::StrCat(a.Str("model"), ": not a mixture-of-experts model"));
  }
  const Tokenizer* tok = (*model)->tokenizer();
  if (!tok) return Fail("trace", absl::StrCat(a.Str("model"), ": the file has no tokenizer"));
  EncodeOptions eo;
  eo.add_bos = false;  // each window gets its own BOS
  absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text, eo);
  if (!ids.ok()) return Fail("trace", std::string(ids.status().message()));

  const int64_t per_window = ctx - (info.bos_token >= 0 ? 1 : 0);
  const std::vector<std::vector<int32_t>> all_windows =
      TextWindows(*ids, info.bos_token, ctx, per_window, max_windows);
  const int64_t windows = static_cast<int64_t>(all_windows.size());
  if (windows == 0) {
    return Fail("trace", absl::StrCat(a.Str("file"), ": ", ids->size(),
                                      " tokens, fewer than one window of ", per_window));
  }

  TraceHeader h;
  h.model = info.name.empty() ? a.Str("model") : info.name;
  h.num_experts = info.n_expert;
  h.top_k = info.n_expert_used;
  h.num_layers = info.n_layer;
  h.has_weights = true;
  h.has_probs = a.Has("probs");
  // The gates guess layers l+1 .. l+D; the last layer is at most L-1 layers away.
  const int distance = static_cast<int>(std::min<int64_t>(predict, info.n_layer - 1));
  if (a.Has("predict") && distance < 1) {
    return Fail("trace", absl::StrCat(a.Str("model"), ": one MoE layer, nothing to predict"));
  }
  if (distance > 0) {
    h.predictors = {"cross-layer-gate", "cross-layer-gate-resid"};
    h.predict_distance = distance;
  }
  absl::StatusOr<std::unique_ptr<TraceWriter>> writer = TraceWriter::Create(a.Str("output"), h);
  if (!writer.ok()) return Fail("trace", std::string(writer.status().message()));

  SessionOptions so;
  so.context = ctx;
  absl::StatusOr<std::unique_ptr<Session>> session = (*model)->NewSession(so);
  if (!session.ok()) return Fail("trace", std::string(session.status().message()));
  absl::Status cb_status;
  (*session)->SetRoutingCallback([&](const RoutingEvent& ev) {
    for (int32_t t = 0; t < ev.n_tokens && cb_status.ok(); ++t) {
      cb_status =
          (*writer)->Add(ev.pos0 + t, ev.layer, ev.experts + t * ev.k, ev.weights + t * ev.k,
                         ev.probs ? ev.probs + static_cast<size_t>(t) * ev.n_expert : nullptr);
    }
  });
  if (distance > 0) {
    (*session)->SetPredictionCallback(distance, [&](const PredictionEvent& ev) {
      const auto it = std::find(h.predictors.begin(), h.predictors.end(), ev.predictor);
      if (it == h.predictors.end()) return;  // a predictor this trace does not record
      const int32_t p = static_cast<int32_t>(it - h.predictors.begin());
      for (int32_t t = 0; t < ev.n_tokens && cb_status.ok(); ++t) {
        cb_status = (*writer)->AddPrediction(ev.pos0 + t, ev.layer, p, ev.distance,
                                             ev.experts + static_cast<size_t>(t) * ev.k);
      }
    });
  }
  for (int64_t w = 0; w < windows; ++w) {
    const std::vector<int32_t>& window = all_windows[w];
    (*session)->Reset();
    absl::Status st = (*writer)->BeginSequence(std::to_string(w));
    if (!st.ok()) return Fail("trace", std::string(st.message()));
    if (a.Has("decode")) {
      for (size_t i = 0; i < window.size() && cb_status.ok(); ++i) {
        absl::StatusOr<std::vector<float>> r =
            (*session)->Evaluate(std::span<const int32_t>(&window[i], 1));
        if (!r.ok()) return Fail("trace", std::string(r.status().message()));
      }
    } else {
      absl::StatusOr<std::vector<float>> r = (*session)->Evaluate(window);
      if (!r.ok()) return Fail("trace", std::string(r.status().message()));
    }
    if (!cb_status.ok()) return Fail("trace", std::string(cb_status.message()));
    st = (*writer)->EndSequence();
    if (!st.ok()) return Fail("trace", std::string(st.message()));
    std::fprintf(stderr, "\rwindow %lld/%lld", static_cast<long long>(w + 1),
                 static_cast<long long>(windows));
  }
  absl::Status st = (*writer)->Close();
  if (!st.ok()) return Fail("trace", std::string(st.message()));
  const int64_t left = static_cast<int64_t>(ids->size()) - windows * per_window;
  std::fprintf(
      stderr, "\n%s: %lld windows of %lld tokens, %lld layers, top-%d of %d experts%s\n",
      a.Str("output").c_str(), static_cast<long long>(windows), static_cast<long long>(ctx),
      static_cast<long long>(info.n_layer), h.top_k, h.num_experts,
      left > 0 ? absl::StrCat("; ", left, " text tokens left over (not a full window)").c_str()
               : "");
  if (distance > 0) {
    std::fprintf(stderr, "guesses recorded for distances 1..%d (moex lrc scores them)\n", distance);
  }
  return 0;
}

}  // namespace moex::cli
