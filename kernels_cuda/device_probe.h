// What CUDA devices this process can use. Plain C++ header: no CUDA type leaks out of
// kernels_cuda/. Thread-safe.
#ifndef MOEX_KERNELS_CUDA_DEVICE_PROBE_H_
#define MOEX_KERNELS_CUDA_DEVICE_PROBE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace moex::kcuda {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  uint64_t total_bytes = 0;
  uint64_t free_bytes = 0;
  int multiprocessors = 0;
};

// Lists the usable devices. No driver or no device is not an error: the list is empty
// and `why_none` (when non-null) says why, in the driver's words.
std::vector<CudaDeviceInfo> ProbeCudaDevices(std::string* why_none);

// Runs a tiny kernel on `device` (adds two vectors, copies the result back) and returns
// an empty string when the answer is right, else what went wrong. Proves the toolchain,
// driver and device work together end to end.
std::string CudaSelfTest(int device);

}  // namespace moex::kcuda

#endif  // MOEX_KERNELS_CUDA_DEVICE_PROBE_H_
