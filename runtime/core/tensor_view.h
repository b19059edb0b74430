// Views of weight tensors read in place from a mapped model file.
//
// A WeightMatrix is `rows` rows of `cols` values in one GGUF block type, rows
// `row_bytes` apart; an ExpertStack is `n` such matrices back to back (a 3-D GGUF tensor
// `blk.N.ffn_*_exps`), so one expert is one contiguous byte range: the unit the expert
// cache and the host-to-device copies work with. Views never own memory; the GgufFile
// they point into must outlive them.
#ifndef MOEX_RUNTIME_CORE_TENSOR_VIEW_H_
#define MOEX_RUNTIME_CORE_TENSOR_VIEW_H_

#include <cstdint>

#include "kernels_cpu/quant.h"

namespace moex {

struct WeightMatrix {
  kcpu::GgmlType type = kcpu::GgmlType::kF32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_bytes = 0;

  bool valid() const { return data != nullptr; }
  int64_t bytes() const { return rows * row_bytes; }
};

struct ExpertStack {
  kcpu::GgmlType type = kcpu::GgmlType::kF32;
  const uint8_t* data = nullptr;
  int64_t n = 0;     // experts
  int64_t rows = 0;  // per expert
  int64_t cols = 0;
  int64_t row_bytes = 0;

  bool valid() const { return data != nullptr; }
  int64_t expert_bytes() const { return rows * row_bytes; }
  WeightMatrix Expert(int64_t e) const {
    return WeightMatrix{type, data + e * expert_bytes(), rows, cols, row_bytes};
  }
};

}  // namespace moex

#endif  // MOEX_RUNTIME_CORE_TENSOR_VIEW_H_
