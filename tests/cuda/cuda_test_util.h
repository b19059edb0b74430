// Helpers of the CUDA parity tests: the skip when no device is present, fresh seeds
// (printed, and MOEX_TEST_SEED=<n> to repeat a run), device buffers, and weights quantised
// on the host by kernels_cpu (the reference side of every comparison).
#ifndef MOEX_TESTS_CUDA_CUDA_TEST_UTIL_H_
#define MOEX_TESTS_CUDA_CUDA_TEST_UTIL_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels_cpu/quant.h"
#include "kernels_cuda/device_probe.h"

namespace moex::kcuda::testing {

// Empty when a device is usable, else why not (probed once per process).
inline const std::string& NoDeviceReason() {
  static const std::string reason = [] {
    std::string why;
    if (!ProbeCudaDevices(&why).empty()) return std::string();
    return why.empty() ? std::string("no CUDA device") : why;
  }();
  return reason;
}

#define MOEX_SKIP_WITHOUT_CUDA()                                                          \
  do {                                                                                    \
    if (!::moex::kcuda::testing::NoDeviceReason().empty()) {                              \
      GTEST_SKIP() << "no CUDA device (" << ::moex::kcuda::testing::NoDeviceReason()      \
                   << "): the kernel-vs-CPU parity checks run on the GPU machine (bench/" \
                      "gpu_check.sh)";                                                    \
    }                                                                                     \
  } while (0)

// A fresh seed per test, printed so that a failure can be repeated with MOEX_TEST_SEED.
inline uint64_t FreshSeed() {
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("MOEX_TEST_SEED")) seed = std::strtoull(s, nullptr, 10);
  std::cout << "[ seed     ] MOEX_TEST_SEED=" << seed << "\n";
  return seed;
}

inline std::vector<float> RandomFloats(std::mt19937_64& rng, int64_t n, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Rows of random values quantised by kcpu::QuantizeRow (every type the GPU reads has a
// quantiser), and their exact dequantised values.
struct HostMatrix {
  kcpu::GgmlType type;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // kcpu::DequantizeRow of bytes, [rows][cols]
};
inline HostMatrix RandomMatrix(std::mt19937_64& rng, kcpu::GgmlType type, int64_t rows,
                               int64_t cols) {
  HostMatrix m{type, rows, cols, {}, {}};
  const int64_t rb = kcpu::RowBytes(kcpu::GetTypeTraits(type), cols);
  m.bytes.resize(rows * rb);
  m.values.resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> src = RandomFloats(rng, cols);
    kcpu::QuantizeRow(type, src.data(), m.bytes.data() + r * rb, cols);
    kcpu::DequantizeRow(type, m.bytes.data() + r * rb, m.values.data() + r * cols, cols);
  }
  return m;
}

// Device memory of n elements of T, freed on destruction. ASSERT-style failures are
// reported through gtest (ADD_FAILURE) and leave a null pointer.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(int64_t n) : n_(n) {
    const cudaError_t e = cudaMalloc(&p_, std::max<int64_t>(n, 1) * sizeof(T));
    if (e != cudaSuccess) {
      ADD_FAILURE() << "cudaMalloc(" << n * sizeof(T) << "): " << cudaGetErrorString(e);
      p_ = nullptr;
    }
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { Upload(host); }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return p_; }
  void Upload(const std::vector<T>& host) {
    EXPECT_EQ(cudaMemcpy(p_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  // All bytes 0xFF: a NaN in every float, so an output the kernel fails to write shows.
  void Poison() { EXPECT_EQ(cudaMemset(p_, 0xFF, n_ * sizeof(T)), cudaSuccess); }
  // Waits for the device, then copies back; a kernel fault fails the test here.
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    const cudaError_t sync = cudaDeviceSynchronize();
    EXPECT_EQ(sync, cudaSuccess) << cudaGetErrorString(sync);
    EXPECT_EQ(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }

 private:
  T* p_ = nullptr;
  int64_t n_ = 0;
};

// Unit roundoff of F32: the tolerances below are multiples of it, from the standard
// bound |fl(sum) - sum| <= n * u * sum|terms| for n sequential F32 additions (Higham,
// "Accuracy and Stability of Numerical Algorithms", ch. 3).
inline constexpr double kF32Unit = 5.96e-8;

}  // namespace moex::kcuda::testing

#endif  // MOEX_TESTS_CUDA_CUDA_TEST_UTIL_H_
