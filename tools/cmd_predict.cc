// moex predict: how well each expert predictor guesses later layers' experts on a text.
//
// The text is cut into windows of -c tokens (BOS + c - 1), each its own sequence,
// prefilled; every MoE layer's true routing scores the guesses made 1..--distance layers
// before it (recall@k; with k guessed and k true, precision is the same number).
#include <cstdio>
#include <fstream>
#include <map>
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
    "usage: moex predict -m MODEL --file TEXT [-c N] [--distance D] [--max-windows N] [--json]\n"
    "  -c N            window in tokens, BOS included        (default 256)\n"
    "  --distance D    guess layers l+1 .. l+D               (default 3)\n"
    "  --json          {\"predictors\":{NAME:{\"<d>\":{\"recall\",\"precision\",\"samples\"}}},\n"
    "                   \"layers\":[{\"layer\",NAME:{\"<d>\":recall}}]}\n";

}  // namespace

int CmdPredict(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv, {"model", "file", "ctx-size", "distance", "max-windows", "threads"},
               {"help", "json"}, &err)) {
    return Usage("predict", err);
  }
  if (a.Has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (a.Str("model").empty()) return Usage("predict", "no model file given (-m MODEL.gguf)");
  if (a.Str("file").empty()) return Usage("predict", "no text given (--file TEXT)");
  const int64_t ctx = a.Int("ctx-size", 256, &err);
  const int64_t distance = a.Int("distance", 3, &err);
  const int64_t max_windows = a.Int("max-windows", -1, &err);
  ModelOptions mo;
  mo.threads = static_cast<int>(a.Int("threads", 0, &err));
  if (!err.empty()) return Usage("predict", err);
  if (ctx < 2 || distance < 1) return Usage("predict", "-c >= 2 and --distance >= 1");

  std::string text;
  if (!ReadFile(a.Str("file"), &text)) return Fail("predict", "cannot read " + a.Str("file"));
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Open(a.Str("model"), mo);
  if (!model.ok()) return Fail("predict", std::string(model.status().message()));
  if ((*model)->info().n_expert == 0) return Fail("predict", a.Str("model") + " has no experts");
  const Tokenizer* tok = (*model)->tokenizer();
  if (tok == nullptr) return Fail("predict", a.Str("model") + " has no tokenizer");
  EncodeOptions eo;
  eo.add_bos = false;
  absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text, eo);
  if (!ids.ok()) return Fail("predict", std::string(ids.status().message()));
  SessionOptions so;
  so.context = ctx;
  absl::StatusOr<std::unique_ptr<Session>> session = (*model)->NewSession(so);
  if (!session.ok()) return Fail("predict", std::string(session.status().message()));
  Session& s = **session;
  s.EnablePredictorAccuracy(static_cast<int>(distance));
  const int64_t body = ctx - (tok->bos() >= 0 ? 1 : 0);
  int64_t windows = 0;
  for (const std::vector<int32_t>& w : TextWindows(*ids, tok->bos(), ctx, body, max_windows)) {
    s.Reset();
    absl::StatusOr<std::vector<float>> l = s.Evaluate(w);
    if (!l.ok()) return Fail("predict", std::string(l.status().message()));
    ++windows;
  }
  if (windows == 0) return Fail("predict", "the text is shorter than one window");

  const std::vector<PredictorAccuracy> acc = s.predictor_accuracy();
  if (a.Has("json")) {
    // Model-level figures by predictor and distance, then per layer.
    std::map<std::string, std::string> model_level;
    std::map<int32_t, std::map<std::string, std::string>> per_layer;
    for (const PredictorAccuracy& p : acc) {
      if (p.layer < 0) {
        std::string& o = model_level[p.predictor];
        o += absl::StrCat(o.empty() ? "" : ",", "\"", p.distance, "\":{\"recall\":", p.recall,
                          ",\"precision\":", p.recall, ",\"samples\":", p.samples, "}");
      } else {
        std::string& o = per_layer[p.layer][p.predictor];
        o += absl::StrCat(o.empty() ? "" : ",", "\"", p.distance, "\":", p.recall);
      }
    }
    std::string out = absl::StrCat("{\"model\":", JsonString(a.Str("model")),
                                   ",\"windows\":", windows, ",\"ctx\":", ctx, ",\"predictors\":{");
    bool first = true;
    for (const auto& [name, body_json] : model_level) {
      out += absl::StrCat(first ? "" : ",", JsonString(name), ":{", body_json, "}");
      first = false;
    }
    out += "},\"layers\":[";
    first = true;
    for (const auto& [layer, preds] : per_layer) {
      out += absl::StrCat(first ? "" : ",", "{\"layer\":", layer);
      for (const auto& [name, body_json] : preds) {
        out += absl::StrCat(",", JsonString(name), ":{", body_json, "}");
      }
      out += "}";
      first = false;
    }
    std::printf("%s]}\n", out.c_str());
  } else {
    std::printf("%lld windows of %lld tokens; recall@%lld of the guessed experts\n",
                (long long)windows, (long long)ctx, (long long)(*model)->info().n_expert_used);
    std::printf("%-24s %8s %8s %10s\n", "predictor", "distance", "recall", "samples");
    for (const PredictorAccuracy& p : acc) {
      if (p.layer >= 0) continue;
      std::printf("%-24s %8d %8.4f %10lld\n", p.predictor.c_str(), p.distance, p.recall,
                  (long long)p.samples);
    }
  }
  return 0;
}

}  // namespace moex::cli
