// Which SIMD level this CPU (and its OS) can run, decided once from CPUID.
//
// Design: moex is built for a baseline x86-64 when MOEX_NATIVE=OFF, and the fast kernels
// live in files compiled with their own -m flags (see CMakeLists.txt), so nothing may call
// them unless the running CPU has the instructions. This file is the one place that
// decides: the kernels' dispatchers ask it. MOEX_ISA=scalar|avx2|avx512 in the environment
// caps the level (to compare levels, or to step around a suspected kernel bug).
// Thread-safety: all functions are thread-safe (the answer is computed once).
#ifndef MOEX_KERNELS_CPU_CPU_FEATURES_H_
#define MOEX_KERNELS_CPU_CPU_FEATURES_H_

namespace moex::kcpu {

enum class IsaLevel : int {
  kScalar = 0,  // portable C++ (whatever the compiler flags allow)
  kAvx2 = 1,    // AVX2 + FMA + F16C
  kAvx512 = 2,  // AVX-512 F/BW/VL/DQ + VNNI (Ice Lake, Zen 4 and later)
};

// Whether the CPU and OS support `level` (ignores MOEX_ISA).
bool CpuSupports(IsaLevel level);

// The best supported level, capped by MOEX_ISA when set. Computed on first use.
IsaLevel BestIsaLevel();

// "scalar", "avx2", "avx512".
const char* IsaLevelName(IsaLevel level);

}  // namespace moex::kcpu

#endif  // MOEX_KERNELS_CPU_CPU_FEATURES_H_
