// The CUDA runtime calls the device layer needs, as plain C++: no CUDA type leaves
// kernels_cuda/ (streams and events are opaque void*). Every function checks its call and
// returns "" on success, else one line naming the call, its arguments and the driver's
// words: "cudaMalloc(1073741824 bytes): cudaErrorMemoryAllocation (out of memory)".
// Thread-safe as the CUDA runtime is; the current device is per thread (CudaSetDevice).
#ifndef MOEX_KERNELS_CUDA_CUDA_RUNTIME_WRAP_H_
#define MOEX_KERNELS_CUDA_CUDA_RUNTIME_WRAP_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace moex::kcuda {

std::string CudaGetDeviceCount(int* count);
std::string CudaSetDevice(int device);
std::string CudaDeviceName(int device, std::string* name);
// Streaming multiprocessors, SM clock (kHz) and compute capability of `device`.
std::string CudaDeviceShape(int device, int* multiprocessors, int* clock_khz, int* major,
                            int* minor);
std::string CudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);

std::string CudaMalloc(void** ptr, size_t bytes);
std::string CudaFree(void* ptr);
// Page-locked host memory (the source of full-speed asynchronous copies).
std::string CudaMallocHost(void** ptr, size_t bytes);
std::string CudaFreeHost(void* ptr);

// A stream that does not synchronise with the legacy default stream.
std::string CudaStreamCreate(void** stream);
std::string CudaStreamDestroy(void* stream);
std::string CudaStreamSynchronize(void* stream);
std::string CudaDeviceSynchronize();

// Events record timing (they are the device clock of CudaDevice).
std::string CudaEventCreate(void** event);
std::string CudaEventDestroy(void* event);
std::string CudaEventRecord(void* event, void* stream);
std::string CudaStreamWaitEvent(void* stream, void* event);
std::string CudaEventSynchronize(void* event);
std::string CudaEventElapsedMs(void* start, void* end, float* ms);

std::string CudaMemcpyH2DAsync(void* dst, const void* src, size_t bytes, void* stream);
std::string CudaMemcpyD2HAsync(void* dst, const void* src, size_t bytes, void* stream);
std::string CudaMemcpyD2DAsync(void* dst, const void* src, size_t bytes, void* stream);
std::string CudaMemsetAsync(void* dst, int value, size_t bytes, void* stream);

// Launches a kernel that does nothing (one block of one thread): what calibration times
// to measure the launch cost.
std::string CudaLaunchEmpty(void* stream);

}  // namespace moex::kcuda

#endif  // MOEX_KERNELS_CUDA_CUDA_RUNTIME_WRAP_H_
