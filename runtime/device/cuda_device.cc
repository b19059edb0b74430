// The real GPU through kernels_cuda/cuda_runtime_wrap.h. Compiled only when moex is built
// with CUDA (MOEX_HAVE_CUDA); cpu_device.cc supplies CreateCudaDevice otherwise.
//
// Streams are CUDA streams (kHostStream is host work: Launch runs fn on the calling thread
// and copies on it are synchronous). The device clock is CUDA event time since creation,
// so Event::seconds, EventTime and Synchronize are what the GPU measured.
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels_cuda/cuda_runtime_wrap.h"
#include "runtime/device/device.h"
#include "runtime/device/device_internal.h"

namespace moex {
namespace {

absl::Status CudaError(const std::string& device, const std::string& err) {
  return absl::InternalError(absl::StrCat(device, ": ", err));
}

class CudaDevice : public Device {
 public:
  CudaDevice(int index, std::string name, int64_t budget, int64_t total, void* host_stream,
             void* start_event)
      : index_(index),
        name_(std::move(name)),
        budget_(budget),
        total_(total),
        start_event_(start_event),
        start_time_(std::chrono::steady_clock::now()),
        streams_{host_stream} {}

  ~CudaDevice() override {
    // Errors here have nowhere to go; the process's context is torn down anyway.
    kcuda::CudaSetDevice(index_);
    kcuda::CudaDeviceSynchronize();
    for (auto& [serial, ev] : pending_events_) kcuda::CudaEventDestroy(ev);
    kcuda::CudaEventDestroy(start_event_);
    for (void* s : streams_) kcuda::CudaStreamDestroy(s);
    for (auto& [id, a] : live_) kcuda::CudaFree(a.ptr);
    for (void* p : pinned_) kcuda::CudaFreeHost(p);
  }

  DeviceKind kind() const override { return DeviceKind::kCuda; }
  std::string name() const override { return name_; }

  absl::StatusOr<DeviceAlloc> Allocate(int64_t bytes, std::string_view what) override {
    absl::Status st = device_internal::CheckSize(name_, bytes, what);
    if (!st.ok()) return st;
    std::lock_guard<std::mutex> lock(mu_);
    if (bytes > budget_ - used_) {
      return device_internal::BudgetExhausted(name_, bytes, what, used_, budget_);
    }
    DeviceAlloc a;
    a.bytes = bytes;
    a.id = next_id_++;
    if (bytes > 0) {
      std::string err = kcuda::CudaSetDevice(index_);
      if (err.empty()) err = kcuda::CudaMalloc(&a.ptr, static_cast<size_t>(bytes));
      if (!err.empty()) {
        return absl::ResourceExhaustedError(absl::StrCat(
            name_, ": cannot allocate ", bytes, " bytes for ", std::string(what), ": ", err));
      }
    }
    used_ += bytes;
    peak_ = std::max(peak_, used_);
    live_.emplace(a.id, a);
    return a;
  }

  void Free(DeviceAlloc& alloc) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(alloc.id);
    if (it != live_.end() && it->second.ptr == alloc.ptr) {
      if (it->second.ptr != nullptr) kcuda::CudaFree(it->second.ptr);
      used_ -= it->second.bytes;
      live_.erase(it);
    }
    alloc = DeviceAlloc();
  }

  MemoryInfo memory() const override {
    std::lock_guard<std::mutex> lock(mu_);
    MemoryInfo m;
    m.budget_bytes = budget_;
    m.used_bytes = used_;
    m.peak_bytes = peak_;
    m.total_bytes = total_;
    return m;
  }

  absl::StatusOr<void*> AllocatePinned(int64_t bytes) override {
    absl::Status st = device_internal::CheckSize(name_, bytes, "pinned staging memory");
    if (!st.ok()) return st;
    void* p = nullptr;
    std::string err = kcuda::CudaMallocHost(&p, static_cast<size_t>(bytes == 0 ? 1 : bytes));
    if (!err.empty()) return absl::ResourceExhaustedError(absl::StrCat(name_, ": ", err));
    std::lock_guard<std::mutex> lock(mu_);
    pinned_.insert(p);
    return p;
  }

  void FreePinned(void* ptr) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (pinned_.erase(ptr) > 0) kcuda::CudaFreeHost(ptr);
  }

  absl::StatusOr<StreamId> CreateStream() override {
    void* s = nullptr;
    std::string err = kcuda::CudaSetDevice(index_);
    if (err.empty()) err = kcuda::CudaStreamCreate(&s);
    if (!err.empty()) return CudaError(name_, err);
    std::lock_guard<std::mutex> lock(mu_);
    streams_.push_back(s);
    return static_cast<StreamId>(streams_.size() - 1);
  }

  absl::Status CopyToDevice(StreamId stream, void* dst, const void* src, int64_t bytes) override {
    return Copy(stream, dst, src, bytes, /*to_device=*/true);
  }
  absl::Status CopyToHost(StreamId stream, void* dst, const void* src, int64_t bytes) override {
    return Copy(stream, dst, src, bytes, /*to_device=*/false);
  }

  absl::Status Launch(StreamId stream, const WorkCost& cost,
                      const std::function<absl::Status(void*)>& fn) override {
    absl::StatusOr<void*> s = Native(stream, "Launch");
    if (!s.ok()) return s.status();
    if (stream == kHostStream) return fn(nullptr);
    std::string err = kcuda::CudaSetDevice(index_);
    if (!err.empty()) return CudaError(name_, err);
    return fn(*s);
  }

  absl::StatusOr<Event> Record(StreamId stream) override {
    absl::StatusOr<void*> s = Native(stream, "Record");
    if (!s.ok()) return s.status();
    void* ev = nullptr;
    std::string err = kcuda::CudaSetDevice(index_);
    if (err.empty()) err = kcuda::CudaEventCreate(&ev);
    if (err.empty()) err = kcuda::CudaEventRecord(ev, *s);
    if (!err.empty()) {
      if (ev != nullptr) kcuda::CudaEventDestroy(ev);
      return CudaError(name_, err);
    }
    Event e;
    e.stream = stream;
    e.seconds = Now();  // a lower bound; EventTime gives the measured completion
    std::lock_guard<std::mutex> lock(mu_);
    e.serial = ++serial_;
    pending_events_.emplace(e.serial, ev);
    return e;
  }

  absl::Status Wait(StreamId stream, const Event& event) override {
    absl::StatusOr<void*> s = Native(stream, "Wait");
    if (!s.ok()) return s.status();
    void* ev = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (event.serial == 0 || event.serial > serial_) {
        return absl::InvalidArgumentError(absl::StrCat(
            name_, ": Wait on an event this device did not record (serial ", event.serial, ")"));
      }
      auto it = pending_events_.find(event.serial);
      if (it == pending_events_.end()) return absl::OkStatus();  // passed a Synchronize
      ev = it->second;
    }
    std::string err = stream == kHostStream ? kcuda::CudaEventSynchronize(ev)
                                            : kcuda::CudaStreamWaitEvent(*s, ev);
    return err.empty() ? absl::OkStatus() : CudaError(name_, err);
  }

  absl::StatusOr<double> Synchronize() override {
    std::string err = kcuda::CudaSetDevice(index_);
    if (err.empty()) err = kcuda::CudaDeviceSynchronize();
    if (!err.empty()) return CudaError(name_, err);
    // Every event has completed: keep its time, release the CUDA event.
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [serial, ev] : pending_events_) {
      float ms = 0;
      err = kcuda::CudaEventElapsedMs(start_event_, ev, &ms);
      if (!err.empty()) return CudaError(name_, err);
      done_times_[serial] = ms * 1e-3;
      kcuda::CudaEventDestroy(ev);
    }
    pending_events_.clear();
    return Now();
  }

  double StreamTime(StreamId stream) const override { return Now(); }

  absl::StatusOr<double> EventTime(const Event& event) override {
    void* ev = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto it = done_times_.find(event.serial); it != done_times_.end()) return it->second;
      auto it = pending_events_.find(event.serial);
      if (it == pending_events_.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(name_, ": EventTime of an event this device did not record (serial ",
                         event.serial, ")"));
      }
      ev = it->second;
    }
    float ms = 0;
    std::string err = kcuda::CudaEventSynchronize(ev);
    if (err.empty()) err = kcuda::CudaEventElapsedMs(start_event_, ev, &ms);
    if (!err.empty()) return CudaError(name_, err);
    return ms * 1e-3;
  }

 private:
  double Now() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time_).count();
  }

  absl::StatusOr<void*> Native(StreamId s, const char* op) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (s >= 0 && static_cast<size_t>(s) < streams_.size()) return streams_[s];
    return absl::InvalidArgumentError(absl::StrCat(name_, ": ", op, " on unknown stream ", s,
                                                   " (streams 0..", streams_.size() - 1, ")"));
  }

  absl::Status Copy(StreamId stream, void* dst, const void* src, int64_t bytes, bool to_device) {
    absl::StatusOr<void*> s = Native(stream, to_device ? "CopyToDevice" : "CopyToHost");
    if (!s.ok()) return s.status();
    if (bytes < 0 || (bytes > 0 && (dst == nullptr || src == nullptr))) {
      return absl::InvalidArgumentError(
          absl::StrCat(name_, ": copy of ", bytes, " bytes with a null or negative argument"));
    }
    if (bytes == 0) return absl::OkStatus();
    const size_t n = static_cast<size_t>(bytes);
    std::string err = kcuda::CudaSetDevice(index_);
    if (err.empty()) {
      err = to_device ? kcuda::CudaMemcpyH2DAsync(dst, src, n, *s)
                      : kcuda::CudaMemcpyD2HAsync(dst, src, n, *s);
    }
    // The host lane is synchronous: its copy has finished when the call returns.
    if (err.empty() && stream == kHostStream) err = kcuda::CudaStreamSynchronize(*s);
    return err.empty() ? absl::OkStatus() : CudaError(name_, err);
  }

  const int index_;
  const std::string name_;
  const int64_t budget_;
  const int64_t total_;
  void* const start_event_;
  const std::chrono::steady_clock::time_point start_time_;

  mutable std::mutex mu_;
  std::vector<void*> streams_;  // [0]: the internal stream behind kHostStream's copies
  int64_t used_ = 0;
  int64_t peak_ = 0;
  uint64_t next_id_ = 1;
  uint64_t serial_ = 0;
  std::unordered_map<uint64_t, DeviceAlloc> live_;
  std::set<void*> pinned_;
  std::unordered_map<uint64_t, void*> pending_events_;  // recorded since the last Synchronize
  std::unordered_map<uint64_t, double> done_times_;     // seconds, once synchronised
};

}  // namespace

absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(int index, int64_t budget_bytes) {
  int count = 0;
  std::string err = kcuda::CudaGetDeviceCount(&count);
  if (!err.empty()) return absl::UnavailableError(absl::StrCat("cuda: no usable GPU: ", err));
  if (count == 0) return absl::UnavailableError("cuda: no CUDA device present");
  if (index < 0 || index >= count) {
    return absl::UnavailableError(absl::StrCat("cuda:", index, ": no such device (", count,
                                               " present: cuda:0..cuda:", count - 1, ")"));
  }
  std::string dev_name;
  size_t free_b = 0, total_b = 0;
  err = kcuda::CudaSetDevice(index);
  if (err.empty()) err = kcuda::CudaDeviceName(index, &dev_name);
  if (err.empty()) err = kcuda::CudaMemGetInfo(&free_b, &total_b);
  if (!err.empty()) return absl::UnavailableError(absl::StrCat("cuda:", index, ": ", err));
  const std::string name = absl::StrCat("cuda:", index, " (", dev_name, ")");
  if (budget_bytes < 0 || budget_bytes > static_cast<int64_t>(free_b)) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": a memory budget of ", budget_bytes,
                                                   " bytes is outside 0..", free_b,
                                                   " (the free memory)"));
  }
  void* host_stream = nullptr;
  void* start = nullptr;
  err = kcuda::CudaStreamCreate(&host_stream);
  if (err.empty()) err = kcuda::CudaEventCreate(&start);
  if (err.empty()) err = kcuda::CudaEventRecord(start, host_stream);
  if (!err.empty()) {
    if (start != nullptr) kcuda::CudaEventDestroy(start);
    if (host_stream != nullptr) kcuda::CudaStreamDestroy(host_stream);
    return absl::UnavailableError(absl::StrCat(name, ": ", err));
  }
  const int64_t budget = budget_bytes == 0 ? static_cast<int64_t>(free_b) : budget_bytes;
  return std::unique_ptr<Device>(
      new CudaDevice(index, name, budget, static_cast<int64_t>(total_b), host_stream, start));
}

}  // namespace moex
