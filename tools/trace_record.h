// Records a session's routing into a trace file (docs/TRACE_FORMAT.md) while it generates:
// `moex run --trace OUT` and `moex chat --trace OUT`. Each Begin .. End is one sequence of
// the trace, holding every token the session evaluates in between (prompt and generated;
// the last sampled token is never evaluated, so it has no routing). A sequence's tokens
// are numbered from the first position evaluated after Begin, so a chat turn that reuses
// the cached prefix of the conversation records only its new tokens.
#ifndef MOEX_TOOLS_TRACE_RECORD_H_
#define MOEX_TOOLS_TRACE_RECORD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "moex/moex.h"
#include "moex/trace.h"

namespace moex::cli {

class RoutingRecorder {
 public:
  // Creates `path` and observes `session`'s routing until Close (call it while the
  // session still exists: it removes the callback). Errors: not a mixture-of-experts model, or the
  // file cannot be created.
  static absl::StatusOr<std::unique_ptr<RoutingRecorder>> Start(const std::string& path,
                                                                const Model& model,
                                                                Session* session) {
    const ModelInfo& info = model.info();
    if (info.n_expert < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(info.path, ": not a mixture-of-experts model (no routing to trace)"));
    }
    TraceHeader h;
    h.model = info.name.empty() ? info.path : info.name;
    h.num_experts = static_cast<int32_t>(info.n_expert);
    h.top_k = static_cast<int32_t>(info.n_expert_used);
    h.num_layers = static_cast<int32_t>(info.n_layer);
    h.has_weights = true;
    absl::StatusOr<std::unique_ptr<TraceWriter>> w = TraceWriter::Create(path, h);
    if (!w.ok()) return w.status();
    std::unique_ptr<RoutingRecorder> r(new RoutingRecorder(std::move(*w), session));
    RoutingRecorder* self = r.get();
    session->SetRoutingCallback([self](const RoutingEvent& ev) { self->OnRouting(ev); });
    return r;
  }

  // The next tokens the session evaluates form the sequence `name`.
  void Begin(const std::string& name) {
    name_ = name;
    pending_ = true;
  }
  // Ends the sequence (if any token was evaluated since Begin).
  absl::Status End() {
    pending_ = false;
    if (!open_ || !status_.ok()) return status_;
    open_ = false;
    status_ = writer_->EndSequence();
    return status_;
  }
  // Stops observing and writes the file out.
  absl::Status Close() {
    session_->SetRoutingCallback(nullptr);
    absl::Status st = End();
    absl::Status closed = writer_->Close();
    return st.ok() ? closed : st;
  }

 private:
  RoutingRecorder(std::unique_ptr<TraceWriter> writer, Session* session)
      : writer_(std::move(writer)), session_(session) {}

  void OnRouting(const RoutingEvent& ev) {
    if (!status_.ok()) return;
    if (pending_) {  // the first evaluation since Begin: its position is token 0
      pending_ = false;
      status_ = writer_->BeginSequence(name_);
      open_ = status_.ok();
      base_ = ev.pos0;
    }
    if (!open_) return;  // evaluations outside Begin .. End are not recorded
    for (int32_t t = 0; t < ev.n_tokens && status_.ok(); ++t) {
      status_ = writer_->Add(ev.pos0 - base_ + t, ev.layer, ev.experts + t * ev.k,
                             ev.weights ? ev.weights + t * ev.k : nullptr, nullptr);
    }
  }

  std::unique_ptr<TraceWriter> writer_;
  Session* session_;
  std::string name_;
  bool pending_ = false, open_ = false;
  int64_t base_ = 0;
  absl::Status status_;
};

}  // namespace moex::cli

#endif  // MOEX_TOOLS_TRACE_RECORD_H_
