// CPUID-based level detection. __builtin_cpu_supports reads CPUID once (libgcc) and also
// checks that the OS saves the wider register state (XGETBV), so a "yes" is safe to run.
#include "kernels_cpu/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <cstdlib>
#include <cstring>

namespace moex::kcpu {
#if defined(__x86_64__) || defined(__i386__)
namespace {

// F16C is CPUID.1:ECX bit 29. Asked directly because clang 14's __builtin_cpu_supports
// does not know "f16c" (and the fuzz preset builds with clang).
bool HasF16c() {
  unsigned a, b, c, d;
  return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
}

}  // namespace
#endif

bool CpuSupports(IsaLevel level) {
#if defined(__x86_64__) || defined(__i386__)
  switch (level) {
    case IsaLevel::kScalar:
      return true;
    case IsaLevel::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c();
    case IsaLevel::kAvx512:
      return CpuSupports(IsaLevel::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  return level == IsaLevel::kScalar;
#endif
}

namespace {

IsaLevel Detect() {
  IsaLevel best = IsaLevel::kScalar;
  if (CpuSupports(IsaLevel::kAvx512)) {
    best = IsaLevel::kAvx512;
  } else if (CpuSupports(IsaLevel::kAvx2)) {
    best = IsaLevel::kAvx2;
  }
  if (const char* cap = std::getenv("MOEX_ISA")) {
    IsaLevel c = best;
    if (std::strcmp(cap, "scalar") == 0) c = IsaLevel::kScalar;
    if (std::strcmp(cap, "avx2") == 0) c = IsaLevel::kAvx2;
    if (static_cast<int>(c) < static_cast<int>(best)) best = c;
  }
  return best;
}

}  // namespace

IsaLevel BestIsaLevel() {
  static const IsaLevel level = Detect();
  return level;
}

const char* IsaLevelName(IsaLevel level) {
  switch (level) {
    case IsaLevel::kScalar:
      return "scalar";
    case IsaLevel::kAvx2:
      return "avx2";
    case IsaLevel::kAvx512:
      return "avx512";
  }
  return "?";
}

}  // namespace moex::kcpu
