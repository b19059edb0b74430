// Chat templates: turn a conversation into the exact prompt text a model was trained on.
//
//   auto tmpl = moex::ChatTemplate::FromText(gguf_chat_template, bos, eos);
//   auto prompt = tmpl->Render(messages, {});   // "<|im_start|>user\nHi<|im_end|>\n..."
//
// A GGUF file carries its template as Jinja text (`tokenizer.chat_template`). moex does not
// run that Jinja: it recognises which family the text belongs to (ChatML/Qwen, Qwen3,
// Mistral [INST], Llama-3, DeepSeek, DeepSeek-LLM, Tulu/OLMoE) and renders that family with
// a hand-written renderer, which reproduces the template's output byte for byte for
// system/user/assistant(/tool) conversations. Details the template text varies within a
// family (a default system prompt, Llama-3.1's dated system header, Mistral's old and new
// spacing, DeepSeek-R1's <think> handling, whether bos_token is emitted) are read from the
// text too. A template that is absent or not recognised renders as a plain
// "User: ...\nAssistant:" transcript, and warning() says so.
//
// The rendered text contains special-token text (e.g. "<|im_start|>", and bos_token where
// the template emits it); tokenise it with special tokens parsed, and do not add another BOS
// when the template already emitted one.
//
// Thread-safety: a ChatTemplate is immutable after construction; Render may be called from
// any number of threads at once. Copies are cheap (the recognised style is shared).
// Errors are absl::Status values; nothing here prints, exits or throws.
#ifndef MOEX_CHAT_H_
#define MOEX_CHAT_H_

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace moex {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
};

struct ChatTemplateOptions {
  // End the prompt with the assistant header, so the model writes the next answer.
  bool add_generation_prompt = true;
  // Qwen3's switch: false puts an empty "<think>\n\n</think>\n\n" block in the generation
  // prompt, which makes Qwen3 answer without reasoning. Ignored by templates without it.
  bool enable_thinking = true;
  // A family name from ChatTemplate::KnownNames() (the `--chat-template NAME` flag) that
  // replaces the file's template; empty = use the file's. Read by ChatTemplate::Resolve.
  std::string override_name;
};

namespace chat_internal {
struct Style;  // the recognised family and its variant details (runtime/chat_template.h)
}  // namespace chat_internal

class ChatTemplate {
 public:
  // Recognises the family of `jinja_text` (the GGUF `tokenizer.chat_template` value).
  // `bos_token` / `eos_token` are the token texts the template would insert (e.g. "<s>",
  // "</s>"). Empty or unrecognised text gives the plain transcript and a warning(). Never
  // fails today; the StatusOr leaves room for a real Jinja parser.
  static absl::StatusOr<ChatTemplate> FromText(std::string_view jinja_text, std::string bos_token,
                                               std::string eos_token);

  // One family by name (see KnownNames()), with the family's current official variant.
  // kInvalidArgument for an unknown name (the message lists the known ones).
  static absl::StatusOr<ChatTemplate> ByName(std::string_view name, std::string bos_token,
                                             std::string eos_token);

  // ByName(options.override_name) when it is set, FromText(jinja_text) otherwise.
  static absl::StatusOr<ChatTemplate> Resolve(std::string_view jinja_text,
                                              const ChatTemplateOptions& options,
                                              std::string bos_token, std::string eos_token);

  // The prompt text for `messages`. kInvalidArgument for an empty conversation, an unknown
  // role, or a conversation the family does not allow (e.g. Mistral: after an optional
  // first system message, roles must alternate user/assistant starting with user).
  absl::StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                                     const ChatTemplateOptions& options) const;

  // The family's name, one of KnownNames().
  std::string_view name() const;
  // Empty, or why the rendering may not match what the model expects (no template, or a
  // template that was not recognised).
  std::string_view warning() const { return warning_; }

  // chatml, qwen3, mistral, llama3, deepseek, deepseek-llm, tulu, plain.
  static std::vector<std::string> KnownNames();

 private:
  ChatTemplate(std::shared_ptr<const chat_internal::Style> style, std::string bos, std::string eos,
               std::string warning);

  std::shared_ptr<const chat_internal::Style> style_;
  std::string bos_;
  std::string eos_;
  std::string warning_;
};

}  // namespace moex

#endif  // MOEX_CHAT_H_
