// Reading routing traces for `moex lrc` and `moex sim`: our trace files, CSV imports and the
// Mixtral JSON-lines dumps, by extension or --format, merged into one trace.
#ifndef MOEX_TOOLS_TRACE_FILES_H_
#define MOEX_TOOLS_TRACE_FILES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "moex/trace.h"

namespace moex::cli {

// `format`: "", "trace", "csv" or "mixtral-jsonl" (empty: by extension: .csv, .jsonl, else
// trace). `experts` > 0 sets the expert count of imports (an error for trace files that
// say otherwise). Notes dropped tokens on stderr. False with *err set on failure.
bool LoadTraces(const std::vector<std::string>& paths, const std::string& format, int64_t experts,
                bool load_probs, Trace* out, std::string* err);

}  // namespace moex::cli

#endif  // MOEX_TOOLS_TRACE_FILES_H_
