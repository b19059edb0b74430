// Pieces the cpu, sim and cuda devices share: the budget check and its message, and a
// pool of host memory with a byte budget (the memory of the cpu and sim devices).
#ifndef MOEX_RUNTIME_DEVICE_DEVICE_INTERNAL_H_
#define MOEX_RUNTIME_DEVICE_DEVICE_INTERNAL_H_

#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/device/device.h"

namespace moex::device_internal {

// kResourceExhausted: "DEVICE: cannot allocate N bytes for WHAT: U of B bytes in use".
absl::Status BudgetExhausted(const std::string& device, int64_t bytes, std::string_view what,
                             int64_t used, int64_t budget);
// kInvalidArgument for a negative size.
absl::Status CheckSize(const std::string& device, int64_t bytes, std::string_view what);

// The machine's physical memory (sysconf), 0 when unknown.
int64_t PhysicalMemoryBytes();

// Host memory handed out under a byte budget. Thread-safe. Frees what is left when
// destroyed (a device releases its memory when it goes).
class HostMemoryPool {
 public:
  HostMemoryPool(std::string device, int64_t budget_bytes, int64_t total_bytes);
  ~HostMemoryPool();
  HostMemoryPool(const HostMemoryPool&) = delete;
  HostMemoryPool& operator=(const HostMemoryPool&) = delete;

  absl::StatusOr<DeviceAlloc> Allocate(int64_t bytes, std::string_view what);
  // Unknown or already-freed allocations are ignored; `alloc` is reset either way.
  void Free(DeviceAlloc& alloc);
  MemoryInfo memory() const;
  absl::StatusOr<void*> AllocatePinned(int64_t bytes);
  void FreePinned(void* ptr);

 private:
  const std::string device_;
  const int64_t budget_;
  const int64_t total_;
  mutable std::mutex mu_;
  int64_t used_ = 0;
  int64_t peak_ = 0;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, DeviceAlloc> live_;
  std::set<void*> pinned_;
};

// A device whose "device memory" is host memory under a budget (cpu, sim): the memory half
// of the interface, once.
class HostMemoryDevice : public Device {
 public:
  HostMemoryDevice(std::string name, int64_t budget_bytes, int64_t total_bytes)
      : pool_(std::move(name), budget_bytes, total_bytes) {}
  absl::StatusOr<DeviceAlloc> Allocate(int64_t bytes, std::string_view what) override {
    return pool_.Allocate(bytes, what);
  }
  void Free(DeviceAlloc& alloc) override { pool_.Free(alloc); }
  MemoryInfo memory() const override { return pool_.memory(); }
  absl::StatusOr<void*> AllocatePinned(int64_t bytes) override {
    return pool_.AllocatePinned(bytes);
  }
  void FreePinned(void* ptr) override { pool_.FreePinned(ptr); }

 private:
  HostMemoryPool pool_;
};

}  // namespace moex::device_internal

#endif  // MOEX_RUNTIME_DEVICE_DEVICE_INTERNAL_H_
