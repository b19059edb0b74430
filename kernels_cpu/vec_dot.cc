// Dispatch of the vec_dot kernels: a table per level (vec_dot_{ref,avx2,avx512}.cc),
// resolved once per weight type at first use. The SIMD files are compiled with their own
// -m flags, so this file (plain flags) must not call into them before CpuSupports says
// the CPU can run them.
#include "kernels_cpu/vec_dot.h"

#include <array>
#include <atomic>

#include "kernels_cpu/vec_dot_internal.h"

namespace moex::kcpu {

GgmlType VecDotActivationType(GgmlType weight) {
  switch (weight) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
      return GgmlType::kQ8_0;
    case GgmlType::kQ2_K:
    case GgmlType::kQ3_K:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return GgmlType::kQ8_K;
    default:
      return GgmlType::kF32;
  }
}

VecDotFn GetVecDot(GgmlType weight, IsaLevel level) {
  if (VecDotActivationType(weight) == GgmlType::kF32) return nullptr;
  VecDotFn fn = nullptr;
#if defined(__x86_64__)
  if (level == IsaLevel::kAvx512) fn = vd::Avx512VecDot(weight);
  if (fn == nullptr && static_cast<int>(level) >= static_cast<int>(IsaLevel::kAvx2)) {
    fn = vd::Avx2VecDot(weight);
  }
#endif
  return fn != nullptr ? fn : vd::ScalarVecDot(weight);
}

VecDotFn GetVecDot(GgmlType weight) {
  // Type ids are small (< 64); one lazily filled slot per id. Racing first calls store
  // the same pointer, so relaxed atomics suffice.
  static std::array<std::atomic<VecDotFn>, 64> table{};
  const auto id = static_cast<uint32_t>(weight);
  if (id >= table.size()) return nullptr;
  VecDotFn fn = table[id].load(std::memory_order_relaxed);
  if (fn == nullptr) {
    fn = GetVecDot(weight, BestIsaLevel());
    table[id].store(fn, std::memory_order_relaxed);
  }
  return fn;
}

VecDotBatchFn GetVecDotBatch(GgmlType weight, IsaLevel level) {
#if defined(__x86_64__)
  // Only where the level's own vec_dot is the AVX-512 one: the batch kernel mirrors that
  // kernel's float order, not a lower level's.
  if (level == IsaLevel::kAvx512 && vd::Avx512VecDot(weight) != nullptr) {
    return vd::Avx512VecDotBatch(weight);
  }
#else
  (void)weight;
  (void)level;
#endif
  return nullptr;
}

VecDotBatchFn GetVecDotBatch(GgmlType weight) {
  // As GetVecDot: one lazily resolved slot per type id; nullptr is a valid answer, so a
  // second flag array says which slots are filled.
  static std::array<std::atomic<VecDotBatchFn>, 64> table{};
  static std::array<std::atomic<bool>, 64> done{};
  const auto id = static_cast<uint32_t>(weight);
  if (id >= table.size()) return nullptr;
  if (!done[id].load(std::memory_order_acquire)) {
    table[id].store(GetVecDotBatch(weight, BestIsaLevel()), std::memory_order_relaxed);
    done[id].store(true, std::memory_order_release);
  }
  return table[id].load(std::memory_order_relaxed);
}

int64_t VecDotBatchScratchBytes(GgmlType weight, int64_t n) {
#if defined(__x86_64__)
  return vd::Avx512VecDotBatchScratch(weight, n);
#else
  (void)weight;
  (void)n;
  return 0;
#endif
}

FloatDotFn GetFloatDot(GgmlType weight, IsaLevel level) {
#if defined(__x86_64__)
  if (level == IsaLevel::kAvx512) return vd::Avx512FloatDot(weight);
  if (level == IsaLevel::kAvx2) return vd::Avx2FloatDot(weight);
#endif
  return nullptr;
}

FloatDotFn GetFloatDot(GgmlType weight) {
  static const FloatDotFn f16 = GetFloatDot(GgmlType::kF16, BestIsaLevel());
  static const FloatDotFn bf16 = GetFloatDot(GgmlType::kBF16, BestIsaLevel());
  if (weight == GgmlType::kF16) return f16;
  if (weight == GgmlType::kBF16) return bf16;
  return nullptr;
}

void QuantizeActivation(GgmlType act, const float* x, void* dst, int64_t n) {
#if defined(__x86_64__)
  static const bool avx512 = BestIsaLevel() == IsaLevel::kAvx512;
  if (avx512 && vd::Avx512QuantizeActivation(act, x, dst, n)) return;
#endif
  QuantizeRow(act, x, dst, n);
}

}  // namespace moex::kcpu
