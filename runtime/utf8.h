// UTF-8 helpers for the tokenizers: strict decoding (no overlong forms, no surrogates,
// nothing above U+10FFFF, the rules PCRE2 enforces in UTF mode), sanitising, and encoding.
#ifndef MOEX_RUNTIME_UTF8_H_
#define MOEX_RUNTIME_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moex::utf8 {

// The length a lead byte announces (1 for ASCII and for bytes that cannot lead), the
// rule llama.cpp's tokenizers use to split text into "characters" (unicode_len_utf8).
inline size_t LeadLength(char c) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[static_cast<uint8_t>(c) >> 4];
}

// What starts at s[i]: kValid (a whole, well-formed sequence of *len bytes, code point in
// *cp), kIncomplete (a well-formed prefix cut off by the end of s) or kInvalid (*len = 1:
// the byte cannot start a sequence here).
enum class Seq { kValid, kIncomplete, kInvalid };
inline Seq Decode(std::string_view s, size_t i, size_t* len, uint32_t* cp) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  *len = 1;
  if (b0 < 0x80) {
    *cp = b0;
    return Seq::kValid;
  }
  size_t n;
  uint32_t c;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2, c = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3, c = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4, c = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return Seq::kInvalid;
  }
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) return Seq::kIncomplete;
    const auto b = static_cast<uint8_t>(s[i + k]);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return Seq::kInvalid;
    c = (c << 6) | (b & 0x3F);
  }
  *len = n;
  *cp = c;
  return Seq::kValid;
}

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Appends the UTF-8 encoding of `cp` (REQUIRES: cp <= 0x10FFFF).
inline void Append(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// True when all of `s` is well-formed UTF-8.
inline bool IsValid(std::string_view s) {
  size_t len;
  uint32_t cp;
  for (size_t i = 0; i < s.size(); i += len) {
    if (Decode(s, i, &len, &cp) != Seq::kValid) return false;
  }
  return true;
}

// `s` with every byte that does not belong to a well-formed sequence replaced by U+FFFD
// (llama.cpp's unicode_cpts_from_utf8 does the same, one U+FFFD per bad byte).
inline std::string Sanitize(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  size_t len;
  uint32_t cp;
  for (size_t i = 0; i < s.size(); i += len) {
    if (Decode(s, i, &len, &cp) == Seq::kValid) {
      out.append(s.data() + i, len);
    } else {
      len = 1;
      out.append(kReplacement);
    }
  }
  return out;
}

}  // namespace moex::utf8

#endif  // MOEX_RUNTIME_UTF8_H_
