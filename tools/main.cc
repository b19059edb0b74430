// moex: the command-line tool. Built on the public API (include/moex) only.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "tools/commands.h"

namespace {

constexpr char kUsage[] =
    "usage: moex <command> [flags]\n"
    "\n"
    "commands:\n"
    "  inspect MODEL [--json] [--tensors]       metadata, tensors, types, sizes, per-expert bytes\n"
    "  gen --arch ARCH --type TYPE -o OUT.gguf [shape flags] [--vocab VOCAB.gguf] [--seed N]\n"
    "                                           write a model with random weights\n"
    "  logits -m MODEL --tokens 1,2,3 --out FILE  logits of every position (binary)\n"
    "  run -m MODEL (-p TEXT | --tokens IDS) -n N [sampling flags] [--json]\n"
    "                                           generate; prints text and tokens/s\n"
    "  chat -m MODEL [--system TEXT] [-n N]     interactive chat with the model's template\n"
    "  ppl -m MODEL --file TEXT [-c N] [--kv-policy SPEC] [--kv-type T] [--json]\n"
    "                                           perplexity with the KV cache compressed\n"
    "  bench -m MODEL [-p N] [-n N] [--depth N] [--json]\n"
    "                                           prefill/decode tok/s against the bandwidth bound\n"
    "  predict -m MODEL --file TEXT [--distance D] [--json]\n"
    "                                           accuracy of the expert predictors\n"
    "  tokenize -m MODEL (--text T | --file F) [--json] [--no-bos] [--special]\n"
    "                                           text to token ids (vocab-only files too)\n"
    "  detokenize -m MODEL --tokens 1,2,3 [--json]  token ids to text\n"
    "  trace -m MODEL --file TEXT [--ctx N] -o OUT.trace  record the routing on a text\n"
    "  lrc TRACE... [--m 4,16,64] [--json] [--plot F.svg]  SRP, SCH, cache policies\n"
    "  calibrate [--hidden N --ffn N --type T] [--json] [--list-profiles]  measure this machine\n"
    "  sim --trace T --model-shape S --profile P [--policy all]  simulated hybrid tokens/s\n"
    "\n"
    "Run `moex <command> --help` for the flags of one command.\n";

// Model files are mapped, not read: if one is truncated (or replaced in place) while moex
// uses it, touching a page past its new end raises SIGBUS. Say so in one line instead of
// "Bus error". Only async-signal-safe calls here; the exit code stays 128 + SIGBUS.
void OnSigbus(int) {
  static const char kMsg[] =
      "moex: a mapped model file was truncated or changed while in use (SIGBUS); reopen it "
      "after it is complete\n";
  ssize_t unused = write(STDERR_FILENO, kMsg, sizeof(kMsg) - 1);
  (void)unused;
  _exit(128 + SIGBUS);
}

}  // namespace

int main(int argc, char** argv) {
  struct sigaction sa = {};
  sa.sa_handler = OnSigbus;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, nullptr);
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "inspect") return moex::cli::CmdInspect(argc - 2, argv + 2);
  if (cmd == "gen") return moex::cli::CmdGen(argc - 2, argv + 2);
  if (cmd == "logits") return moex::cli::CmdLogits(argc - 2, argv + 2);
  if (cmd == "run") return moex::cli::CmdRun(argc - 2, argv + 2);
  if (cmd == "chat") return moex::cli::CmdChat(argc - 2, argv + 2);
  if (cmd == "ppl") return moex::cli::CmdPpl(argc - 2, argv + 2);
  if (cmd == "bench") return moex::cli::CmdBench(argc - 2, argv + 2);
  if (cmd == "predict") return moex::cli::CmdPredict(argc - 2, argv + 2);
  if (cmd == "tokenize") return moex::cli::CmdTokenize(argc - 2, argv + 2);
  if (cmd == "detokenize") return moex::cli::CmdDetokenize(argc - 2, argv + 2);
  if (cmd == "trace") return moex::cli::CmdTrace(argc - 2, argv + 2);
  if (cmd == "lrc") return moex::cli::CmdLrc(argc - 2, argv + 2);
  if (cmd == "calibrate") return moex::cli::CmdCalibrate(argc - 2, argv + 2);
  if (cmd == "sim") return moex::cli::CmdSim(argc - 2, argv + 2);
  std::fprintf(stderr, "moex: unknown command '%s' (see `moex --help`)\n", cmd.c_str());
  return 2;
}
