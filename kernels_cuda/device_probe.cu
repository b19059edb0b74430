// Device discovery and an end-to-end self-test kernel. Every CUDA call is checked; a
// failure becomes a message, never an abort.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "kernels_cuda/device_probe.h"

namespace moex::kcuda {
namespace {

std::string Describe(cudaError_t e, const char* what) {
  return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

__global__ void AddKernel(const float* a, const float* b, float* c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

}  // namespace

std::vector<CudaDeviceInfo> ProbeCudaDevices(std::string* why_none) {
  std::vector<CudaDeviceInfo> out;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    if (why_none) *why_none = Describe(e, "cudaGetDeviceCount");
    cudaGetLastError();  // clear the sticky error state for later callers
    return out;
  }
  if (count == 0 && why_none) *why_none = "no CUDA device present";
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    CudaDeviceInfo info;
    info.index = i;
    info.name = prop.name;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
    info.total_bytes = prop.totalGlobalMem;
    info.multiprocessors = prop.multiProcessorCount;
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      info.free_bytes = free_b;
    }
    out.push_back(info);
  }
  return out;
}

std::string CudaSelfTest(int device) {
  constexpr int kN = 1000;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return Describe(e, "cudaSetDevice");
  std::vector<float> a(kN), b(kN), c(kN, -1.f);
  for (int i = 0; i < kN; ++i) {
    a[i] = static_cast<float>(i);
    b[i] = 0.5f * static_cast<float>(i);
  }
  float *da = nullptr, *db = nullptr, *dc = nullptr;
  std::string err;
  auto check = [&err](cudaError_t st, const char* what) {
    if (st != cudaSuccess && err.empty()) err = Describe(st, what);
    return st == cudaSuccess;
  };
  if (check(cudaMalloc(&da, kN * sizeof(float)), "cudaMalloc") &&
      check(cudaMalloc(&db, kN * sizeof(float)), "cudaMalloc") &&
      check(cudaMalloc(&dc, kN * sizeof(float)), "cudaMalloc") &&
      check(cudaMemcpy(da, a.data(), kN * sizeof(float), cudaMemcpyHostToDevice), "H2D") &&
      check(cudaMemcpy(db, b.data(), kN * sizeof(float), cudaMemcpyHostToDevice), "H2D")) {
    AddKernel<<<(kN + 255) / 256, 256>>>(da, db, dc, kN);
    if (check(cudaGetLastError(), "AddKernel launch") &&
        check(cudaMemcpy(c.data(), dc, kN * sizeof(float), cudaMemcpyDeviceToHost), "D2H")) {
      for (int i = 0; i < kN; ++i) {
        if (c[i] != a[i] + b[i]) {
          err = "AddKernel gave a wrong sum at index " + std::to_string(i);
          break;
        }
      }
    }
  }
  if (da) cudaFree(da);
  if (db) cudaFree(db);
  if (dc) cudaFree(dc);
  return err;
}

}  // namespace moex::kcuda
