// The budgeted host memory of the cpu and sim devices, and the shared error messages.
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/device/device_internal.h"

namespace moex::device_internal {
namespace {

// Device buffers are read by SIMD kernels; 64 B (a cache line, an AVX-512 vector) suits
// every one of them.
constexpr size_t kAlignment = 64;

void* AlignedAlloc(int64_t bytes) {
  const size_t rounded = (static_cast<size_t>(bytes) + kAlignment - 1) / kAlignment * kAlignment;
  return std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
}

}  // namespace

absl::Status BudgetExhausted(const std::string& device, int64_t bytes, std::string_view what,
                             int64_t used, int64_t budget) {
  return absl::ResourceExhaustedError(absl::StrCat(device, ": cannot allocate ", bytes,
                                                   " bytes for ", std::string(what), ": ", used,
                                                   " of ", budget, " bytes in use"));
}

absl::Status CheckSize(const std::string& device, int64_t bytes, std::string_view what) {
  if (bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(device, ": negative size ", bytes, " for ", std::string(what)));
  }
  return absl::OkStatus();
}

int64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return 0;
  return static_cast<int64_t>(pages) * page;
}

HostMemoryPool::HostMemoryPool(std::string device, int64_t budget_bytes, int64_t total_bytes)
    : device_(std::move(device)), budget_(budget_bytes), total_(total_bytes) {}

HostMemoryPool::~HostMemoryPool() {
  for (auto& [id, a] : live_) std::free(a.ptr);
  for (void* p : pinned_) std::free(p);
}

absl::StatusOr<DeviceAlloc> HostMemoryPool::Allocate(int64_t bytes, std::string_view what) {
  absl::Status st = CheckSize(device_, bytes, what);
  if (!st.ok()) return st;
  std::lock_guard<std::mutex> lock(mu_);
  if (bytes > budget_ - used_) return BudgetExhausted(device_, bytes, what, used_, budget_);
  DeviceAlloc a;
  a.bytes = bytes;
  a.id = next_id_++;
  if (bytes > 0) {
    a.ptr = AlignedAlloc(bytes);
    if (a.ptr == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(device_, ": the host has no ", bytes,
                                                       " bytes left for ", std::string(what)));
    }
  }
  used_ += bytes;
  peak_ = std::max(peak_, used_);
  live_.emplace(a.id, a);
  return a;
}

void HostMemoryPool::Free(DeviceAlloc& alloc) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(alloc.id);
  if (it != live_.end() && it->second.ptr == alloc.ptr) {
    std::free(it->second.ptr);
    used_ -= it->second.bytes;
    live_.erase(it);
  }
  alloc = DeviceAlloc();
}

MemoryInfo HostMemoryPool::memory() const {
  std::lock_guard<std::mutex> lock(mu_);
  MemoryInfo m;
  m.budget_bytes = budget_;
  m.used_bytes = used_;
  m.peak_bytes = peak_;
  m.total_bytes = total_;
  return m;
}

absl::StatusOr<void*> HostMemoryPool::AllocatePinned(int64_t bytes) {
  absl::Status st = CheckSize(device_, bytes, "pinned staging memory");
  if (!st.ok()) return st;
  void* p = AlignedAlloc(bytes);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat(device_, ": the host has no ", bytes, " bytes left for pinned memory"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  pinned_.insert(p);
  return p;
}

void HostMemoryPool::FreePinned(void* ptr) {
  std::lock_guard<std::mutex> lock(mu_);
  if (pinned_.erase(ptr) > 0) std::free(ptr);
}

}  // namespace moex::device_internal
