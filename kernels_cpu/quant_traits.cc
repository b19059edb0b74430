// The table of element types: block sizes and bytes as in ggml-common.h.
#include <cctype>
#include <cstring>

#include "kernels_cpu/quant.h"

namespace moex::kcpu {
namespace {

constexpr int64_t kQK = 32;    // values per block of the classic formats
constexpr int64_t kQKK = 256;  // values per super-block of the k-quants

// {type, name, block_elems, block_bytes, can_dequantize, can_quantize}
constexpr TypeTraits kTraits[] = {
    {GgmlType::kF32, "f32", 1, 4, true, true},
    {GgmlType::kF16, "f16", 1, 2, true, true},
    {GgmlType::kQ4_0, "q4_0", kQK, 2 + kQK / 2, true, true},
    {GgmlType::kQ4_1, "q4_1", kQK, 4 + kQK / 2, true, true},
    {GgmlType::kQ5_0, "q5_0", kQK, 2 + 4 + kQK / 2, true, true},
    {GgmlType::kQ5_1, "q5_1", kQK, 4 + 4 + kQK / 2, true, true},
    {GgmlType::kQ8_0, "q8_0", kQK, 2 + kQK, true, true},
    {GgmlType::kQ8_1, "q8_1", kQK, 4 + kQK, false, false},
    {GgmlType::kQ2_K, "q2_K", kQKK, kQKK / 16 + kQKK / 4 + 4, true, false},
    {GgmlType::kQ3_K, "q3_K", kQKK, kQKK / 8 + kQKK / 4 + 12 + 2, true, false},
    {GgmlType::kQ4_K, "q4_K", kQKK, 4 + 12 + kQKK / 2, true, true},
    {GgmlType::kQ5_K, "q5_K", kQKK, 4 + 12 + kQKK / 8 + kQKK / 2, true, true},
    {GgmlType::kQ6_K, "q6_K", kQKK, kQKK / 2 + kQKK / 4 + kQKK / 16 + 2, true, true},
    {GgmlType::kQ8_K, "q8_K", kQKK, 4 + kQKK + kQKK / 16 * 2, true, true},
    {GgmlType::kBF16, "bf16", 1, 2, true, true},
};

bool EqualsIgnoreCase(const char* a, const char* b) {
  for (; *a && *b; ++a, ++b) {
    if (std::tolower(static_cast<unsigned char>(*a)) !=
        std::tolower(static_cast<unsigned char>(*b)))
      return false;
  }
  return *a == *b;
}

}  // namespace

const TypeTraits* FindTypeTraits(uint32_t type_id) {
  for (const TypeTraits& t : kTraits) {
    if (static_cast<uint32_t>(t.type) == type_id) return &t;
  }
  return nullptr;
}

const TypeTraits& GetTypeTraits(GgmlType type) {
  return *FindTypeTraits(static_cast<uint32_t>(type));
}

const TypeTraits* FindTypeTraitsByName(const char* name) {
  for (const TypeTraits& t : kTraits) {
    if (EqualsIgnoreCase(t.name, name)) return &t;
  }
  return nullptr;
}

}  // namespace moex::kcpu
