// Internals of moex::ChatTemplate (include/moex/chat.h): the chat-template families moex
// renders by hand, how a Jinja template text is recognised as one of them, and the
// renderers. Each renderer reproduces its family's official Jinja template for
// system/user/assistant/tool messages; the sources are cited next to each renderer and in
// tests/runtime/chat_template_test.cc.
#ifndef MOEX_RUNTIME_CHAT_TEMPLATE_H_
#define MOEX_RUNTIME_CHAT_TEMPLATE_H_

#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "moex/chat.h"

namespace moex::chat_internal {

enum class Family {
  kPlain,        // no template: "User: ...\nAssistant:" transcript
  kChatml,       // <|im_start|>role\n...<|im_end|>\n (Qwen1.5/Qwen2/Qwen2.5 MoE, OpenHermes)
  kQwen3,        // ChatML + <think> handling and the enable_thinking switch
  kMistral,      // [INST] ... [/INST] (Mistral/Mixtral Instruct)
  kLlama3,       // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
  kDeepseek,     // <｜User｜>...<｜Assistant｜>... (DeepSeek-V2.5/V3/R1)
  kDeepseekLlm,  // "User: ...\n\nAssistant: ..." (deepseek-llm, deepseek-moe,
                 // DeepSeek-V2(-Lite)-Chat)
  kTulu,         // <|user|>\n...\n<|assistant|>\n (Tulu 2/3, OLMoE-Instruct, OLMo-2)
};

// A family plus the details its template texts vary in. Immutable once built.
struct Style {
  Family family = Family::kPlain;
  // The template emits bos_token at the start (only the families whose templates may).
  bool emit_bos = false;

  // ChatML: a system prompt the template inserts when the conversation has none
  // (Qwen2: "You are a helpful assistant.", Qwen2.5: "You are Qwen, created by ...").
  std::string default_system;
  // ChatML: tool results are wrapped Qwen-style (<|im_start|>user\n<tool_response>...).
  bool qwen_tool_response = false;

  // Qwen3: the template has the enable_thinking switch.
  bool thinking_switch = false;
  // Qwen3-Thinking-2507 / QwQ: the generation prompt itself opens "<think>\n".
  bool gen_opens_think = false;

  // Mistral: the original v0.1 template ("[INST] " with no leading space, the answer
  // right after " [/INST]"), not the 2024 one (" [INST] ", " " before the answer).
  bool mistral_legacy = false;

  // Llama-3.1+: the system header always carries "Cutting Knowledge Date" / "Today Date".
  bool llama31_system_header = false;

  // DeepSeek-R1: earlier answers lose their "...</think>" part; the generation prompt
  // opens "<think>\n".
  bool strip_think = false;
  bool gen_think = false;
};

// The canonical name of a family ("chatml", "qwen3", ...).
std::string_view FamilyName(Family family);

// Recognises `text`. Sets `*warning` (never null) to a message when the text is empty or
// not recognised (the style is then kPlain), and clears it otherwise.
Style DetectStyle(std::string_view text, std::string* warning);

// The current official variant of the named family. kInvalidArgument for unknown names.
absl::StatusOr<Style> StyleByName(std::string_view name);

// Renders `messages` in `style`.
absl::StatusOr<std::string> RenderStyle(const Style& style, std::span<const ChatMessage> messages,
                                        const ChatTemplateOptions& options, const std::string& bos,
                                        const std::string& eos);

}  // namespace moex::chat_internal

#endif  // MOEX_RUNTIME_CHAT_TEMPLATE_H_
