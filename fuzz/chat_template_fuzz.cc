// libFuzzer target: chat-template recognition and rendering (runtime/chat_template.cc).
//
// Input layout (FuzzedDataProvider): the template text, bos and eos strings, then messages
// (a role byte and the content) until the data runs out; the option switches are taken
// from the end of the data. Strings are FuzzedDataProvider's "random length strings": they
// end at a backslash followed by any other byte (fuzz/corpus/fuzz_chat_template/ seeds use
// "\|"), and "\\" stands for one backslash.
//
// Checked: FromText, ByName, Resolve and Render never crash, whatever the text, roles or
// contents; Render errors carry a message; a conversation with a user turn renders to a
// non-empty prompt.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "moex/chat.h"

namespace {

void Die(const char* what) {
  fprintf(stderr, "fuzz_chat_template: %s\n", what);
  abort();
}

void RenderAll(const moex::ChatTemplate& t, const std::vector<moex::ChatMessage>& messages,
               const moex::ChatTemplateOptions& options) {
  absl::StatusOr<std::string> out = t.Render(messages, options);
  if (!out.ok()) {
    if (out.status().message().empty()) Die("Render error without a message");
    return;
  }
  // A prompt may be empty: Mistral's template renders a system message alone as nothing
  // (it is only ever prepended to a user turn). A user turn always shows.
  bool has_user = false;
  for (const moex::ChatMessage& m : messages) has_user |= m.role == "user";
  if (has_user && out->empty()) Die("Render of a conversation with a user turn is empty");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  moex::ChatTemplateOptions options;
  options.add_generation_prompt = in.ConsumeBool();
  options.enable_thinking = in.ConsumeBool();
  const bool by_name = in.ConsumeBool();
  const std::string text = in.ConsumeRandomLengthString(4096);
  const std::string bos = in.ConsumeRandomLengthString(32);
  const std::string eos = in.ConsumeRandomLengthString(32);
  static constexpr const char* kRoles[] = {"system", "user", "assistant", "tool"};
  std::vector<moex::ChatMessage> messages;
  while (in.remaining_bytes() > 0 && messages.size() < 64) {
    moex::ChatMessage m;
    const uint8_t r = in.ConsumeIntegral<uint8_t>();
    // Mostly the four known roles (to reach the renderers), sometimes anything.
    m.role = r < 240 ? kRoles[r % 4] : in.ConsumeRandomLengthString(16);
    m.content = in.ConsumeRandomLengthString(1024);
    messages.push_back(std::move(m));
  }

  absl::StatusOr<moex::ChatTemplate> t = moex::ChatTemplate::FromText(text, bos, eos);
  if (!t.ok()) Die("FromText failed");  // documented never to fail
  RenderAll(*t, messages, options);
  (void)t->name();
  (void)t->warning();

  // The template text as a family name (the --chat-template flag), and each known family
  // on the same conversation.
  if (by_name) {
    absl::StatusOr<moex::ChatTemplate> named = moex::ChatTemplate::ByName(text, bos, eos);
    if (named.ok()) RenderAll(*named, messages, options);
    for (const std::string& name : moex::ChatTemplate::KnownNames()) {
      options.override_name = name;
      absl::StatusOr<moex::ChatTemplate> r = moex::ChatTemplate::Resolve(text, options, bos, eos);
      if (!r.ok()) Die("Resolve failed on a known name");
      RenderAll(*r, messages, options);
    }
  }
  return 0;
}
