// libFuzzer target: the routing-trace readers (runtime/trace/trace_io.cc) on arbitrary
// bytes, and the analysis on whatever they accept.
//
// Byte 0 picks the reader (moex's binary trace, the CSV import, the Mixtral JSON-lines
// import) and the expert count given to the imports; the rest is the file, written to a
// memfd and read by path as a real file is. An accepted trace is analysed (SRP, SCH,
// policy replay, the recorded predictor guesses of a version-2 file, token grouping) when
// it is small, so a reader that lets inconsistent shapes through shows up as an ASan report
// in the analysis. Seed binary_trace_predictions has a predictions section.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "moex/trace.h"

namespace {

int MemFd() {
  static const int fd = [] {
    const int f = memfd_create("fuzz_trace", MFD_CLOEXEC);
    if (f < 0) {
      perror("memfd_create");
      abort();
    }
    return f;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t selector = data[0];
  const int fd = MemFd();
  if (ftruncate(fd, 0) != 0 ||
      pwrite(fd, data + 1, size - 1, 0) != static_cast<ssize_t>(size - 1)) {
    perror("memfd write");
    abort();
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  // 0: any expert count the file implies; else a small explicit one.
  const int32_t experts = (selector >> 2) % 4 == 0 ? 0 : 4 * ((selector >> 2) % 4);
  absl::StatusOr<moex::Trace> trace;
  switch (selector % 3) {
    case 0:
      trace = moex::ReadTrace(path);
      break;
    case 1:
      trace = moex::ImportCsv(path, experts);
      break;
    default:
      trace = moex::ImportMixtralJsonl(path, experts);
      break;
  }
  if (!trace.ok()) {
    if (trace.status().message().empty()) abort();  // every error says what is wrong
    return 0;
  }
  // The analysis keeps tables for every cache size C = 1..E, so its memory grows with the
  // expert count the header declares (up to 65535, a valid file): analyse only small
  // shapes, where a reader bug (not the cost) would show.
  if (trace->header.num_experts > 256 || trace->tokens() * trace->header.num_layers > 4096) {
    return 0;
  }
  moex::LrcOptions options;
  options.segment_lengths = {1, 4};
  options.group_sizes = {1, 3};
  options.group_chunk = 5;  // several chunks even in a small trace
  options.threads = 1;
  absl::StatusOr<moex::LrcReport> report = moex::AnalyzeTrace(*trace, options);
  (void)report;
  return 0;
}
