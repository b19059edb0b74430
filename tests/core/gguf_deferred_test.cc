// Deferred tensors: bytes produced at write time give the same file as bytes given up
// front, and a failing producer leaves no file behind.
#include <sys/stat.h>

#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/core/gguf.h"
#include "tests/test_util.h"

namespace moex {
namespace {

constexpr uint32_t kF32 = 0;

TEST(GgufDeferredTest, DeferredTensorWritesTheSameBytesAsADirectOne) {
  std::vector<uint8_t> bytes(4 * 6);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 1);
  GgufWriter direct, deferred;
  for (GgufWriter* w : {&direct, &deferred}) w->SetString("general.architecture", "llama");
  ASSERT_TRUE(direct.AddTensor("a", {6}, kF32, bytes).ok());
  int calls = 0;
  ASSERT_TRUE(deferred
                  .AddTensorDeferred("a", {6}, kF32,
                                     [&](std::span<uint8_t> out) {
                                       ++calls;
                                       EXPECT_EQ(out.size(), bytes.size());
                                       std::copy(bytes.begin(), bytes.end(), out.begin());
                                       return absl::OkStatus();
                                     })
                  .ok());
  EXPECT_EQ(calls, 0);  // nothing is produced before writing
  auto a = direct.Serialize();
  auto b = deferred.Serialize();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(calls, 1);
}

TEST(GgufDeferredTest, FailingProducerAbortsTheWriteAndLeavesNoFile) {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  ASSERT_TRUE(w.AddTensorDeferred("a", {8}, kF32, [](std::span<uint8_t>) {
                 return absl::ResourceExhaustedError("out of memory while drawing");
               }).ok());
  const std::string path = testing::MakeTempDir() + "/out.gguf";
  absl::Status st = w.WriteFile(path);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  struct stat sb;
  EXPECT_NE(stat(path.c_str(), &sb), 0) << "a half-written file was left at " << path;
}

TEST(GgufDeferredTest, DeferredTensorIsValidatedWhenAdded) {
  GgufWriter w;
  auto fill = [](std::span<uint8_t>) { return absl::OkStatus(); };
  EXPECT_FALSE(w.AddTensorDeferred("q", {33}, /*Q8_0=*/8, fill).ok());  // 33 % 32 != 0
  EXPECT_FALSE(w.AddTensorDeferred("z", {0}, kF32, fill).ok());
  EXPECT_TRUE(w.AddTensorDeferred("ok", {64}, 8, fill).ok());
  EXPECT_FALSE(w.AddTensorDeferred("ok", {64}, 8, fill).ok());  // duplicate name
}

}  // namespace
}  // namespace moex
