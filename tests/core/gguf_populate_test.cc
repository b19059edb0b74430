// GgufFile::Populate enters the tensor pages into the process's page tables (what
// ModelOptions::prefault does at Model::Open): the mapping's resident size, as the kernel
// reports it in /proc/self/smaps, grows from nothing to the whole tensor data.
#include <sys/utsname.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/core/gguf.h"
#include "tests/test_util.h"

namespace moex {
namespace {

// Rss (bytes) of the mapping that starts at `base`, from /proc/self/smaps; -1 if absent.
int64_t MappingRss(const void* base) {
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool in_mapping = false;
  while (std::getline(in, line)) {
    uint64_t start = 0, end = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> start >> dash >> end && dash == '-') {
      in_mapping = start == reinterpret_cast<uintptr_t>(base);
    } else if (in_mapping && line.rfind("Rss:", 0) == 0) {
      return std::stoll(line.substr(4)) * 1024;
    }
  }
  return -1;
}

bool KernelHasPopulateRead() {  // MADV_POPULATE_READ came with Linux 5.14
  utsname u;
  int major = 0, minor = 0;
  if (uname(&u) != 0 || std::sscanf(u.release, "%d.%d", &major, &minor) != 2) return false;
  return major > 5 || (major == 5 && minor >= 14);
}

TEST(GgufPopulateTest, EntersEveryTensorPage) {
  if (!KernelHasPopulateRead()) GTEST_SKIP() << "kernel before 5.14: no MADV_POPULATE_READ";
  constexpr int64_t kFloats = int64_t{6} << 20;  // 24 MiB of tensor data
  std::vector<uint8_t> bytes(kFloats * 4);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 131 + 7);
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  ASSERT_TRUE(w.AddTensor("big", {kFloats}, /*F32*/ 0, bytes).ok());
  const std::string path = testing::MakeTempDir() + "/big.gguf";
  ASSERT_TRUE(w.WriteFile(path).ok());

  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const int64_t before = MappingRss((*file)->base());
  ASSERT_GE(before, 0) << "mapping not found in /proc/self/smaps";
  // Parsing reads the header pages only.
  EXPECT_LT(before, static_cast<int64_t>(bytes.size()) / 4);
  ASSERT_TRUE((*file)->Populate());
  const int64_t after = MappingRss((*file)->base());
  EXPECT_GE(after, static_cast<int64_t>(bytes.size())) << "before " << before;
  // The pages hold the file's bytes (populating maps, it does not change anything).
  const uint8_t* data = (*file)->base() + (*file)->data_offset() + (*file)->tensors()[0].offset;
  EXPECT_EQ(data[12345], bytes[12345]);
  EXPECT_EQ(data[bytes.size() - 1], bytes.back());
}

}  // namespace
}  // namespace moex
