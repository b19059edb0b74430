// The CUDA backend end to end: a device is found and a kernel computes the right
// answer. Skips cleanly where no GPU is present (CI, developer machines).
#include "kernels_cuda/device_probe.h"

#include "gtest/gtest.h"

namespace moex::kcuda {
namespace {

TEST(CudaDeviceTest, ProbeListsDevicesOrSaysWhyNot) {
  std::string why;
  const auto devices = ProbeCudaDevices(&why);
  if (devices.empty()) {
    EXPECT_FALSE(why.empty());
    GTEST_SKIP() << "no CUDA device: " << why;
  }
  for (const auto& d : devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GT(d.total_bytes, 0u);
    EXPECT_GE(d.compute_major, 7);
  }
}

TEST(CudaDeviceTest, SelfTestKernelAddsVectors) {
  std::string why;
  const auto devices = ProbeCudaDevices(&why);
  if (devices.empty()) GTEST_SKIP() << "no CUDA device: " << why;
  for (const auto& d : devices) EXPECT_EQ(CudaSelfTest(d.index), "") << d.name;
}

}  // namespace
}  // namespace moex::kcuda
