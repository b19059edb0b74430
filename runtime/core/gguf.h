// GGUF files: a validating reader over a read-only memory map, and a writer.
//
// Format (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor_count,
// u64 kv_count, then kv_count (key string, u32 value type, value) entries, then
// tensor_count (name string, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)
// infos, padding to `general.alignment` (default 32), then the tensor data section.
// Strings are u64 length + bytes (no NUL). Offsets are relative to the data section and
// must be multiples of the alignment.
//
// The reader validates everything before handing out a pointer: every length, count and
// offset is checked against the file size, so a corrupt file is an error naming the
// file, the key or tensor, and the byte offset — never a crash or an over-read.
// Tensor data is read in place (pointers into the mapping); nothing is copied.
//
// Thread-safety: a GgufFile is immutable after Open and may be shared by any number of
// threads. GgufWriter is single-threaded.
#ifndef MOEX_RUNTIME_CORE_GGUF_H_
#define MOEX_RUNTIME_CORE_GGUF_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex {

enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
const char* GgufTypeName(GgufType t);

// One metadata value. Scalars are held by value; strings as views into the mapping (or
// owned storage for values built in memory); arrays as a vector of values of one type,
// which may itself be kArray (nested arrays).
class GgufValue {
 public:
  GgufValue() = default;
  static GgufValue Int(GgufType t, int64_t v);  // any integer or bool type
  static GgufValue Uint64(uint64_t v);
  static GgufValue Float(GgufType t, double v);  // kFloat32 or kFloat64
  static GgufValue Bool(bool v);
  static GgufValue String(std::string v);           // owns its bytes
  static GgufValue StringView(std::string_view v);  // refers to bytes kept alive elsewhere
  static GgufValue Array(GgufType elem_type, std::vector<GgufValue> elems);

  GgufType type() const { return type_; }
  bool is_integer() const;  // any (u)int type or bool
  bool is_float() const { return type_ == GgufType::kFloat32 || type_ == GgufType::kFloat64; }
  int64_t AsInt() const { return i_; }  // REQUIRES: is_integer() (u64 above 2^63 wraps)
  uint64_t AsUint64() const { return static_cast<uint64_t>(i_); }
  double AsDouble() const { return is_float() ? f_ : static_cast<double>(i_); }
  bool AsBool() const { return i_ != 0; }
  std::string_view AsString() const { return str_; }  // REQUIRES: type() == kString
  GgufType elem_type() const { return elem_type_; }   // REQUIRES: type() == kArray
  const std::vector<GgufValue>& elems() const { return elems_; }

 private:
  GgufType type_ = GgufType::kUint8;
  GgufType elem_type_ = GgufType::kUint8;
  int64_t i_ = 0;
  double f_ = 0;
  std::string_view str_;
  std::shared_ptr<std::string> owned_;  // backing store for String()
  std::vector<GgufValue> elems_;
};

struct GgufKeyValue {
  std::string key;
  GgufValue value;
  uint64_t file_offset = 0;  // where the entry starts in the file
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;      // ne[0] first: dims[0] is the contiguous (row) dimension
  uint32_t type = 0;              // raw ggml type id (see kernels_cpu/quant.h)
  uint64_t offset = 0;            // relative to the data section
  uint64_t nbytes = 0;            // validated: inside the file
  const uint8_t* data = nullptr;  // in the mapping
  int64_t n_elements() const;
};

class GgufFile {
 public:
  // Maps and validates `path`. Errors: kNotFound / kPermissionDenied for the file,
  // kDataLoss for a corrupt or truncated file, kInvalidArgument for values out of range
  // (absurd counts or dimensions), kUnimplemented for an unknown tensor type. Messages
  // name the file and the key/tensor and byte offset.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  // Enters every page of the tensor data into this process's page tables now (reading
  // what is not yet in the page cache), so that first use does not take a page fault per
  // 4 KiB: a 4.4 GB model's first prefill otherwise spends ~20 % of its time in faults.
  // llama.cpp maps with MAP_POPULATE for the same reason. Weights stay mapped, not
  // copied. Best effort: false (the mapping stays lazy) where the kernel lacks
  // MADV_POPULATE_READ (Linux < 5.14) or a page cannot be read.
  bool Populate() const;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t file_size() const { return size_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  const uint8_t* base() const { return base_; }

  const std::vector<GgufKeyValue>& metadata() const { return kvs_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  const GgufValue* Find(std::string_view key) const;
  const GgufTensorInfo* FindTensor(std::string_view name) const;

  // Typed getters: an error naming the file and key when the key is absent or has a
  // type that cannot represent the request (a float for GetInt, an array for GetString).
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;  // accepts integers too
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string_view> GetString(std::string_view key) const;
  absl::StatusOr<const GgufValue*> GetArray(std::string_view key) const;
  // Same, but `fallback` when the key is absent (a wrong type is still an error).
  absl::StatusOr<int64_t> GetIntOr(std::string_view key, int64_t fallback) const;
  absl::StatusOr<double> GetFloatOr(std::string_view key, double fallback) const;
  absl::StatusOr<bool> GetBoolOr(std::string_view key, bool fallback) const;

 private:
  GgufFile() = default;
  friend class GgufParser;

  std::string path_;
  uint32_t version_ = 0;
  uint64_t size_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  const uint8_t* base_ = nullptr;
  std::vector<GgufKeyValue> kvs_;
  std::vector<GgufTensorInfo> tensors_;
  // Indices into kvs_ / tensors_ sorted by key / name, for Find and FindTensor.
  std::vector<uint32_t> kv_order_;
  std::vector<uint32_t> tensor_order_;
};

// Builds a GGUF v3 file in memory order: metadata in insertion order, tensors in
// insertion order, each tensor's data aligned to `general.alignment` (32 unless set).
class GgufWriter {
 public:
  void Set(std::string key, GgufValue value);  // replaces an existing key, keeps its place
  void SetString(std::string key, std::string v) {
    Set(std::move(key), GgufValue::String(std::move(v)));
  }
  void SetU32(std::string key, uint32_t v) {
    Set(std::move(key), GgufValue::Int(GgufType::kUint32, v));
  }
  void SetF32(std::string key, float v) {
    Set(std::move(key), GgufValue::Float(GgufType::kFloat32, v));
  }
  void SetBool(std::string key, bool v) { Set(std::move(key), GgufValue::Bool(v)); }
  // Copies the key/value pairs of `src` whose key starts with `prefix`.
  void CopyMetadata(const GgufFile& src, std::string_view prefix);

  // `data` must hold exactly the tensor's bytes (checked); it is copied.
  absl::Status AddTensor(std::string name, std::vector<int64_t> dims, uint32_t type,
                         std::span<const uint8_t> data);
  // A tensor whose bytes are produced only when the file is written: `fill` gets a buffer
  // of exactly the tensor's size. Writing a large model then holds one tensor in memory
  // at a time instead of the whole file. An error from `fill` aborts the write.
  using TensorFiller = std::function<absl::Status(std::span<uint8_t>)>;
  absl::Status AddTensorDeferred(std::string name, std::vector<int64_t> dims, uint32_t type,
                                 TensorFiller fill);

  // Writes to `path` (through a temporary file renamed on success, so a failed write
  // never leaves a half file under the final name).
  absl::Status WriteFile(const std::string& path) const;
  // The serialised file, for tests.
  absl::StatusOr<std::vector<uint8_t>> Serialize() const;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> dims;
    uint32_t type;
    uint64_t nbytes;
    std::vector<uint8_t> data;  // empty for a deferred tensor
    TensorFiller fill;          // set for a deferred tensor
  };
  // Checks a tensor's name, shape and type; returns its size in bytes.
  absl::StatusOr<uint64_t> CheckTensor(const std::string& name, const std::vector<int64_t>& dims,
                                       uint32_t type) const;
  std::vector<GgufKeyValue> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace moex

#endif  // MOEX_RUNTIME_CORE_GGUF_H_
