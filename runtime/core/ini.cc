#include "runtime/core/ini.h"

#include <cerrno>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace moex {

namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.front())))
    s.remove_prefix(1);
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.back())))
    s.remove_suffix(1);
  return s;
}

}  // namespace

absl::StatusOr<std::vector<IniSection>> ParseIni(std::string_view text, std::string_view file) {
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
      if (line.back() != ']') return error("a section header must end with ']'");
      std::string_view inner = Trim(line.substr(1, line.size() - 2));
      const size_t sp = inner.find_first_of(" \t");
      if (sp == std::string_view::npos) return error("a section header needs a kind and a name");
      IniSection s;
      s.kind = std::string(inner.substr(0, sp));
      s.name = std::string(Trim(inner.substr(sp)));
      s.line = line_no;
      out.push_back(std::move(s));
      continue;
    }
    if (out.empty()) return error("a value outside any [section]");
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) return error("expected 'key = value'");
    IniEntry e{std::string(Trim(line.substr(0, eq))), std::string(Trim(line.substr(eq + 1))),
               line_no};
    if (e.key.empty()) return error("empty key");
    for (const IniEntry& prev : out.back().entries) {
      if (prev.key == e.key) return error(absl::StrCat("key '", e.key, "' given twice"));
    }
    out.back().entries.push_back(std::move(e));
  }
  return out;
}

IniReader::IniReader(const IniSection& section, std::string_view file)
    : s_(section), file_(file), used_(section.entries.size(), false) {}

std::string IniReader::Where(int line) const {
  return absl::StrCat(file_, ":", line, ": [", s_.kind, " ", s_.name, "] ");
}

const IniEntry* IniReader::Find(const char* key, bool optional, absl::Status* st) {
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

absl::Status IniReader::Number(const char* key, double* out, bool optional) {
  absl::Status st;
  const IniEntry* e = Find(key, optional, &st);
  if (e == nullptr) return st;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(e->value.c_str(), &end);
  if (e->value.empty() || *end != '\0' || errno != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(e->line), key, " = '", e->value, "' is not a number"));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status IniReader::Integer(const char* key, int64_t* out, bool optional) {
  absl::Status st;
  const IniEntry* e = Find(key, optional, &st);
  if (e == nullptr) return st;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(e->value.c_str(), &end, 10);
  if (e->value.empty() || *end != '\0' || errno != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(e->line), key, " = '", e->value, "' is not an integer"));
  }
  *out = v;
  return absl::OkStatus();
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
          absl::StrCat(Where(s_.entries[i].line), "unknown key '", s_.entries[i].key, "'"));
    }
  }
  return absl::OkStatus();
}

}  // namespace moex
