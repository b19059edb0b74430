// A complete chat program on the moex C++ API: one message per input line, answers
// streamed, the conversation (and its KV cache) kept across turns.
//   moex_example_chat MODEL.gguf
#include "moex/chat.h"

#include <iostream>
#include <string>
#include <vector>

#include "moex/moex.h"
#include "moex/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 2) return std::cerr << "usage: " << argv[0] << " MODEL.gguf\n", 2;
  auto model = moex::Model::Open(argv[1], {});
  if (!model.ok()) return std::cerr << model.status().message() << "\n", 1;
  const moex::Tokenizer* tok = (*model)->tokenizer();
  if (tok == nullptr) return std::cerr << "the model has no tokenizer\n", 1;
  auto piece = [tok](int32_t id) { return id < 0 ? std::string() : std::string(tok->Piece(id)); };
  auto tmpl = moex::ChatTemplate::FromText((*model)->info().chat_template, piece(tok->bos()),
                                           piece(tok->eos()));
  auto session = (*model)->NewSession({});
  if (!tmpl.ok() || !session.ok()) return std::cerr << "cannot start a session\n", 1;

  std::vector<moex::ChatMessage> messages;
  moex::GenerateOptions gen;
  gen.max_tokens = 64;
  for (std::string line; std::getline(std::cin, line);) {
    messages.push_back({"user", line});
    auto prompt = tmpl->Render(messages, {});
    if (!prompt.ok()) return std::cerr << prompt.status().message() << "\n", 1;
    moex::EncodeOptions eo;
    eo.parse_special = true;
    auto ids = tok->Encode(*prompt, eo);
    if (!ids.ok()) return std::cerr << ids.status().message() << "\n", 1;
    // Keep the cached prefix the new prompt shares with the conversation so far.
    const auto& have = (*session)->tokens();
    size_t common = 0;
    while (common + 1 < ids->size() && common < have.size() && have[common] == (*ids)[common]) {
      ++common;
    }
    (*session)->TruncateTo(static_cast<int64_t>(common));
    auto stream = tok->NewStreamDecoder();
    std::string answer;
    auto out =
        (*session)->Generate(std::span<const int32_t>(*ids).subspan(common), gen, [&](int32_t t) {
          if (tok->IsEog(t)) return false;
          answer += stream.Push(t);
          return true;
        });
    if (!out.ok()) return std::cerr << out.status().message() << "\n", 1;
    answer += stream.Flush();
    std::cout << answer << "\n" << std::flush;
    messages.push_back({"assistant", answer});
  }
  return 0;
}
