// The small sectioned key = value format of moex's data tables (device profiles, model
// shapes): `[kind name]` opens a section, `key = value` lines follow, `#` starts a comment
// anywhere on a line. Every entry keeps its line number so errors can name it.
#ifndef MOEX_RUNTIME_CORE_INI_H_
#define MOEX_RUNTIME_CORE_INI_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex {

struct IniEntry {
  std::string key, value;
  int line = 0;
};

struct IniSection {
  std::string kind, name;  // "[gpu rtx4060-8g]" -> "gpu", "rtx4060-8g"
  int line = 0;
  std::vector<IniEntry> entries;
};

// What a file may hold beyond the syntax; the default accepts any [kind name].
struct IniFormat {
  // The section kinds allowed, e.g. {"gpu", "cpu"}; empty allows any. Errors name them
  // ("expected [gpu NAME] or [cpu NAME]") so a user sees what the file should say.
  std::vector<std::string> kinds;
  // Section names limited to letters, digits, '-', '_' and '.': for names that are typed
  // on command lines (--device sim:NAME), where a space or '=' could not be given.
  bool plain_names = false;
};

// Errors (kInvalidArgument) name `file` and the line: a header without ']' or without a
// name, a kind or name `format` rejects, the same [kind name] twice, a value before any
// section, a line without '=', an empty key, a key twice in a section.
absl::StatusOr<std::vector<IniSection>> ParseIni(std::string_view text, std::string_view file,
                                                 const IniFormat& format = {});

// What a number must be beyond parsing; a value outside is an error naming the rule.
enum class IniRange { kAny, kPositive, kNonNegative };

// Reads one section's values by key, remembering which keys were asked for, so that
// Finish() can reject the keys nobody knows (a typo is an error, not a silent default).
// Errors name the file, the line (the entry's, or the section's for a missing key), the
// section and the key.
class IniReader {
 public:
  IniReader(const IniSection& section, std::string_view file);
  // A value: required (absent is an error) unless `optional`, which leaves *out as is.
  // Numbers are finite (nan and inf are refused) and parsed without the C locale.
  absl::Status Number(const char* key, double* out, bool optional = false,
                      IniRange range = IniRange::kAny);
  absl::Status Integer(const char* key, int64_t* out, bool optional = false,
                       IniRange range = IniRange::kAny);
  // The same for a field that is an int32_t: a value it cannot hold is an error, not a
  // silent truncation.
  absl::Status Integer(const char* key, int32_t* out, bool optional = false,
                       IniRange range = IniRange::kAny);
  absl::Status Text(const char* key, std::string* out, bool optional = false);
  // kInvalidArgument naming the first key that was never asked for and listing the keys
  // that were (the known ones), so a misspelt key shows its right spelling.
  absl::Status Finish() const;

 private:
  const IniEntry* Find(const char* key, bool optional, absl::Status* st);
  absl::Status IntegerIn(const char* key, int64_t* out, bool optional, IniRange range, int64_t lo,
                         int64_t hi);
  std::string Where(int line) const;
  const IniSection& s_;
  std::string file_;
  std::vector<bool> used_;
  std::vector<std::string> asked_;  // in the order asked, each once
};

}  // namespace moex

#endif  // MOEX_RUNTIME_CORE_INI_H_
