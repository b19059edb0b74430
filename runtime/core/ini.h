// The small sectioned key = value format of moex's data tables (device profiles, model
// shapes): `[kind name]` opens a section, `key = value` lines follow, `#` starts a comment
// anywhere on a line. Every entry keeps its line number so errors can name it.
#ifndef MOEX_RUNTIME_CORE_INI_H_
#define MOEX_RUNTIME_CORE_INI_H_

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

// Errors (kInvalidArgument) name `file` and the line: text outside a section, a section
// header without kind and name, a line without '=', an empty key, a key twice in a section.
absl::StatusOr<std::vector<IniSection>> ParseIni(std::string_view text, std::string_view file);

// Reads one section's values by key, remembering which keys were asked for, so that
// Finish() can reject the keys nobody knows (a typo is an error, not a silent default).
class IniReader {
 public:
  IniReader(const IniSection& section, std::string_view file);
  // A number: required (absent is an error) unless `optional`, which leaves *out as is.
  absl::Status Number(const char* key, double* out, bool optional = false);
  absl::Status Integer(const char* key, int64_t* out, bool optional = false);
  absl::Status Text(const char* key, std::string* out, bool optional = false);
  // kInvalidArgument naming the first key that was never asked for.
  absl::Status Finish() const;

 private:
  const IniEntry* Find(const char* key, bool optional, absl::Status* st);
  std::string Where(int line) const;
  const IniSection& s_;
  std::string file_;
  std::vector<bool> used_;
};

}  // namespace moex

#endif  // MOEX_RUNTIME_CORE_INI_H_
