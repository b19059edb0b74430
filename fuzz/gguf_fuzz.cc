// libFuzzer target: the GGUF reader (runtime/core/gguf.cc) on arbitrary bytes, and the
// vocabulary/tokenizer loader on whatever the reader accepts.
//
// The input is written to a memfd and opened by its /proc path, so the reader runs exactly
// as on a real file (open, fstat, mmap) without touching the disk. When Open succeeds,
// every tensor's first and last byte and every metadata value are read: the reader
// promises that everything it hands out lies inside the mapping, and ASan checks that.
#include <sys/mman.h>
#include <unistd.h>

#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "moex/tokenizer.h"
#include "runtime/core/gguf.h"
#include "runtime/tokenizer.h"

namespace {

int MemFd() {
  static const int fd = [] {
    const int f = memfd_create("fuzz_gguf", MFD_CLOEXEC);
    if (f < 0) {
      perror("memfd_create");
      abort();
    }
    return f;
  }();
  return fd;
}

// Folds a value into a sum the compiler cannot drop, so every byte is really read.
volatile uint64_t g_sink;

void Touch(const moex::GgufValue& v) {
  uint64_t h = static_cast<uint64_t>(v.type());
  switch (v.type()) {
    case moex::GgufType::kString:
      for (char c : v.AsString()) h += static_cast<uint8_t>(c);
      break;
    case moex::GgufType::kArray:
      for (const moex::GgufValue& e : v.elems()) Touch(e);
      break;
    default:
      h += static_cast<uint64_t>(v.AsInt()) + std::bit_cast<uint64_t>(v.AsDouble());
  }
  g_sink = g_sink + h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = MemFd();
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) {
    perror("memfd write");
    abort();
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  absl::StatusOr<std::unique_ptr<moex::GgufFile>> file = moex::GgufFile::Open(path);
  if (!file.ok()) {
    // Errors must say something (the CLI prints this line to the user).
    if (file.status().message().empty()) abort();
    return 0;
  }
  const moex::GgufFile& f = **file;
  for (const moex::GgufKeyValue& kv : f.metadata()) {
    Touch(kv.value);
    if (f.Find(kv.key) == nullptr) abort();  // every key read must be findable
    (void)f.GetInt(kv.key);
    (void)f.GetFloat(kv.key);
    (void)f.GetString(kv.key);
    (void)f.GetArray(kv.key);
  }
  for (const moex::GgufTensorInfo& t : f.tensors()) {
    if (f.FindTensor(t.name) == nullptr) abort();
    if (t.nbytes == 0) continue;
    if (t.data < f.base() || t.data + t.nbytes > f.base() + f.file_size()) abort();
    g_sink = g_sink + t.data[0] + t.data[t.nbytes - 1] + static_cast<uint64_t>(t.n_elements());
  }

  // Tokenizer keys of an accepted file: loading must fail cleanly or give a tokenizer that
  // works on a fixed text (the vocabulary loader trusts only what it checks itself).
  absl::StatusOr<std::unique_ptr<moex::Tokenizer>> tok = moex::LoadTokenizer(f);
  if (tok.ok() && *tok != nullptr) {
    moex::EncodeOptions o;
    o.parse_special = true;
    absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode("Hi <s> \xE2\x96\x81x\xFF 12", o);
    if (ids.ok()) g_sink = g_sink + (*tok)->Decode(*ids, /*render_special=*/true).size();
  }
  return 0;
}
