#include "tools/trace_files.h"

#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"

namespace moex::cli {

bool LoadTraces(const std::vector<std::string>& paths, const std::string& format, int64_t experts,
                bool load_probs, Trace* out, std::string* err) {
  if (!format.empty() && format != "trace" && format != "csv" && format != "mixtral-jsonl") {
    *err = absl::StrCat("unknown --format '", format, "' (trace, csv, mixtral-jsonl)");
    return false;
  }
  if (paths.empty()) {
    *err = "no trace file given";
    return false;
  }
  std::vector<Trace> traces;
  for (const std::string& path : paths) {
    auto ends = [&](const char* s) {
      const std::string suf = s;
      return path.size() >= suf.size() &&
             path.compare(path.size() - suf.size(), suf.size(), suf) == 0;
    };
    const std::string f = !format.empty()  ? format
                          : ends(".csv")   ? "csv"
                          : ends(".jsonl") ? "mixtral-jsonl"
                                           : "trace";
    int64_t dropped = 0;
    const int32_t e = static_cast<int32_t>(experts);
    absl::StatusOr<Trace> t = f == "csv" ? ImportCsv(path, e, &dropped)
                              : f == "trace"
                                  ? ReadTrace(path, ReadTraceOptions{.load_probs = load_probs})
                                  : ImportMixtralJsonl(path, e, &dropped);
    if (!t.ok()) {
      *err = std::string(t.status().message());
      return false;
    }
    if (dropped > 0) {
      std::fprintf(stderr, "%s: %lld tokens without every layer at the end of a sequence dropped\n",
                   path.c_str(), static_cast<long long>(dropped));
    }
    if (f == "trace" && experts > 0 && experts != t->header.num_experts) {
      *err = "--experts applies to imported traces only";
      return false;
    }
    traces.push_back(*std::move(t));
  }
  absl::StatusOr<Trace> merged = MergeTraces(std::move(traces));
  if (!merged.ok()) {
    *err = std::string(merged.status().message());
    return false;
  }
  *out = *std::move(merged);
  return true;
}

}  // namespace moex::cli
