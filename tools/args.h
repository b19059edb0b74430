// Command-line flags for the `moex` subcommands: `--name value`, `--name=value`, short
// aliases (-m, -p, -n, -t, -c, -o), bare positionals. Unknown flags are errors, so a typo
// never silently falls back to a default.
#ifndef MOEX_TOOLS_ARGS_H_
#define MOEX_TOOLS_ARGS_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "moex/moex.h"

namespace moex::cli {

class Args {
 public:
  // `flags`: accepted long names (without dashes); `switches`: those that take no value.
  // Returns false and sets *error on an unknown flag or a missing value.
  bool Parse(int argc, char** argv, const std::set<std::string>& flags,
             const std::set<std::string>& switches, std::string* error);

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Str(const std::string& name, const std::string& fallback = "") const;
  // Numbers: *error is set (and fallback returned) when the value does not parse.
  int64_t Int(const std::string& name, int64_t fallback, std::string* error) const;
  double Float(const std::string& name, double fallback, std::string* error) const;
  const std::vector<std::string>& positionals() const { return positionals_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positionals_;
};

// "1,2,3" -> ids; false on a malformed list.
bool ParseIdList(const std::string& s, std::vector<int32_t>* out);

// Minimal JSON writing for --json output.
std::string JsonString(const std::string& s);

// One error line "moex CMD: MSG" on stderr; returns exit code 1 (bad file or request).
int Fail(const char* cmd, const std::string& msg);
// A usage error: one line on stderr pointing at --help; returns exit code 2.
int Usage(const char* cmd, const std::string& msg);

// The sampling flags shared by `run` and `chat`, and their parsing (errors into *err).
inline constexpr const char* kSamplingFlags[] = {
    "temp", "top-k", "top-p", "min-p", "repeat-penalty", "repeat-last-n", "seed"};
void ParseSampling(const Args& a, SamplingOptions* s, std::string* err);
// `flags` plus the sampling flags, and the KV-cache flags (--kv-policy, --kv-type).
std::set<std::string> WithSampling(std::set<std::string> flags);
// The whole file at `path` into *out; false when it cannot be read.
bool ReadFile(const std::string& path, std::string* out);

// The evaluation windows of `moex ppl / predict / trace`: each is `bos` (when >= 0) then
// ctx - 1 (or ctx, without a BOS) consecutive text tokens, starting every `stride` tokens;
// only full windows, at most `max_windows` (< 0: all).
std::vector<std::vector<int32_t>> TextWindows(const std::vector<int32_t>& ids, int32_t bos,
                                              int64_t ctx, int64_t stride,
                                              int64_t max_windows = -1);

// --kv-policy SPEC and --kv-type T into the session options (checked when the session
// is made).
void ParseKv(const Args& a, SessionOptions* s);

// --device auto|cpu|cuda[:N]|sim:PROFILE, --cpu-profile, --gpu-mem, --moe-policy,
// --cache-policy, --prefetch and --profiles FILE (extra profiles, e.g. a `moex calibrate
// --save-profile` of another machine's GPU to replay as sim:NAME): the flags and their
// parsing into the session options (checked when the session is made; a profile file
// that does not load is an error here). The help text for them, shared by run, chat,
// bench and logits.
std::set<std::string> WithDevice(std::set<std::string> flags);
std::string ParseDevice(const Args& a, SessionOptions* s);
// --profiles FILE, when given: "" or why the file does not load.
std::string LoadProfilesFlag(const Args& a);
extern const char kDeviceHelp[];

}  // namespace moex::cli

#endif  // MOEX_TOOLS_ARGS_H_
