// The host as a device: host memory under a budget, everything synchronous on the calling
// thread, the wall clock. Also CreateDevice, which parses the --device spec.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/device/device.h"
#include "runtime/device/device_internal.h"

namespace moex {
namespace {

class CpuDevice : public device_internal::HostMemoryDevice {
 public:
  CpuDevice(int64_t budget, int64_t total)
      : HostMemoryDevice("cpu", budget, total), start_(std::chrono::steady_clock::now()) {}

  DeviceKind kind() const override { return DeviceKind::kCpu; }
  std::string name() const override { return "cpu"; }

  absl::StatusOr<StreamId> CreateStream() override {
    std::lock_guard<std::mutex> lock(mu_);
    return ++last_stream_;
  }

  absl::Status CopyToDevice(StreamId stream, void* dst, const void* src, int64_t bytes) override {
    return Copy(stream, dst, src, bytes, "CopyToDevice");
  }
  absl::Status CopyToHost(StreamId stream, void* dst, const void* src, int64_t bytes) override {
    return Copy(stream, dst, src, bytes, "CopyToHost");
  }

  absl::Status Launch(StreamId stream, const WorkCost& cost,
                      const std::function<absl::Status(void*)>& fn) override {
    absl::Status st = CheckStream(stream, "Launch");
    if (!st.ok()) return st;
    return fn(nullptr);
  }

  absl::StatusOr<Event> Record(StreamId stream) override {
    absl::Status st = CheckStream(stream, "Record");
    if (!st.ok()) return st;
    Event e;
    e.stream = stream;
    {
      std::lock_guard<std::mutex> lock(mu_);
      e.serial = ++serial_;
    }
    e.seconds = Now();  // everything issued so far has already run
    return e;
  }

  absl::Status Wait(StreamId stream, const Event& event) override {
    absl::Status st = CheckStream(stream, "Wait");
    if (!st.ok()) return st;
    std::lock_guard<std::mutex> lock(mu_);
    if (event.serial == 0 || event.serial > serial_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cpu: Wait on an event this device did not record (serial ", event.serial, ")"));
    }
    return absl::OkStatus();  // work is synchronous: the event has passed
  }

  absl::StatusOr<double> Synchronize() override { return Now(); }
  double StreamTime(StreamId stream) const override { return Now(); }

 private:
  double Now() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  absl::Status CheckStream(StreamId s, const char* op) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (s >= 0 && s <= last_stream_) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("cpu: ", op, " on unknown stream ", s, " (streams 0..", last_stream_, ")"));
  }
  absl::Status Copy(StreamId stream, void* dst, const void* src, int64_t bytes, const char* op) {
    absl::Status st = CheckStream(stream, op);
    if (!st.ok()) return st;
    if (bytes < 0 || (bytes > 0 && (dst == nullptr || src == nullptr))) {
      return absl::InvalidArgumentError(
          absl::StrCat("cpu: ", op, " of ", bytes, " bytes with a null or negative argument"));
    }
    if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
    return absl::OkStatus();
  }

  const std::chrono::steady_clock::time_point start_;
  mutable std::mutex mu_;
  StreamId last_stream_ = kHostStream;
  uint64_t serial_ = 0;
};

}  // namespace

std::unique_ptr<Device> CreateCpuDevice(int64_t budget_bytes) {
  const int64_t total = device_internal::PhysicalMemoryBytes();
  int64_t budget = budget_bytes > 0 ? budget_bytes : total;
  if (budget <= 0) budget = INT64_MAX;  // the machine would not say: no limit of ours
  return std::make_unique<CpuDevice>(budget, total);
}

std::unique_ptr<Device> CreateCpuDevice() { return CreateCpuDevice(0); }

absl::StatusOr<int> ParseCudaDeviceIndex(std::string_view spec_view) {
  const std::string spec(spec_view);  // Debian's Abseil takes no std::string_view
  if (spec == "cuda") return 0;
  const std::string n = spec.substr(std::min<size_t>(spec.size(), 5));
  int index = -1;
  if (spec.rfind("cuda:", 0) != 0 || n.empty() ||
      n.find_first_not_of("0123456789") != std::string::npos || !absl::SimpleAtoi(n, &index)) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", spec, "': expected cuda:N with N a device index (0, 1, ...)"));
  }
  return index;
}

absl::StatusOr<std::unique_ptr<Device>> CreateDevice(std::string_view spec, const CpuProfile& cpu,
                                                     int64_t budget_bytes) {
  const std::string s(spec);
  if (budget_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", s, "': negative memory budget ", budget_bytes));
  }
  if (s == "cpu") return CreateCpuDevice(budget_bytes);
  if (s == "cuda" || s.rfind("cuda:", 0) == 0) {
    absl::StatusOr<int> index = ParseCudaDeviceIndex(s);
    if (!index.ok()) return index.status();
    return CreateCudaDevice(*index, budget_bytes);
  }
  if (s.rfind("sim:", 0) == 0) {
    const std::string profile = s.substr(4);
    if (profile.empty()) {
      std::vector<std::string> names;
      for (const GpuProfile& g : AllGpuProfiles()) names.push_back(g.name);
      return absl::InvalidArgumentError(absl::StrCat(
          "device '", s, "': name a GPU profile after 'sim:' (", absl::StrJoin(names, ", "), ")"));
    }
    absl::StatusOr<GpuProfile> gpu = FindGpuProfile(profile);
    if (!gpu.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("device '", s, "': ", std::string(gpu.status().message())));
    }
    SimDeviceOptions o;
    o.gpu = *gpu;
    o.cpu = cpu;
    o.budget_bytes = budget_bytes;
    return CreateSimDevice(o);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", s, "': expected cpu, cuda, cuda:N or sim:PROFILE"));
}

#ifndef MOEX_HAVE_CUDA
absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(int index, int64_t budget_bytes) {
  return absl::UnavailableError("cuda: moex was built without CUDA");
}
#endif

}  // namespace moex
