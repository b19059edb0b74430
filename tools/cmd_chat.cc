// moex chat: an interactive conversation with streamed answers.
//
// Each turn renders the whole conversation with the model's chat template, tokenises it,
// and keeps the KV cache for the longest prefix it shares with what the session already
// holds (Session::TruncateTo), so only the new turn is prefilled. Works with stdin not a
// terminal (one message per line), so it can be scripted and tested through a pipe.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "moex/chat.h"
#include "moex/moex.h"
#include "moex/tokenizer.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/trace_record.h"

namespace moex::cli {
namespace {

constexpr char kHelp[] =
    "usage: moex chat -m MODEL [flags]\n"
    "  --system TEXT        system message\n"
    "  --chat-template NAME override the file's template (chatml qwen3 mistral llama3 deepseek\n"
    "                       deepseek-llm tulu plain)\n"
    "  --no-think           Qwen3: answer without reasoning\n"
    "  -n N                 cap each answer at N tokens (default 512)\n"
    "  -c N                 context size (default min(trained, 4096))\n"
    "  -t N                 threads (default: physical cores)\n"
    "  --temp X --top-k N --top-p X --min-p X --repeat-penalty X --repeat-last-n N --seed N\n"
    "  --kv-policy SPEC --kv-type T   KV-cache compression (see moex ppl --help)\n"
    "  --trace OUT          record the routing as a trace file, one sequence per turn (the\n"
    "                       turn's new prompt tokens and its answer; for moex lrc)\n"
    "In the chat: /help /reset /stats /save FILE /exit; Ctrl-C stops the current answer,\n"
    "Ctrl-D (end of input) quits. Without a terminal, each input line is one message.\n";

constexpr char kCommands[] =
    "/help        this list\n"
    "/reset       start a new conversation (keeps the system message)\n"
    "/stats       speed of the last answer and context use\n"
    "/save FILE   write the conversation as JSON\n"
    "/exit        quit (also Ctrl-D)\n";

std::atomic<bool> g_interrupted{false};

void OnSigint(int) {
  g_interrupted.store(true);
  static const char kMsg[] = "\n[stopping]\n";
  (void)!write(STDERR_FILENO, kMsg, sizeof(kMsg) - 1);
}

struct Turn {
  int64_t prefilled = 0;  // tokens evaluated for the prompt of this turn
  int64_t reused = 0;     // tokens of the prompt already in the KV cache
  Stats stats;
};

class Chat {
 public:
  Chat(Model* model, std::unique_ptr<Session> session, ChatTemplate tmpl, ChatTemplateOptions topts,
       GenerateOptions gen, std::string bos_text)
      : model_(model),
        session_(std::move(session)),
        tmpl_(std::move(tmpl)),
        topts_(std::move(topts)),
        gen_(gen),
        bos_text_(std::move(bos_text)) {}

  void SetSystem(const std::string& system) {
    if (!system.empty()) messages_.push_back({"system", system});
    n_system_ = messages_.size();
  }

  void Reset() {
    messages_.resize(n_system_);
    session_->Reset();
  }

  // Answers `user`, streaming the text to stdout. Errors are reported and the
  // conversation is left as before the turn.
  absl::Status Answer(const std::string& user) {
    messages_.push_back({"user", user});
    absl::StatusOr<std::string> prompt = tmpl_.Render(messages_, topts_);
    if (!prompt.ok()) {
      messages_.pop_back();
      return prompt.status();
    }
    EncodeOptions eo;
    eo.parse_special = true;  // the template writes control tokens as text, BOS included
    // where the family wants one; otherwise a BOS is added if the vocabulary asks for it.
    eo.add_bos = bos_text_.empty() || !prompt->starts_with(bos_text_);
    absl::StatusOr<std::vector<int32_t>> ids = model_->tokenizer()->Encode(*prompt, eo);
    if (!ids.ok()) {
      messages_.pop_back();
      return ids.status();
    }
    // Reuse the cache for the prefix shared with the session; at least one token must be
    // evaluated to get logits.
    const std::vector<int32_t>& have = session_->tokens();
    size_t common = 0;
    while (common < have.size() && common < ids->size() && have[common] == (*ids)[common]) {
      ++common;
    }
    if (common == ids->size()) --common;
    const int64_t room = session_->context() - static_cast<int64_t>(ids->size());
    if (room < 1) {
      messages_.pop_back();
      return absl::OutOfRangeError(absl::StrCat(
          "the conversation (", ids->size(), " tokens) fills the context of ", session_->context(),
          " tokens: /reset to start over, or restart with a larger -c"));
    }
    session_->TruncateTo(static_cast<int64_t>(common));
    GenerateOptions g = gen_;
    g.max_tokens = static_cast<int32_t>(std::min<int64_t>(g.max_tokens, room));
    auto stream = model_->tokenizer()->NewStreamDecoder();
    std::string answer;
    g_interrupted.store(false);
    absl::StatusOr<std::vector<int32_t>> out =
        session_->Generate(std::span<const int32_t>(*ids).subspan(common), g, [&](int32_t tok) {
          if (model_->tokenizer()->IsEog(tok)) return false;
          const std::string piece = stream.Push(tok);
          answer += piece;
          std::fwrite(piece.data(), 1, piece.size(), stdout);
          std::fflush(stdout);
          return !g_interrupted.load();
        });
    if (!out.ok()) {
      messages_.pop_back();
      session_->TruncateTo(static_cast<int64_t>(common));
      return out.status();
    }
    const std::string tail = stream.Flush();
    answer += tail;
    std::fputs(tail.c_str(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    // Stored trimmed, as chat templates expect content (the plain template writes
    // "Assistant: " + content): the re-rendered turn then matches the generated tokens
    // and its cache is reused.
    messages_.push_back({"assistant", std::string(absl::StripAsciiWhitespace(answer))});
    last_.prefilled = static_cast<int64_t>(ids->size() - common);
    last_.reused = static_cast<int64_t>(common);
    last_.stats = session_->stats();
    const bool capped =
        static_cast<int64_t>(out->size()) >= g.max_tokens && g.max_tokens < gen_.max_tokens;
    if (capped) std::fprintf(stderr, "[the context is full: /reset to go on]\n");
    return absl::OkStatus();
  }

  std::string StatsLine() const {
    const Stats& s = last_.stats;
    char buf[256];
    std::snprintf(buf, sizeof(buf),
                  "[prefill %lld tokens (%lld reused) at %.1f tok/s, %lld tokens at %.1f tok/s, "
                  "context %lld/%lld]",
                  static_cast<long long>(last_.prefilled), static_cast<long long>(last_.reused),
                  s.prefill_tps(), static_cast<long long>(s.generated_tokens), s.decode_tps(),
                  static_cast<long long>(session_->position()),
                  static_cast<long long>(session_->context()));
    return buf;
  }

  absl::Status Save(const std::string& path) const {
    std::ofstream f(path);
    if (!f) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
    f << "{\"model\":" << JsonString(model_->info().path)
      << ",\"template\":" << JsonString(std::string(tmpl_.name())) << ",\"messages\":[";
    for (size_t i = 0; i < messages_.size(); ++i) {
      f << (i ? "," : "") << "{\"role\":" << JsonString(messages_[i].role)
        << ",\"content\":" << JsonString(messages_[i].content) << "}";
    }
    f << "]}\n";
    f.close();
    if (!f) return absl::DataLossError(absl::StrCat("writing ", path, " failed (disk full?)"));
    return absl::OkStatus();
  }

 private:
  Model* model_;
  std::unique_ptr<Session> session_;
  ChatTemplate tmpl_;
  ChatTemplateOptions topts_;
  GenerateOptions gen_;
  std::string bos_text_;
  std::vector<ChatMessage> messages_;
  size_t n_system_ = 0;
  Turn last_;
};

}  // namespace

int CmdChat(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv,
               WithDevice(WithSampling({"model", "system", "chat-template", "n-predict", "ctx-size",
                                        "threads", "trace"})),
               {"help", "no-think"}, &err)) {
    return Usage("chat", err);
  }
  if (a.Has("help")) {
    std::fputs(kHelp, stdout);
    std::fputs(kDeviceHelp, stdout);
    return 0;
  }
  if (a.Str("model").empty()) return Usage("chat", "no model file given (-m MODEL.gguf)");
  GenerateOptions gen;
  gen.max_tokens = static_cast<int32_t>(a.Int("n-predict", 512, &err));
  ParseSampling(a, &gen.sampling, &err);
  SessionOptions so;
  so.context = a.Int("ctx-size", 0, &err);
  ParseKv(a, &so);
  if (std::string e = ParseDevice(a, &so); !e.empty()) return Usage("chat", e);
  ModelOptions mo;
  mo.threads = static_cast<int>(a.Int("threads", 0, &err));
  if (!err.empty()) return Usage("chat", err);
  if (gen.max_tokens <= 0) return Usage("chat", "-n must be positive");

  std::fprintf(stderr, "moex chat: loading %s ...\n", a.Str("model").c_str());
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Open(a.Str("model"), mo);
  if (!model.ok()) return Fail("chat", std::string(model.status().message()));
  const Tokenizer* tok = (*model)->tokenizer();
  if (tok == nullptr) return Fail("chat", a.Str("model") + " has no tokenizer: chat needs one");
  ChatTemplateOptions topts;
  topts.enable_thinking = !a.Has("no-think");
  topts.override_name = a.Str("chat-template");
  auto piece = [tok](int32_t id) { return id >= 0 ? std::string(tok->Piece(id)) : ""; };
  absl::StatusOr<ChatTemplate> tmpl = ChatTemplate::Resolve((*model)->info().chat_template, topts,
                                                            piece(tok->bos()), piece(tok->eos()));
  if (!tmpl.ok()) return Usage("chat", std::string(tmpl.status().message()));
  if (!tmpl->warning().empty()) {
    std::fprintf(stderr, "moex chat: warning: %s\n", std::string(tmpl->warning()).c_str());
  }
  absl::StatusOr<std::unique_ptr<Session>> session = (*model)->NewSession(so);
  if (!session.ok()) return Fail("chat", std::string(session.status().message()));
  if (const DeviceStats d = (*session)->device_stats(); d.device != "cpu" || !d.note.empty()) {
    std::fprintf(stderr, "moex chat: on %s%s%s\n", d.device.c_str(), d.note.empty() ? "" : ": ",
                 d.note.c_str());
  }
  const ModelInfo& info = (*model)->info();
  std::fprintf(stderr,
               "moex chat: %s, %lld layers, %lld experts (top-%lld), template %s, "
               "context %lld. /help for commands.\n",
               info.architecture.c_str(), static_cast<long long>(info.n_layer),
               static_cast<long long>(info.n_expert), static_cast<long long>(info.n_expert_used),
               std::string(tmpl->name()).c_str(), static_cast<long long>((*session)->context()));

  std::unique_ptr<RoutingRecorder> trace;
  if (a.Has("trace")) {
    absl::StatusOr<std::unique_ptr<RoutingRecorder>> r =
        RoutingRecorder::Start(a.Str("trace"), **model, session->get());
    if (!r.ok()) return Fail("chat", std::string(r.status().message()));
    trace = std::move(*r);
  }
  int turns = 0;
  Chat chat(model->get(), std::move(*session), std::move(*tmpl), topts, gen, piece(tok->bos()));
  chat.SetSystem(a.Str("system"));
  struct sigaction sa = {};
  sa.sa_handler = OnSigint;
  sa.sa_flags = SA_RESTART;  // a Ctrl-C at the prompt does not end the program
  sigaction(SIGINT, &sa, nullptr);

  const bool tty = isatty(STDIN_FILENO);
  std::string line;
  while (true) {
    if (tty) std::fputs("> ", stdout), std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    if (line[0] == '/') {
      const std::string cmd = line.substr(0, line.find(' '));
      const std::string arg =
          line.find(' ') == std::string::npos ? "" : line.substr(line.find(' ') + 1);
      if (cmd == "/exit" || cmd == "/quit") break;
      if (cmd == "/help") {
        std::fputs(kCommands, stdout);
      } else if (cmd == "/reset") {
        chat.Reset();
        std::fputs("[new conversation]\n", stdout);
      } else if (cmd == "/stats") {
        std::printf("%s\n", chat.StatsLine().c_str());
      } else if (cmd == "/save") {
        absl::Status st =
            arg.empty() ? absl::InvalidArgumentError("/save needs a file name") : chat.Save(arg);
        std::printf("%s\n", st.ok() ? ("[saved to " + arg + "]").c_str()
                                    : std::string(st.message()).c_str());
      } else {
        std::printf("unknown command %s (/help lists them)\n", cmd.c_str());
      }
      std::fflush(stdout);
      continue;
    }
    if (trace) trace->Begin(absl::StrCat("turn ", turns++));
    absl::Status st = chat.Answer(line);
    if (trace) {  // a failed turn keeps what it evaluated (every layer of those tokens)
      absl::Status ts = trace->End();
      if (st.ok()) st = ts;
    }
    if (!st.ok()) {
      std::fprintf(stderr, "moex chat: %s\n", std::string(st.message()).c_str());
      continue;
    }
    std::fprintf(stderr, "%s\n", chat.StatsLine().c_str());
  }
  if (trace) {
    absl::Status st = trace->Close();
    if (!st.ok()) return Fail("chat", std::string(st.message()));
  }
  return 0;
}

}  // namespace moex::cli
