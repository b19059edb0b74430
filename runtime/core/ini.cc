#include "runtime/core/ini.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moex {

namespace {

// absl::StripAsciiWhitespace takes Debian Abseil's own string_view, not std::string_view.
std::string_view Trim(std::string_view s) {
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.front())))
    s.remove_prefix(1);
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.back())))
    s.remove_suffix(1);
  return s;
}

bool PlainName(std::string_view name) {
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return false;
    }
  }
  return true;
}

// "[gpu NAME] or [cpu NAME]" for the kinds a format allows, "[KIND NAME]" for any.
std::string Headers(const IniFormat& format) {
  if (format.kinds.empty()) return "[KIND NAME]";
  std::vector<std::string> h;
  for (const std::string& k : format.kinds) h.push_back(absl::StrCat("[", k, " NAME]"));
  return absl::StrJoin(h, " or ");
}

}  // namespace

absl::StatusOr<std::vector<IniSection>> ParseIni(std::string_view text, std::string_view file,
                                                 const IniFormat& format) {
  std::vector<IniSection> out;
  int line_no = 0;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    ++line_no;
    if (const size_t hash = line.find('#'); hash != std::string_view::npos)
      line = line.substr(0, hash);
    line = Trim(line);
    if (line.empty()) continue;
    auto error = [&](std::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(file), ":", line_no, ": ", std::string(why)));
    };
    if (line.front() == '[') {
      if (line.back() != ']') {
        return error(absl::StrCat("section header '", std::string(line), "' does not end in ']'"));
      }
      const std::string_view inner = Trim(line.substr(1, line.size() - 2));
      const std::string quoted = absl::StrCat("section '[", std::string(inner), "]': ");
      const size_t sp = inner.find_first_of(" \t");
      IniSection s;
      s.kind = std::string(inner.substr(0, sp));
      s.name = sp == std::string_view::npos ? "" : std::string(Trim(inner.substr(sp)));
      s.line = line_no;
      if (!format.kinds.empty() &&
          std::find(format.kinds.begin(), format.kinds.end(), s.kind) == format.kinds.end()) {
        return error(absl::StrCat(quoted, "expected ", Headers(format)));
      }
      if (s.name.empty()) {
        return error(absl::StrCat(quoted, "the name is missing (expected ", Headers(format), ")"));
      }
      if (format.plain_names && !PlainName(s.name)) {
        return error(absl::StrCat(quoted, "the name must be letters, digits, '-', '_' or '.'"));
      }
      // A second [kind name] would silently shadow or be shadowed by the first.
      for (const IniSection& prev : out) {
        if (prev.kind == s.kind && prev.name == s.name) {
          return error(absl::StrCat("[", s.kind, " ", s.name,
                                    "] is defined twice in this file (first at line ", prev.line,
                                    ")"));
        }
      }
      out.push_back(std::move(s));
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      return error(absl::StrCat("expected 'key = value' or a ", Headers(format), " header, got '",
                                std::string(line), "'"));
    }
    IniEntry e{std::string(Trim(line.substr(0, eq))), std::string(Trim(line.substr(eq + 1))),
               line_no};
    if (e.key.empty()) return error("empty key");
    if (out.empty()) {
      return error(absl::StrCat("key '", e.key, "' before any ", Headers(format), " section"));
    }
    IniSection& cur = out.back();
    for (const IniEntry& prev : cur.entries) {
      if (prev.key == e.key) {
        return error(
            absl::StrCat("key '", e.key, "' given twice in [", cur.kind, " ", cur.name, "]"));
      }
    }
    cur.entries.push_back(std::move(e));
  }
  return out;
}

IniReader::IniReader(const IniSection& section, std::string_view file)
    : s_(section), file_(file), used_(section.entries.size(), false) {}

std::string IniReader::Where(int line) const {
  return absl::StrCat(file_, ":", line, ": [", s_.kind, " ", s_.name, "] ");
}

const IniEntry* IniReader::Find(const char* key, bool optional, absl::Status* st) {
  if (std::find(asked_.begin(), asked_.end(), key) == asked_.end()) asked_.emplace_back(key);
  for (size_t i = 0; i < s_.entries.size(); ++i) {
    if (s_.entries[i].key == key) {
      used_[i] = true;
      return &s_.entries[i];
    }
  }
  if (!optional) {
    *st = absl::InvalidArgumentError(absl::StrCat(Where(s_.line), "is missing key '", key, "'"));
  }
  return nullptr;
}

absl::Status IniReader::Number(const char* key, double* out, bool optional, IniRange range) {
  absl::Status st;
  const IniEntry* e = Find(key, optional, &st);
  if (e == nullptr) return st;
  const std::string at = absl::StrCat(Where(e->line), "key '", key, "': ");
  double v = 0;
  // SimpleAtod, unlike strtod, ignores the C locale (a ',' decimal point) and takes no hex.
  if (!absl::SimpleAtod(e->value, &v) || !std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat(at, "'", e->value, "' is not a number"));
  }
  if (range == IniRange::kPositive && !(v > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(at, e->value, " must be > 0"));
  }
  if (range == IniRange::kNonNegative && v < 0) {
    return absl::InvalidArgumentError(absl::StrCat(at, e->value, " must be >= 0"));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status IniReader::IntegerIn(const char* key, int64_t* out, bool optional, IniRange range,
                                  int64_t lo, int64_t hi) {
  absl::Status st;
  const IniEntry* e = Find(key, optional, &st);
  if (e == nullptr) return st;
  const std::string at = absl::StrCat(Where(e->line), "key '", key, "': ");
  const char* what = range == IniRange::kPositive      ? "a positive integer"
                     : range == IniRange::kNonNegative ? "a non-negative integer"
                                                       : "an integer";
  int64_t v = 0;
  if (!absl::SimpleAtoi(e->value, &v) || (range == IniRange::kPositive && v <= 0) ||
      (range == IniRange::kNonNegative && v < 0)) {
    return absl::InvalidArgumentError(absl::StrCat(at, "'", e->value, "' is not ", what));
  }
  if (v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, e->value, " is out of range (", lo, " to ", hi, ")"));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status IniReader::Integer(const char* key, int64_t* out, bool optional, IniRange range) {
  return IntegerIn(key, out, optional, range, std::numeric_limits<int64_t>::min(),
                   std::numeric_limits<int64_t>::max());
}

absl::Status IniReader::Integer(const char* key, int32_t* out, bool optional, IniRange range) {
  int64_t v = *out;
  absl::Status st = IntegerIn(key, &v, optional, range, std::numeric_limits<int32_t>::min(),
                              std::numeric_limits<int32_t>::max());
  if (st.ok()) *out = static_cast<int32_t>(v);
  return st;
}

absl::Status IniReader::Text(const char* key, std::string* out, bool optional) {
  absl::Status st;
  const IniEntry* e = Find(key, optional, &st);
  if (e == nullptr) return st;
  *out = e->value;
  return absl::OkStatus();
}

absl::Status IniReader::Finish() const {
  for (size_t i = 0; i < s_.entries.size(); ++i) {
    if (!used_[i]) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(s_.entries[i].line), "unknown key '", s_.entries[i].key,
                       "' (known: ", absl::StrJoin(asked_, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace moex
