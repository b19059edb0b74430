// Checked wrappers over the CUDA runtime (cuda_runtime_wrap.h). A failed call also clears
// CUDA's last-error state, so one failure is reported once and does not leak into the
// next, unrelated check.
#include <cuda_runtime.h>

#include <string>

#include "kernels_cuda/cuda_runtime_wrap.h"

namespace moex::kcuda {
namespace {

std::string Check(cudaError_t e, const std::string& call) {
  if (e == cudaSuccess) return std::string();
  cudaGetLastError();
  return call + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

std::string Bytes(size_t n) { return std::to_string(n) + " bytes"; }

cudaStream_t S(void* s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t E(void* e) { return static_cast<cudaEvent_t>(e); }

__global__ void EmptyKernel() {}

}  // namespace

std::string CudaGetDeviceCount(int* count) {
  *count = 0;
  return Check(cudaGetDeviceCount(count), "cudaGetDeviceCount");
}

std::string CudaSetDevice(int device) {
  return Check(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
}

std::string CudaDeviceName(int device, std::string* name) {
  cudaDeviceProp prop;
  std::string err = Check(cudaGetDeviceProperties(&prop, device),
                          "cudaGetDeviceProperties(" + std::to_string(device) + ")");
  if (err.empty()) *name = prop.name;
  return err;
}

std::string CudaDeviceShape(int device, int* multiprocessors, int* clock_khz, int* major,
                            int* minor) {
  const std::string d = "(" + std::to_string(device) + ")";
  std::string err =
      Check(cudaDeviceGetAttribute(multiprocessors, cudaDevAttrMultiProcessorCount, device),
            "cudaDeviceGetAttribute(MultiProcessorCount)" + d);
  if (err.empty()) {
    err = Check(cudaDeviceGetAttribute(clock_khz, cudaDevAttrClockRate, device),
                "cudaDeviceGetAttribute(ClockRate)" + d);
  }
  if (err.empty()) {
    err = Check(cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, device),
                "cudaDeviceGetAttribute(ComputeCapabilityMajor)" + d);
  }
  if (err.empty()) {
    err = Check(cudaDeviceGetAttribute(minor, cudaDevAttrComputeCapabilityMinor, device),
                "cudaDeviceGetAttribute(ComputeCapabilityMinor)" + d);
  }
  return err;
}

std::string CudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  return Check(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

std::string CudaMalloc(void** ptr, size_t bytes) {
  *ptr = nullptr;
  return Check(cudaMalloc(ptr, bytes), "cudaMalloc(" + Bytes(bytes) + ")");
}

std::string CudaFree(void* ptr) { return Check(cudaFree(ptr), "cudaFree"); }

std::string CudaMallocHost(void** ptr, size_t bytes) {
  *ptr = nullptr;
  return Check(cudaMallocHost(ptr, bytes), "cudaMallocHost(" + Bytes(bytes) + ")");
}

std::string CudaFreeHost(void* ptr) { return Check(cudaFreeHost(ptr), "cudaFreeHost"); }

std::string CudaStreamCreate(void** stream) {
  cudaStream_t s = nullptr;
  std::string err =
      Check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  *stream = err.empty() ? static_cast<void*>(s) : nullptr;
  return err;
}

std::string CudaStreamDestroy(void* stream) {
  return Check(cudaStreamDestroy(S(stream)), "cudaStreamDestroy");
}

std::string CudaStreamSynchronize(void* stream) {
  return Check(cudaStreamSynchronize(S(stream)), "cudaStreamSynchronize");
}

std::string CudaDeviceSynchronize() {
  return Check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

std::string CudaEventCreate(void** event) {
  cudaEvent_t e = nullptr;
  std::string err = Check(cudaEventCreate(&e), "cudaEventCreate");
  *event = err.empty() ? static_cast<void*>(e) : nullptr;
  return err;
}

std::string CudaEventDestroy(void* event) {
  return Check(cudaEventDestroy(E(event)), "cudaEventDestroy");
}

std::string CudaEventRecord(void* event, void* stream) {
  return Check(cudaEventRecord(E(event), S(stream)), "cudaEventRecord");
}

std::string CudaStreamWaitEvent(void* stream, void* event) {
  return Check(cudaStreamWaitEvent(S(stream), E(event), 0), "cudaStreamWaitEvent");
}

std::string CudaEventSynchronize(void* event) {
  return Check(cudaEventSynchronize(E(event)), "cudaEventSynchronize");
}

std::string CudaEventElapsedMs(void* start, void* end, float* ms) {
  *ms = 0;
  return Check(cudaEventElapsedTime(ms, E(start), E(end)), "cudaEventElapsedTime");
}

std::string CudaMemcpyH2DAsync(void* dst, const void* src, size_t bytes, void* stream) {
  return Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, S(stream)),
               "cudaMemcpyAsync(host to device, " + Bytes(bytes) + ")");
}

std::string CudaMemcpyD2HAsync(void* dst, const void* src, size_t bytes, void* stream) {
  return Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, S(stream)),
               "cudaMemcpyAsync(device to host, " + Bytes(bytes) + ")");
}

std::string CudaMemcpyD2DAsync(void* dst, const void* src, size_t bytes, void* stream) {
  return Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, S(stream)),
               "cudaMemcpyAsync(device to device, " + Bytes(bytes) + ")");
}

std::string CudaMemsetAsync(void* dst, int value, size_t bytes, void* stream) {
  return Check(cudaMemsetAsync(dst, value, bytes, S(stream)),
               "cudaMemsetAsync(" + Bytes(bytes) + ")");
}

std::string CudaLaunchEmpty(void* stream) {
  EmptyKernel<<<1, 1, 0, S(stream)>>>();
  return Check(cudaGetLastError(), "EmptyKernel<<<1, 1>>> launch");
}

}  // namespace moex::kcuda
