// Golden tests of the chat templates: each family renders a system + two-turn conversation
// to the exact string the model's own template produces, and each family's real template
// text is recognised. The template texts are the `chat_template` values of the models'
// tokenizer_config.json files (JSON-decoded, so string literals keep their "\n" escapes);
// the expected strings are worked out from those templates, and where llama.cpp's
// tests/test-chat-template.cpp lists the same template its expected output is checked too.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/chat.h"

namespace moex {
namespace {

using ::testing::HasSubstr;

// ---- The real template texts ----------------------------------------------------------

// Qwen/Qwen3-30B-A3B, tokenizer_config.json "chat_template" (same in all Qwen3 models).
constexpr char kQwen3[] = R"TPL({%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %})TPL";

// Qwen/Qwen2-57B-A14B-Instruct (and Qwen1.5-MoE-A2.7B-Chat): ChatML with a default system
// prompt.
constexpr char kQwen2[] =
    R"TPL({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})TPL";

// teknium/OpenHermes-2.5-Mistral-7B: plain ChatML (llama.cpp test-chat-template.cpp).
constexpr char kOpenHermes[] =
    R"TPL({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})TPL";

// mistralai/Mixtral-8x7B-Instruct-v0.1, tokenizer_config.json as updated by Mistral in 2024
// (the "v1" template, also Mistral-7B-Instruct-v0.2's): the system message is prepended to
// the first user message with a blank line.
constexpr char kMixtral[] = R"TPL({%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
)TPL";

// mistralai/Mixtral-8x7B-Instruct-v0.1, the original (December 2023) template, still in
// many GGUF files: no system role.
constexpr char kMixtralLegacy[] =
    R"TPL({{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %})TPL";

// meta-llama/Meta-Llama-3-8B-Instruct, tokenizer_config.json.
constexpr char kLlama3[] =
    R"TPL({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})TPL";

// meta-llama/Llama-3.1-8B-Instruct (same in Llama-3.3-70B-Instruct), tokenizer_config.json.
constexpr char kLlama31[] = R"TPL({{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)TPL";

// deepseek-ai/DeepSeek-V2-Lite-Chat (also deepseek-llm-7b-chat, deepseek-moe-16b-chat);
// llama.cpp's test lists it as "DeepSeek-V2".
constexpr char kDeepseekV2[] =
    R"TPL({% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %})TPL";

// deepseek-ai/DeepSeek-V3, tokenizer_config.json.
constexpr char kDeepseekV3[] =
    R"TPL({% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{%- endif %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %})TPL";

// The Tulu template as in allenai/OLMoE-1B-7B-0924-Instruct and allenai/OLMo-2-1124-7B-SFT
// (with the leading bos_token); allenai/Llama-3.1-Tulu-3-8B has the same text without it.
constexpr char kTulu[] =
    R"TPL({{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\n'  + message['content'] + eos_token + '\n' }}{% else %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %})TPL";

// ---- Helpers ---------------------------------------------------------------------------

// The conversation every golden test renders: system + user, assistant, user.
std::vector<ChatMessage> TwoTurns() {
  return {{"system", "You are a helpful assistant"},
          {"user", "Hello"},
          {"assistant", "Hi there"},
          {"user", "Who are you"}};
}

std::string RenderText(const char* tmpl, const std::vector<ChatMessage>& messages,
                       const std::string& bos, const std::string& eos,
                       ChatTemplateOptions options = {}) {
  auto t = ChatTemplate::FromText(tmpl, bos, eos);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return "";
  EXPECT_EQ(t->warning(), "");
  auto out = t->Render(messages, options);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : "";
}

// ---- Golden renderings -----------------------------------------------------------------

TEST(ChatTemplateTest, Qwen3TwoTurns) {
  EXPECT_EQ(RenderText(kQwen3, TwoTurns(), "", "<|im_end|>"),
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\nHi there<|im_end|>\n"
            "<|im_start|>user\nWho are you<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, Qwen3ThinkingOff) {
  ChatTemplateOptions opts;
  opts.enable_thinking = false;
  EXPECT_EQ(RenderText(kQwen3, TwoTurns(), "", "<|im_end|>", opts),
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\nHi there<|im_end|>\n"
            "<|im_start|>user\nWho are you<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

TEST(ChatTemplateTest, Qwen3DropsEarlierReasoningAndWrapsTheLastAnswer) {
  // An earlier answer loses its <think> block (content.split('</think>')[-1].lstrip('\n'));
  // an answer after the last user query, when last, is re-wrapped in <think>...</think>.
  std::vector<ChatMessage> msgs = {
      {"user", "Hello"},
      {"assistant", "<think>\nThe user greets me.\n</think>\n\nHi there"},
      {"user", "Who are you"},
      {"assistant", "<think>\nA question.\n</think>\n\nI am Qwen."}};
  ChatTemplateOptions opts;
  opts.add_generation_prompt = false;
  EXPECT_EQ(RenderText(kQwen3, msgs, "", "", opts),
            "<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\nHi there<|im_end|>\n"
            "<|im_start|>user\nWho are you<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nA question.\n</think>\n\nI am Qwen.<|im_end|>\n");
  // A last answer without reasoning still gets an (empty) think block.
  std::vector<ChatMessage> plain = {{"user", "Hello"}, {"assistant", "Hi there"}};
  EXPECT_EQ(RenderText(kQwen3, plain, "", "", opts),
            "<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nHi there<|im_end|>\n");
}

TEST(ChatTemplateTest, Qwen3ToolResponsesShareOneUserTurn) {
  std::vector<ChatMessage> msgs = {
      {"user", "Weather?"}, {"assistant", "Calling."}, {"tool", "{\"t\": 20}"}, {"tool", "ok"}};
  EXPECT_EQ(RenderText(kQwen3, msgs, "", ""),
            "<|im_start|>user\nWeather?<|im_end|>\n"
            "<|im_start|>assistant\nCalling.<|im_end|>\n"
            "<|im_start|>user\n<tool_response>\n{\"t\": 20}\n</tool_response>\n"
            "<tool_response>\nok\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, Qwen2ChatmlWithDefaultSystemPrompt) {
  EXPECT_EQ(RenderText(kQwen2, TwoTurns(), "", ""),
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\nHi there<|im_end|>\n"
            "<|im_start|>user\nWho are you<|im_end|>\n"
            "<|im_start|>assistant\n");
  std::vector<ChatMessage> no_system = {{"user", "Hello"}};
  EXPECT_EQ(RenderText(kQwen2, no_system, "", ""),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\n");
  // Plain ChatML inserts nothing.
  EXPECT_EQ(RenderText(kOpenHermes, no_system, "", ""),
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, MixtralTwoTurnsSystemMergedIntoFirstUser) {
  EXPECT_EQ(RenderText(kMixtral, TwoTurns(), "<s>", "</s>"),
            "<s> [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s>"
            " [INST] Who are you [/INST]");
}

TEST(ChatTemplateTest, MixtralLegacyTemplate) {
  std::vector<ChatMessage> msgs = {
      {"user", "Hello"}, {"assistant", "Hi there"}, {"user", "Who are you"}};
  EXPECT_EQ(RenderText(kMixtralLegacy, msgs, "<s>", "</s>"),
            "<s>[INST] Hello [/INST]Hi there</s>[INST] Who are you [/INST]");
  // The original template rejects a system message; moex merges it as the current one does.
  EXPECT_EQ(RenderText(kMixtralLegacy, TwoTurns(), "<s>", "</s>"),
            "<s>[INST] You are a helpful assistant\n\nHello [/INST]Hi there</s>"
            "[INST] Who are you [/INST]");
}

TEST(ChatTemplateTest, Llama3TwoTurns) {
  EXPECT_EQ(RenderText(kLlama3, TwoTurns(), "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, Llama31DatedSystemHeader) {
  EXPECT_EQ(RenderText(kLlama31, TwoTurns(), "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
            "You are a helpful assistant<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // Without a system message the header is still there, with an empty system text.
  std::vector<ChatMessage> msgs = {{"user", " Hello "}};
  EXPECT_EQ(RenderText(kLlama31, msgs, "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, DeepseekV2LiteChatTwoTurns) {
  EXPECT_EQ(RenderText(kDeepseekV2, TwoTurns(), "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
            "<｜begin▁of▁sentence｜>You are a helpful assistant\n\n"
            "User: Hello\n\n"
            "Assistant: Hi there<｜end▁of▁sentence｜>"
            "User: Who are you\n\n"
            "Assistant:");
}

TEST(ChatTemplateTest, DeepseekV3TwoTurns) {
  EXPECT_EQ(RenderText(kDeepseekV3, TwoTurns(), "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
            "<｜begin▁of▁sentence｜>You are a helpful assistant"
            "<｜User｜>Hello<｜Assistant｜>Hi there<｜end▁of▁sentence｜>"
            "<｜User｜>Who are you<｜Assistant｜>");
}

TEST(ChatTemplateTest, TuluOlmoeTwoTurns) {
  EXPECT_EQ(RenderText(kTulu, TwoTurns(), "<|endoftext|>", "<|endoftext|>"),
            "<|endoftext|><|system|>\nYou are a helpful assistant\n"
            "<|user|>\nHello\n"
            "<|assistant|>\nHi there<|endoftext|>\n"
            "<|user|>\nWho are you\n"
            "<|assistant|>\n");
  // The last answer has no newline after eos.
  std::vector<ChatMessage> msgs = {{"user", "Hello"}, {"assistant", "Hi there"}};
  ChatTemplateOptions opts;
  opts.add_generation_prompt = false;
  EXPECT_EQ(RenderText(kTulu, msgs, "", "<|endoftext|>", opts),
            "<|user|>\nHello\n<|assistant|>\nHi there<|endoftext|>");
}

// llama.cpp's tests/test-chat-template.cpp renders a six-message conversation through the
// same templates; these are its expected outputs (bos "" as there), as a second check.
TEST(ChatTemplateTest, MatchesLlamaCppExpectedOutputs) {
  std::vector<ChatMessage> conv = {{"system", "You are a helpful assistant"},
                                   {"user", "Hello"},
                                   {"assistant", "Hi there"},
                                   {"user", "Who are you"},
                                   {"assistant", "   I am an assistant   "},
                                   {"user", "Another question"}};
  EXPECT_EQ(RenderText(kOpenHermes, conv, "", ""),
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello"
            "<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are "
            "you<|im_end|>\n<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|"
            ">user\nAnother question<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(RenderText(kMixtral, conv, "", "</s>"),
            " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you "
            "[/INST]    I am an assistant   </s> [INST] Another question [/INST]");
  EXPECT_EQ(RenderText(kLlama3, conv, "", ""),
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|><|"
            "start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>"
            "assistant<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_"
            "id|>\n\nWho are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI am an "
            "assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_"
            "id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(RenderText(kDeepseekV2, conv, "", "<｜end▁of▁sentence｜>"),
            "You are a helpful assistant\n\nUser: Hello\n\nAssistant: Hi there<｜end▁of▁sentence｜>"
            "User: Who are you\n\nAssistant:    I am an assistant   <｜end▁of▁sentence｜>User: "
            "Another question\n\nAssistant:");
}

// ---- Recognition -----------------------------------------------------------------------

TEST(ChatTemplateTest, FromTextRecognisesEachFamily) {
  struct Case {
    const char* tmpl;
    const char* family;
  };
  const Case cases[] = {
      {kQwen3, "qwen3"},           {kQwen2, "chatml"},
      {kOpenHermes, "chatml"},     {kMixtral, "mistral"},
      {kMixtralLegacy, "mistral"}, {kLlama3, "llama3"},
      {kLlama31, "llama3"},        {kDeepseekV2, "deepseek-llm"},
      {kDeepseekV3, "deepseek"},   {kTulu, "tulu"},
  };
  for (const Case& c : cases) {
    auto t = ChatTemplate::FromText(c.tmpl, "<s>", "</s>");
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->name(), c.family) << c.tmpl;
    EXPECT_EQ(t->warning(), "") << c.tmpl;
  }
}

TEST(ChatTemplateTest, ByNameMatchesTheRecognisedTemplate) {
  // The override names render what the official templates render.
  struct Case {
    const char* name;
    const char* tmpl;
    const char* bos;
    const char* eos;
  };
  const Case cases[] = {
      {"qwen3", kQwen3, "", ""},
      {"chatml", kOpenHermes, "", ""},
      {"mistral", kMixtral, "<s>", "</s>"},
      {"llama3", kLlama3, "<|begin_of_text|>", "<|eot_id|>"},
      {"deepseek-llm", kDeepseekV2, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"},
      {"deepseek", kDeepseekV3, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"},
  };
  for (const Case& c : cases) {
    auto named = ChatTemplate::ByName(c.name, c.bos, c.eos);
    ASSERT_TRUE(named.ok()) << named.status();
    EXPECT_EQ(named->name(), c.name);
    auto out = named->Render(TwoTurns(), {});
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(*out, RenderText(c.tmpl, TwoTurns(), c.bos, c.eos)) << c.name;
  }
  for (const std::string& name : ChatTemplate::KnownNames()) {
    auto t = ChatTemplate::ByName(name, "", "");
    ASSERT_TRUE(t.ok()) << name;
    EXPECT_EQ(t->name(), name);
  }
}

TEST(ChatTemplateTest, ResolvePrefersTheOverride) {
  ChatTemplateOptions opts;
  auto from_file = ChatTemplate::Resolve(kQwen3, opts, "", "");
  ASSERT_TRUE(from_file.ok());
  EXPECT_EQ(from_file->name(), "qwen3");
  opts.override_name = "llama3";
  auto overridden = ChatTemplate::Resolve(kQwen3, opts, "", "");
  ASSERT_TRUE(overridden.ok());
  EXPECT_EQ(overridden->name(), "llama3");
  opts.override_name = "vicuna";
  auto bad = ChatTemplate::Resolve(kQwen3, opts, "", "");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("known: chatml, qwen3"));
}

// ---- Fallback and errors ---------------------------------------------------------------

TEST(ChatTemplateTest, PlainFallbackWithWarning) {
  for (const char* text : {"", "  \n", "{{ messages | tojson }}"}) {
    auto t = ChatTemplate::FromText(text, "<s>", "</s>");
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(t->name(), "plain");
    EXPECT_THAT(std::string(t->warning()), HasSubstr("plain"));
    auto out = t->Render(TwoTurns(), {});
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(*out,
              "System: You are a helpful assistant\nUser: Hello\nAssistant: Hi there\n"
              "User: Who are you\nAssistant:");
  }
}

TEST(ChatTemplateTest, EmptyConversationIsAnError) {
  for (const std::string& name : ChatTemplate::KnownNames()) {
    auto t = ChatTemplate::ByName(name, "", "");
    ASSERT_TRUE(t.ok());
    auto out = t->Render({}, {});
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(out.status().message(), HasSubstr("no messages"));
  }
}

TEST(ChatTemplateTest, UnknownRoleIsAnError) {
  std::vector<ChatMessage> msgs = {{"user", "Hello"}, {"narrator", "Meanwhile"}};
  for (const std::string& name : ChatTemplate::KnownNames()) {
    auto t = ChatTemplate::ByName(name, "", "");
    ASSERT_TRUE(t.ok());
    auto out = t->Render(msgs, {});
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(out.status().message(), HasSubstr("unknown role 'narrator'"));
  }
}

TEST(ChatTemplateTest, ToolRoleOnlyWhereTheTemplateHasOne) {
  std::vector<ChatMessage> msgs = {{"user", "Hello"}, {"tool", "42"}};
  for (const char* name : {"mistral", "llama3", "deepseek-llm", "tulu"}) {
    auto out = ChatTemplate::ByName(name, "", "")->Render(msgs, {});
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(out.status().message(), HasSubstr("'tool'"));
  }
  auto deepseek = ChatTemplate::ByName("deepseek", "", "")->Render(msgs, {});
  ASSERT_TRUE(deepseek.ok());
  EXPECT_EQ(*deepseek,
            "<｜User｜>Hello<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>42<｜tool▁output▁end｜>"
            "<｜tool▁outputs▁end｜>");
}

TEST(ChatTemplateTest, MistralRolesMustAlternate) {
  auto t = ChatTemplate::FromText(kMixtral, "<s>", "</s>");
  ASSERT_TRUE(t.ok());
  const std::vector<std::vector<ChatMessage>> bad = {
      {{"user", "a"}, {"user", "b"}},
      {{"assistant", "a"}},
      {{"system", "s"}, {"assistant", "a"}},
      {{"user", "a"}, {"assistant", "b"}, {"system", "late"}},
      {{"user", "a"}, {"system", "late"}},
  };
  for (const auto& msgs : bad) {
    auto out = t->Render(msgs, {});
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(out.status().message(), HasSubstr("mistral"));
  }
}

TEST(ChatTemplateTest, NoGenerationPrompt) {
  ChatTemplateOptions opts;
  opts.add_generation_prompt = false;
  EXPECT_EQ(RenderText(kLlama3, {{"user", "Hi"}}, "", "", opts),
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
  EXPECT_EQ(RenderText(kDeepseekV2, {{"user", "Hi"}}, "", "", opts), "User: Hi\n\n");
  EXPECT_EQ(RenderText(kOpenHermes, {{"user", "Hi"}}, "", "", opts),
            "<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplateTest, CopiesShareTheStyleAndRenderAlike) {
  auto t = ChatTemplate::FromText(kQwen3, "", "");
  ASSERT_TRUE(t.ok());
  ChatTemplate copy = *t;
  EXPECT_EQ(copy.name(), "qwen3");
  EXPECT_EQ(*copy.Render(TwoTurns(), {}), *t->Render(TwoTurns(), {}));
}

}  // namespace
}  // namespace moex
