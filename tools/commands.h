// The `moex` subcommands. Each returns the process exit code and prints its own errors
// (one line on stderr, prefixed "moex <command>: ").
#ifndef MOEX_TOOLS_COMMANDS_H_
#define MOEX_TOOLS_COMMANDS_H_

namespace moex::cli {

int CmdInspect(int argc, char** argv);
int CmdGen(int argc, char** argv);
int CmdLogits(int argc, char** argv);
int CmdRun(int argc, char** argv);
int CmdTokenize(int argc, char** argv);
int CmdDetokenize(int argc, char** argv);
int CmdChat(int argc, char** argv);
int CmdPpl(int argc, char** argv);
int CmdBench(int argc, char** argv);
int CmdPredict(int argc, char** argv);
int CmdTrace(int argc, char** argv);
int CmdLrc(int argc, char** argv);
int CmdCalibrate(int argc, char** argv);
int CmdSim(int argc, char** argv);

}  // namespace moex::cli

#endif  // MOEX_TOOLS_COMMANDS_H_
