// Chat-template families: recognition from the Jinja text, and hand-written renderers.
//
// Why hand-written renderers rather than a Jinja interpreter: the families moex serves are
// few and their templates are stable, while real templates use a wide slice of Jinja
// (namespaces, slicing, Python string methods, tojson); a renderer per family is exact for
// the conversations a chat produces and cannot fail at run time on an unsupported construct.
// Each renderer below follows its official template line by line; the template texts and
// expected outputs are in tests/runtime/chat_template_test.cc.
#include "runtime/chat_template.h"

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "runtime/core/status_macros.h"

namespace moex::chat_internal {
namespace {

// Debian's Abseil has its own string_view, so absl::StrAppend does not take
// std::string_view; this appends any mix of string-like parts.
template <typename... Parts>
void Append(std::string* out, const Parts&... parts) {
  (out->append(std::string_view(parts)), ...);
}

bool Has(std::string_view text, std::string_view needle) {
  return text.find(needle) != std::string_view::npos;
}

// Python's str.lstrip/rstrip/strip with an explicit character set.
std::string_view LStrip(std::string_view s, std::string_view chars) {
  size_t b = s.find_first_not_of(chars);
  return b == std::string_view::npos ? std::string_view() : s.substr(b);
}
std::string_view RStrip(std::string_view s, std::string_view chars) {
  size_t e = s.find_last_not_of(chars);
  return e == std::string_view::npos ? std::string_view() : s.substr(0, e + 1);
}
std::string_view Strip(std::string_view s, std::string_view chars) {
  return RStrip(LStrip(s, chars), chars);
}

// Jinja's `trim` filter is Python's str.strip(): ASCII whitespace (Unicode spaces are rare
// enough in chat text that matching them is not worth a table).
constexpr std::string_view kWhitespace = " \t\n\r\v\f";
std::string Trim(std::string_view s) { return std::string(Strip(s, kWhitespace)); }

// Splits a Qwen3 / DeepSeek-R1 answer "<think>reasoning</think>answer" the way their
// templates do: the answer is what follows the last "</think>"; the reasoning is what lies
// between the last "<think>" and the first "</think>".
struct ThinkSplit {
  std::string_view reasoning;
  std::string_view answer;
};
ThinkSplit SplitThink(std::string_view content) {
  constexpr std::string_view kClose = "</think>";
  ThinkSplit out{std::string_view(), content};
  size_t first_close = content.find(kClose);
  if (first_close == std::string_view::npos) return out;
  out.answer = content.substr(content.rfind(kClose) + kClose.size());
  std::string_view before = RStrip(content.substr(0, first_close), "\n");
  size_t open = before.rfind("<think>");
  if (open != std::string_view::npos) before = before.substr(open + 7);
  out.reasoning = LStrip(before, "\n");
  return out;
}

bool IsToolResponse(std::string_view content) {
  return content.starts_with("<tool_response>") && content.ends_with("</tool_response>");
}

// Checks what every family requires: a non-empty conversation of known roles, and "tool"
// messages only where the family has a place for them.
absl::Status CheckRoles(const Style& style, std::span<const ChatMessage> messages) {
  if (messages.empty()) {
    return absl::InvalidArgumentError("chat template: the conversation has no messages");
  }
  const bool tool_ok = style.family == Family::kChatml || style.family == Family::kQwen3 ||
                       style.family == Family::kDeepseek || style.family == Family::kPlain;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role == "system" || role == "user" || role == "assistant") continue;
    if (role == "tool") {
      if (tool_ok) continue;
      return absl::InvalidArgumentError(
          absl::StrCat("chat template '", std::string(FamilyName(style.family)), "': message ", i,
                       " has role 'tool', which this template does not support"));
    }
    return absl::InvalidArgumentError(absl::StrCat("chat template: message ", i,
                                                   " has unknown role '", role,
                                                   "' (expected system, user, assistant or tool)"));
  }
  return absl::OkStatus();
}

// Qwen's tool results: consecutive "tool" messages share one user turn.
void AppendQwenToolResponse(std::span<const ChatMessage> messages, size_t i, std::string* out) {
  if (i == 0 || messages[i - 1].role != "tool") *out += "<|im_start|>user";
  Append(out, "\n<tool_response>\n", messages[i].content, "\n</tool_response>");
  if (i + 1 == messages.size() || messages[i + 1].role != "tool") *out += "<|im_end|>\n";
}

// ChatML as in Qwen1.5/Qwen2/Qwen2.5 and OpenHermes:
//   {% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' +
//   message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}
//   {{ '<|im_start|>assistant\n' }}{% endif %}
// plus Qwen's default system prompt when the conversation has none.
std::string RenderChatml(const Style& style, std::span<const ChatMessage> messages,
                         const ChatTemplateOptions& options) {
  std::string out;
  if (!style.default_system.empty() && messages[0].role != "system") {
    Append(&out, "<|im_start|>system\n", style.default_system, "<|im_end|>\n");
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "tool" && style.qwen_tool_response) {
      AppendQwenToolResponse(messages, i, &out);
    } else {
      Append(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
    }
  }
  if (options.add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

// Qwen3 (Qwen/Qwen3-30B-A3B tokenizer_config.json chat_template, tools absent): earlier
// answers are shown without their reasoning; an answer after the last user query keeps a
// <think> block; enable_thinking=false closes an empty <think> block in the prompt.
std::string RenderQwen3(const Style& style, std::span<const ChatMessage> messages,
                        const ChatTemplateOptions& options) {
  std::string out;
  const size_t n = messages.size();
  if (messages[0].role == "system") {
    Append(&out, "<|im_start|>system\n", messages[0].content, "<|im_end|>\n");
  }
  // ns.last_query_index: the last user message that is not a wrapped tool response.
  size_t last_query = n - 1;
  for (size_t i = n; i-- > 0;) {
    if (messages[i].role == "user" && !IsToolResponse(messages[i].content)) {
      last_query = i;
      break;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      Append(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
    } else if (m.role == "assistant") {
      ThinkSplit split = SplitThink(m.content);
      std::string_view content = m.content;
      if (Has(m.content, "</think>")) content = LStrip(split.answer, "\n");
      if (i > last_query && (i + 1 == n || !split.reasoning.empty())) {
        Append(&out, "<|im_start|>assistant\n<think>\n", Strip(split.reasoning, "\n"),
               "\n</think>\n\n", LStrip(content, "\n"));
      } else {
        Append(&out, "<|im_start|>assistant\n", content);
      }
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      AppendQwenToolResponse(messages, i, &out);
    }
  }
  if (options.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (style.thinking_switch && !options.enable_thinking) out += "<think>\n\n</think>\n\n";
    if (style.gen_opens_think) out += "<think>\n";
  }
  return out;
}

// Mistral / Mixtral Instruct. The current mistralai/Mixtral-8x7B-Instruct-v0.1 template:
//   bos, then per message after an optional system one: user -> ' [INST] ' + content +
//   ' [/INST]' (the first one prefixed by system + '\n\n'), assistant -> ' ' + content + eos.
// The original v0.1 template wrote '[INST] ' and the answer with no space, and rejected a
// system message; moex merges the system message the way the current template does.
absl::StatusOr<std::string> RenderMistral(const Style& style, std::span<const ChatMessage> messages,
                                          const std::string& bos, const std::string& eos) {
  std::string out;
  size_t start = 0;
  const std::string* system = nullptr;
  if (messages[0].role == "system") {
    system = &messages[0].content;
    start = 1;
  }
  if (style.emit_bos) out += bos;
  for (size_t i = start; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const size_t k = i - start;
    if ((m.role == "user") != (k % 2 == 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chat template 'mistral': after the optional first system message, roles must "
          "alternate user/assistant/user/... starting with user; message ",
          i, " is '", m.role, "'"));
    }
    if (m.role == "user") {
      out += style.mistral_legacy ? "[INST] " : " [INST] ";
      if (k == 0 && system != nullptr) Append(&out, *system, "\n\n");
      Append(&out, m.content, " [/INST]");
    } else if (m.role == "assistant") {
      Append(&out, style.mistral_legacy ? "" : " ", m.content, eos);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "chat template 'mistral': only user and assistant roles are supported, with the "
          "exception of an initial optional system message; message ",
          i, " is '", m.role, "'"));
    }
  }
  return out;
}

// Llama-3 (meta-llama/Meta-Llama-3-8B-Instruct):
//   per message: '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + content|trim +
//   '<|eot_id|>', bos before the first; the prompt ends with the assistant header.
// Llama-3.1+ always opens with a system header carrying the knowledge-cutoff lines.
std::string RenderLlama3(const Style& style, std::span<const ChatMessage> messages,
                         const ChatTemplateOptions& options, const std::string& bos) {
  auto header = [](std::string_view role) {
    return absl::StrCat("<|start_header_id|>", std::string(role), "<|end_header_id|>\n\n");
  };
  std::string out;
  if (style.emit_bos) out += bos;
  size_t start = 0;
  if (style.llama31_system_header) {
    std::string system;
    if (messages[0].role == "system") {
      system = Trim(messages[0].content);
      start = 1;
    }
    // The template's date_string default; moex passes no date, as transformers does not.
    Append(&out, header("system"), "Cutting Knowledge Date: December 2023\n",
           "Today Date: 26 Jul 2024\n\n", system, "<|eot_id|>");
  }
  for (size_t i = start; i < messages.size(); ++i) {
    Append(&out, header(messages[i].role), Trim(messages[i].content), "<|eot_id|>");
  }
  if (options.add_generation_prompt) out += header("assistant");
  return out;
}

// DeepSeek-V2.5/V3/R1 (deepseek-ai/DeepSeek-V3 tokenizer_config.json): all system messages
// first (joined by '\n\n'), then '<｜User｜>' + content, '<｜Assistant｜>' + content +
// '<｜end▁of▁sentence｜>', tool outputs in <｜tool▁outputs▁begin｜> blocks.
std::string RenderDeepseek(const Style& style, std::span<const ChatMessage> messages,
                           const ChatTemplateOptions& options, const std::string& bos) {
  constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
  std::vector<std::string_view> systems;
  for (const ChatMessage& m : messages) {
    if (m.role == "system") systems.push_back(m.content);
  }
  std::string out;
  if (style.emit_bos) out += bos;
  for (size_t i = 0; i < systems.size(); ++i) Append(&out, i == 0 ? "" : "\n\n", systems[i]);
  bool is_tool = false;
  bool is_output_first = true;  // as in the template, never reset after the first output
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      is_tool = false;
      Append(&out, "<｜User｜>", m.content);
    } else if (m.role == "assistant") {
      if (is_tool) {
        Append(&out, "<｜tool▁outputs▁end｜>", m.content, kEos);
        is_tool = false;
      } else {
        std::string_view content = m.content;
        if (style.strip_think && Has(content, "</think>")) content = SplitThink(content).answer;
        Append(&out, "<｜Assistant｜>", content, kEos);
      }
    } else if (m.role == "tool") {
      is_tool = true;
      if (is_output_first) {
        Append(&out, "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>", m.content,
               "<｜tool▁output▁end｜>");
        is_output_first = false;
      } else {
        Append(&out, "\n<｜tool▁output▁begin｜>", m.content, "<｜tool▁output▁end｜>");
      }
    }
  }
  if (is_tool) out += "<｜tool▁outputs▁end｜>";
  if (options.add_generation_prompt && !is_tool) {
    out += "<｜Assistant｜>";
    if (style.gen_think) out += "<think>\n";
  }
  return out;
}

// deepseek-llm-7b-chat, deepseek-moe-16b-chat, DeepSeek-V2-Lite-Chat:
//   bos; user -> 'User: ' + content + '\n\n'; assistant -> 'Assistant: ' + content + eos;
//   system -> content + '\n\n'; generation prompt 'Assistant:'.
std::string RenderDeepseekLlm(const Style& style, std::span<const ChatMessage> messages,
                              const ChatTemplateOptions& options, const std::string& bos,
                              const std::string& eos) {
  std::string out;
  if (style.emit_bos) out += bos;
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      Append(&out, "User: ", m.content, "\n\n");
    } else if (m.role == "assistant") {
      Append(&out, "Assistant: ", m.content, eos);
    } else if (m.role == "system") {
      Append(&out, m.content, "\n\n");
    }
  }
  if (options.add_generation_prompt) out += "Assistant:";
  return out;
}

// Tulu 2/3 (allenai/Llama-3.1-Tulu-3-8B; OLMoE-1B-7B-0924-Instruct and OLMo-2 use it with a
// leading bos_token): '<|system|>\n' / '<|user|>\n' + content + '\n'; '<|assistant|>\n' +
// content + eos, plus '\n' unless it is the last message; then '<|assistant|>\n'.
std::string RenderTulu(const Style& style, std::span<const ChatMessage> messages,
                       const ChatTemplateOptions& options, const std::string& bos,
                       const std::string& eos) {
  std::string out;
  if (style.emit_bos) out += bos;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool last = i + 1 == messages.size();
    if (m.role == "system" || m.role == "user") {
      Append(&out, "<|", m.role, "|>\n", m.content, "\n");
    } else if (m.role == "assistant") {
      Append(&out, "<|assistant|>\n", m.content, eos, last ? "" : "\n");
    }
    if (last && options.add_generation_prompt) out += "<|assistant|>\n";
  }
  return out;
}

// No template: a transcript a base model continues sensibly ("User: ...\nAssistant:").
std::string RenderPlain(std::span<const ChatMessage> messages, const ChatTemplateOptions& options) {
  std::string out;
  for (const ChatMessage& m : messages) {
    std::string label = m.role;
    label[0] = static_cast<char>(label[0] - 'a' + 'A');  // roles are checked lower-case words
    Append(&out, label, ": ", m.content, "\n");
  }
  if (options.add_generation_prompt) out += "Assistant:";
  return out;
}

// ChatML's default system prompt, when the template inserts one: the text of a literal
// '<|im_start|>system\n...<|im_end|>' with no expression inside.
std::string FindDefaultSystem(std::string_view text) {
  constexpr std::string_view kOpen = "<|im_start|>system\n";
  for (size_t pos = text.find(kOpen); pos != std::string_view::npos;
       pos = text.find(kOpen, pos + 1)) {
    size_t begin = pos + kOpen.size();
    size_t end = text.find("<|im_end|>", begin);
    if (end == std::string_view::npos) break;
    std::string_view body = text.substr(begin, end - begin);
    if (!body.empty() && body.find_first_of("'\"{}+") == std::string_view::npos) {
      return std::string(body);
    }
  }
  return "";
}

}  // namespace

std::string_view FamilyName(Family family) {
  switch (family) {
    case Family::kPlain:
      return "plain";
    case Family::kChatml:
      return "chatml";
    case Family::kQwen3:
      return "qwen3";
    case Family::kMistral:
      return "mistral";
    case Family::kLlama3:
      return "llama3";
    case Family::kDeepseek:
      return "deepseek";
    case Family::kDeepseekLlm:
      return "deepseek-llm";
    case Family::kTulu:
      return "tulu";
  }
  return "plain";
}

Style DetectStyle(std::string_view raw, std::string* warning) {
  warning->clear();
  Style style;
  if (Strip(raw, kWhitespace).empty()) {
    *warning =
        "the model file has no chat template (tokenizer.chat_template); using a plain "
        "'User: ... Assistant:' transcript, which an instruction-tuned model may not follow "
        "well; pass --chat-template NAME to choose one";
    return style;
  }
  // Template texts write newlines inside string literals as the two characters "\n";
  // matching on real newlines lets one pattern cover both spellings.
  const std::string text = absl::StrReplaceAll(std::string(raw), {{"\\n", "\n"}});
  style.emit_bos = Has(text, "bos_token");
  if (Has(text, "<｜User｜>")) {
    style.family = Family::kDeepseek;
    style.strip_think = Has(text, "</think>");
    style.gen_think = Has(text, "<｜Assistant｜><think>\n");
  } else if (Has(text, "<|im_start|>")) {
    if (Has(text, "enable_thinking") || Has(text, "<think>")) {
      style.family = Family::kQwen3;
      style.thinking_switch = Has(text, "enable_thinking");
      style.gen_opens_think = Has(text, "<|im_start|>assistant\n<think>\n'");
    } else {
      style.family = Family::kChatml;
      style.default_system = FindDefaultSystem(text);
      style.qwen_tool_response = Has(text, "<tool_response>");
    }
    style.emit_bos = false;  // ChatML templates do not emit bos_token
  } else if (Has(text, "<|start_header_id|>")) {
    style.family = Family::kLlama3;
    style.llama31_system_header = Has(text, "Cutting Knowledge Date");
  } else if (Has(text, "[INST]")) {
    style.family = Family::kMistral;
    style.mistral_legacy = !Has(text, "system_message");
  } else if (Has(text, "<|user|>") && Has(text, "<|assistant|>") && !Has(text, "<|end|>")) {
    style.family = Family::kTulu;
  } else if (Has(text, "User: ") && Has(text, "Assistant:")) {
    style.family = Family::kDeepseekLlm;
  } else {
    style = Style();
    *warning =
        "the model's chat template is not one moex recognises; using a plain "
        "'User: ... Assistant:' transcript; pass --chat-template NAME to choose one";
  }
  return style;
}

absl::StatusOr<Style> StyleByName(std::string_view name) {
  Style style;
  if (name == "plain") return style;
  if (name == "chatml") {
    style.family = Family::kChatml;
  } else if (name == "qwen3") {
    style.family = Family::kQwen3;
    style.thinking_switch = true;
  } else if (name == "mistral") {
    style.family = Family::kMistral;
    style.emit_bos = true;
  } else if (name == "llama3") {
    style.family = Family::kLlama3;
    style.emit_bos = true;
  } else if (name == "deepseek") {
    style.family = Family::kDeepseek;
    style.emit_bos = true;
  } else if (name == "deepseek-llm") {
    style.family = Family::kDeepseekLlm;
    style.emit_bos = true;
  } else if (name == "tulu") {
    style.family = Family::kTulu;  // Tulu 3's template has no bos_token
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown chat template '", std::string(name),
                     "' (known: ", absl::StrJoin(ChatTemplate::KnownNames(), ", "), ")"));
  }
  return style;
}

absl::StatusOr<std::string> RenderStyle(const Style& style, std::span<const ChatMessage> messages,
                                        const ChatTemplateOptions& options, const std::string& bos,
                                        const std::string& eos) {
  MOEX_RETURN_IF_ERROR(CheckRoles(style, messages));
  switch (style.family) {
    case Family::kPlain:
      return RenderPlain(messages, options);
    case Family::kChatml:
      return RenderChatml(style, messages, options);
    case Family::kQwen3:
      return RenderQwen3(style, messages, options);
    case Family::kMistral:
      return RenderMistral(style, messages, bos, eos);
    case Family::kLlama3:
      return RenderLlama3(style, messages, options, bos);
    case Family::kDeepseek:
      return RenderDeepseek(style, messages, options, bos);
    case Family::kDeepseekLlm:
      return RenderDeepseekLlm(style, messages, options, bos, eos);
    case Family::kTulu:
      return RenderTulu(style, messages, options, bos, eos);
  }
  return absl::InternalError("chat template: unhandled family");
}

}  // namespace moex::chat_internal

namespace moex {

ChatTemplate::ChatTemplate(std::shared_ptr<const chat_internal::Style> style, std::string bos,
                           std::string eos, std::string warning)
    : style_(std::move(style)),
      bos_(std::move(bos)),
      eos_(std::move(eos)),
      warning_(std::move(warning)) {}

absl::StatusOr<ChatTemplate> ChatTemplate::FromText(std::string_view jinja_text,
                                                    std::string bos_token, std::string eos_token) {
  std::string warning;
  auto style = std::make_shared<const chat_internal::Style>(
      chat_internal::DetectStyle(jinja_text, &warning));
  return ChatTemplate(std::move(style), std::move(bos_token), std::move(eos_token),
                      std::move(warning));
}

absl::StatusOr<ChatTemplate> ChatTemplate::ByName(std::string_view name, std::string bos_token,
                                                  std::string eos_token) {
  MOEX_ASSIGN_OR_RETURN(chat_internal::Style style, chat_internal::StyleByName(name));
  return ChatTemplate(std::make_shared<const chat_internal::Style>(std::move(style)),
                      std::move(bos_token), std::move(eos_token), "");
}

absl::StatusOr<ChatTemplate> ChatTemplate::Resolve(std::string_view jinja_text,
                                                   const ChatTemplateOptions& options,
                                                   std::string bos_token, std::string eos_token) {
  if (!options.override_name.empty()) {
    return ByName(options.override_name, std::move(bos_token), std::move(eos_token));
  }
  return FromText(jinja_text, std::move(bos_token), std::move(eos_token));
}

absl::StatusOr<std::string> ChatTemplate::Render(std::span<const ChatMessage> messages,
                                                 const ChatTemplateOptions& options) const {
  return chat_internal::RenderStyle(*style_, messages, options, bos_, eos_);
}

std::string_view ChatTemplate::name() const { return chat_internal::FamilyName(style_->family); }

std::vector<std::string> ChatTemplate::KnownNames() {
  return {"chatml", "qwen3", "mistral", "llama3", "deepseek", "deepseek-llm", "tulu", "plain"};
}

}  // namespace moex
