// ModelInfo (include/moex/info.h) from a bound model, and DescribeFile's helpers.
#ifndef MOEX_RUNTIME_MODEL_INFO_H_
#define MOEX_RUNTIME_MODEL_INFO_H_

#include <string>

#include "moex/info.h"
#include "runtime/core/gguf.h"
#include "runtime/model_weights.h"

namespace moex {

ModelInfo MakeModelInfo(const GgufFile& file, const ModelWeights& weights);

// A metadata value as text; arrays longer than `max_elems` are shown as their type and
// length with the first few elements.
std::string RenderValue(const GgufValue& v, size_t max_elems = 8);

}  // namespace moex

#endif  // MOEX_RUNTIME_MODEL_INFO_H_
