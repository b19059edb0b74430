#include "runtime/core/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels_cpu/quant.h"
#include "runtime/core/status_macros.h"

namespace moex {
namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint64_t kHeaderBytes = 4 + 4 + 8 + 8;
constexpr uint64_t kDefaultAlignment = 32;
constexpr char kAlignmentKey[] = "general.alignment";
// Arrays nested deeper than this are surely corrupt, and the limit bounds the parser's
// recursion depth.
constexpr int kMaxArrayDepth = 8;
constexpr int kMaxDims = 4;
constexpr uint64_t kMaxElements = uint64_t{1} << 62;
// The fewest bytes a metadata entry (empty key, u32 type, 1-byte value) and a tensor info
// (empty name, u32 n_dims, one u64 dim, u32 type, u64 offset) can take: counts larger than
// the remaining bytes divided by these are impossible, whatever the content.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

bool AddOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_add_overflow(a, b, out);
}
bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}
// Rounds `v` up to a multiple of `align` (a power of two); false on overflow.
bool AlignUp(uint64_t v, uint64_t align, uint64_t* out) {
  uint64_t t;
  if (AddOverflows(v, align - 1, &t)) return false;
  *out = t & ~(align - 1);
  return true;
}
bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

bool IsValidType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kFloat64); }

// Encoded size of a value of type `t` (REQUIRES: valid), the minimum for strings (u64 length)
// and arrays (u32 element type + u64 count). Indexed by the GgufType value.
uint64_t MinEncodedBytes(GgufType t) {
  static constexpr uint8_t kBytes[] = {1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8};
  return kBytes[static_cast<uint32_t>(t)];
}

// Names in messages may be arbitrary bytes from a corrupt file: escape them so a message
// stays one printable line, and cut them short.
std::string Quote(std::string_view s) {
  constexpr size_t kMaxShown = 200;
  const std::string_view shown = s.substr(0, kMaxShown);
  std::string out = "'" + absl::CHexEscape(absl::string_view(shown.data(), shown.size())) + "'";
  if (s.size() > kMaxShown) out += "...";
  return out;
}

absl::Status ErrnoStatus(int err, absl::string_view what) {
  std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(msg);
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

// Whether integer `v` is representable in integer type `t` (u64 values above 2^63 are
// held wrapped, so every int64 is a valid u64).
bool IntFits(GgufType t, int64_t v) {
  switch (t) {
    case GgufType::kUint8:
      return v >= 0 && v <= std::numeric_limits<uint8_t>::max();
    case GgufType::kInt8:
      return v >= std::numeric_limits<int8_t>::min() && v <= std::numeric_limits<int8_t>::max();
    case GgufType::kUint16:
      return v >= 0 && v <= std::numeric_limits<uint16_t>::max();
    case GgufType::kInt16:
      return v >= std::numeric_limits<int16_t>::min() && v <= std::numeric_limits<int16_t>::max();
    case GgufType::kUint32:
      return v >= 0 && v <= std::numeric_limits<uint32_t>::max();
    case GgufType::kInt32:
      return v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max();
    case GgufType::kBool:
      return v == 0 || v == 1;
    default:
      return true;
  }
}

}  // namespace

const char* GgufTypeName(GgufType t) {
  // Indexed by the GgufType value.
  static constexpr const char* kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                           "bool", "string", "array", "u64", "i64", "f64"};
  const uint32_t i = static_cast<uint32_t>(t);
  return IsValidType(i) ? kNames[i] : "invalid";
}

// ---- GgufValue ------------------------------------------------------------------------------

GgufValue GgufValue::Int(GgufType t, int64_t v) {
  GgufValue out;
  out.type_ = t;
  out.i_ = v;
  return out;
}

GgufValue GgufValue::Uint64(uint64_t v) { return Int(GgufType::kUint64, static_cast<int64_t>(v)); }

GgufValue GgufValue::Float(GgufType t, double v) {
  GgufValue out;
  out.type_ = t;
  out.f_ = v;
  return out;
}

GgufValue GgufValue::Bool(bool v) { return Int(GgufType::kBool, v ? 1 : 0); }

GgufValue GgufValue::String(std::string v) {
  GgufValue out;
  out.type_ = GgufType::kString;
  // The string lives in the shared block and never moves, so the view stays valid across
  // copies and moves of the value.
  out.owned_ = std::make_shared<std::string>(std::move(v));
  out.str_ = *out.owned_;
  return out;
}

GgufValue GgufValue::StringView(std::string_view v) {
  GgufValue out;
  out.type_ = GgufType::kString;
  out.str_ = v;
  return out;
}

GgufValue GgufValue::Array(GgufType elem_type, std::vector<GgufValue> elems) {
  GgufValue out;
  out.type_ = GgufType::kArray;
  out.elem_type_ = elem_type;
  out.elems_ = std::move(elems);
  return out;
}

bool GgufValue::is_integer() const {
  switch (type_) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kUint16:
    case GgufType::kInt16:
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kBool:
    case GgufType::kUint64:
    case GgufType::kInt64:
      return true;
    default:
      return false;
  }
}

int64_t GgufTensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// ---- GgufParser: validates a mapped file and fills a GgufFile ------------------------------

class GgufParser {
 public:
  explicit GgufParser(GgufFile* file) : f_(file), base_(file->base_), size_(file->size_) {}

  absl::Status Parse() {
    uint64_t n_tensors = 0, n_kv = 0;
    MOEX_RETURN_IF_ERROR(ParseHeader(&n_tensors, &n_kv));
    MOEX_RETURN_IF_ERROR(ParseMetadata(n_kv));
    MOEX_RETURN_IF_ERROR(ParseTensorInfos(n_tensors));
    return PlaceTensors();
  }

 private:
  // "path: <context>: <what>"; the context says which key or tensor is being read.
  absl::Status Fail(absl::StatusCode code, absl::string_view what) const {
    return absl::Status(code, absl::StrCat(f_->path_, ": ", ctx_, ctx_.empty() ? "" : ": ", what));
  }
  absl::Status Truncated(absl::string_view what, uint64_t need) const {
    return Fail(absl::StatusCode::kDataLoss,
                absl::StrCat("truncated: ", what, " at offset ", pos_, " (", need,
                             " bytes) runs past the end of the file (size ", size_, ")"));
  }
  absl::Status Need(uint64_t n, absl::string_view what) const {
    // pos_ <= size_ always holds, so the subtraction cannot wrap.
    if (n > size_ - pos_) return Truncated(what, n);
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status Read(T* out, absl::string_view what) {
    MOEX_RETURN_IF_ERROR(Need(sizeof(T), what));
    std::memcpy(out, base_ + pos_, sizeof(T));  // unaligned, little-endian host
    pos_ += sizeof(T);
    return absl::OkStatus();
  }
  absl::Status ReadString(std::string_view* out, absl::string_view what) {
    // Not Read(): its message would be built on every call, and there are many strings.
    uint64_t len;
    if (sizeof(len) > size_ - pos_) return Truncated(absl::StrCat(what, " length"), sizeof(len));
    std::memcpy(&len, base_ + pos_, sizeof(len));
    pos_ += sizeof(len);
    if (len > size_ - pos_) {
      return Fail(absl::StatusCode::kDataLoss,
                  absl::StrCat("truncated: ", what, " of ", len, " bytes at offset ", pos_,
                               " runs past the end of the file (size ", size_, ")"));
    }
    *out = std::string_view(reinterpret_cast<const char*>(base_ + pos_), len);
    pos_ += len;
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status ReadInt(GgufType type, GgufValue* out) {
    T v;
    MOEX_RETURN_IF_ERROR(Read(&v, GgufTypeName(type)));
    *out = GgufValue::Int(type, static_cast<int64_t>(v));
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status ReadFloat(GgufType type, GgufValue* out) {
    T v;
    MOEX_RETURN_IF_ERROR(Read(&v, GgufTypeName(type)));
    *out = GgufValue::Float(type, v);
    return absl::OkStatus();
  }

  absl::Status ParseHeader(uint64_t* n_tensors, uint64_t* n_kv);
  absl::Status ParseMetadata(uint64_t n_kv);
  absl::Status ReadValue(GgufType type, int depth, GgufValue* out);
  absl::Status ParseTensorInfos(uint64_t n_tensors);
  absl::Status ParseTensorInfo(GgufTensorInfo* t);
  absl::Status PlaceTensors();

  GgufFile* f_;
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string ctx_;
};

absl::Status GgufParser::ParseHeader(uint64_t* n_tensors, uint64_t* n_kv) {
  ctx_ = "header";
  MOEX_RETURN_IF_ERROR(Need(sizeof(kMagic), "magic"));
  if (std::memcmp(base_, kMagic, sizeof(kMagic)) != 0) {
    return Fail(absl::StatusCode::kDataLoss,
                absl::StrCat("not a GGUF file: magic ",
                             Quote(std::string_view(reinterpret_cast<const char*>(base_), 4)),
                             " at offset 0 (expected 'GGUF')"));
  }
  pos_ = sizeof(kMagic);
  uint32_t version;
  MOEX_RETURN_IF_ERROR(Read(&version, "version"));
  if (version != 2 && version != 3) {
    std::string hint;
    if (version == 1) {
      hint = " (GGUF v1 used 32-bit counts; convert the file to v3)";
    } else if ((version & 0xFFFF) == 0) {
      hint = " (a big-endian file?)";
    }
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("unsupported GGUF version ", version,
                             " at offset 4: only versions 2 and 3 are read", hint));
  }
  f_->version_ = version;
  MOEX_RETURN_IF_ERROR(Read(n_tensors, "tensor count"));
  MOEX_RETURN_IF_ERROR(Read(n_kv, "metadata count"));
  // Reject impossible counts before anything is sized from them.
  uint64_t kv_bytes, tensor_bytes, total;
  if (MulOverflows(*n_kv, kMinKvBytes, &kv_bytes) ||
      MulOverflows(*n_tensors, kMinTensorInfoBytes, &tensor_bytes) ||
      AddOverflows(kv_bytes, tensor_bytes, &total) || total > size_ - pos_) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat(*n_kv, " metadata entries and ", *n_tensors,
                             " tensors (counts at offsets 16 and 8) cannot fit in the ",
                             size_ - pos_, " bytes after the header (corrupt or truncated)"));
  }
  return absl::OkStatus();
}

absl::Status GgufParser::ParseMetadata(uint64_t n_kv) {
  std::vector<GgufKeyValue>& kvs = f_->kvs_;
  kvs.reserve(n_kv);  // bounded by the file size (checked in ParseHeader)
  for (uint64_t i = 0; i < n_kv; ++i) {
    GgufKeyValue kv;
    kv.file_offset = pos_;
    ctx_ = absl::StrCat("metadata entry ", i, " (offset ", pos_, ")");
    std::string_view key;
    MOEX_RETURN_IF_ERROR(ReadString(&key, "key"));
    kv.key = std::string(key);
    ctx_ = absl::StrCat("metadata key ", Quote(key));
    uint32_t type;
    MOEX_RETURN_IF_ERROR(Read(&type, "value type"));
    if (!IsValidType(type)) {
      return Fail(absl::StatusCode::kDataLoss,
                  absl::StrCat("invalid value type ", type, " at offset ", pos_ - 4));
    }
    MOEX_RETURN_IF_ERROR(ReadValue(static_cast<GgufType>(type), 0, &kv.value));
    kvs.push_back(std::move(kv));
  }

  ctx_ = "metadata";
  std::vector<uint32_t>& order = f_->kv_order_;
  order.resize(kvs.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return kvs[a].key != kvs[b].key ? kvs[a].key < kvs[b].key : a < b;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    const GgufKeyValue& a = kvs[order[i - 1]];
    const GgufKeyValue& b = kvs[order[i]];
    if (a.key == b.key) {
      return Fail(absl::StatusCode::kDataLoss,
                  absl::StrCat("duplicate key ", Quote(a.key), " at offsets ", a.file_offset,
                               " and ", b.file_offset));
    }
  }

  if (const GgufValue* v = f_->Find(kAlignmentKey)) {
    const auto it = std::find_if(kvs.begin(), kvs.end(),
                                 [](const GgufKeyValue& kv) { return kv.key == kAlignmentKey; });
    ctx_ = absl::StrCat("metadata key '", kAlignmentKey, "' (offset ", it->file_offset, ")");
    if (v->type() != GgufType::kUint32) {
      return Fail(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("has type ", GgufTypeName(v->type()), ", expected u32"));
    }
    if (!IsPowerOfTwo(v->AsUint64())) {
      return Fail(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("alignment ", v->AsUint64(), " is not a nonzero power of two"));
    }
    f_->alignment_ = v->AsUint64();
  }
  return absl::OkStatus();
}

absl::Status GgufParser::ReadValue(GgufType type, int depth, GgufValue* out) {
  switch (type) {
    case GgufType::kUint8:
      return ReadInt<uint8_t>(type, out);
    case GgufType::kInt8:
      return ReadInt<int8_t>(type, out);
    case GgufType::kUint16:
      return ReadInt<uint16_t>(type, out);
    case GgufType::kInt16:
      return ReadInt<int16_t>(type, out);
    case GgufType::kUint32:
      return ReadInt<uint32_t>(type, out);
    case GgufType::kInt32:
      return ReadInt<int32_t>(type, out);
    case GgufType::kUint64:
      return ReadInt<uint64_t>(type, out);  // held wrapped, as Uint64()
    case GgufType::kInt64:
      return ReadInt<int64_t>(type, out);
    case GgufType::kFloat32:
      return ReadFloat<float>(type, out);
    case GgufType::kFloat64:
      return ReadFloat<double>(type, out);
    case GgufType::kBool: {
      uint8_t v;
      MOEX_RETURN_IF_ERROR(Read(&v, "bool value"));
      if (v > 1) {
        return Fail(absl::StatusCode::kDataLoss,
                    absl::StrCat("bool value ", v, " at offset ", pos_ - 1, " is not 0 or 1"));
      }
      *out = GgufValue::Bool(v != 0);
      return absl::OkStatus();
    }
    case GgufType::kString: {
      std::string_view s;
      MOEX_RETURN_IF_ERROR(ReadString(&s, "string value"));
      *out = GgufValue::StringView(s);
      return absl::OkStatus();
    }
    case GgufType::kArray: {
      const uint64_t at = pos_;
      if (depth >= kMaxArrayDepth) {
        return Fail(
            absl::StatusCode::kInvalidArgument,
            absl::StrCat("arrays nested more than ", kMaxArrayDepth, " deep at offset ", at));
      }
      uint32_t elem_type;
      MOEX_RETURN_IF_ERROR(Read(&elem_type, "array element type"));
      if (!IsValidType(elem_type)) {
        return Fail(absl::StatusCode::kDataLoss,
                    absl::StrCat("invalid array element type ", elem_type, " at offset ", at));
      }
      const GgufType et = static_cast<GgufType>(elem_type);
      uint64_t n;
      MOEX_RETURN_IF_ERROR(Read(&n, "array length"));
      // Checked against the bytes left before anything is allocated from it.
      if (n > (size_ - pos_) / MinEncodedBytes(et)) {
        return Fail(absl::StatusCode::kInvalidArgument,
                    absl::StrCat("array of ", n, " ", GgufTypeName(et), " at offset ", at,
                                 " cannot fit in the ", size_ - pos_, " bytes left in the file"));
      }
      std::vector<GgufValue> elems(n);
      for (uint64_t i = 0; i < n; ++i) {
        MOEX_RETURN_IF_ERROR(ReadValue(et, depth + 1, &elems[i]));
      }
      *out = GgufValue::Array(et, std::move(elems));
      return absl::OkStatus();
    }
  }
  return Fail(absl::StatusCode::kDataLoss, "invalid value type");  // unreachable
}

absl::Status GgufParser::ParseTensorInfos(uint64_t n_tensors) {
  std::vector<GgufTensorInfo>& tensors = f_->tensors_;
  tensors.resize(n_tensors);  // bounded by the file size (checked in ParseHeader)
  for (uint64_t i = 0; i < n_tensors; ++i) {
    ctx_ = absl::StrCat("tensor info ", i, " (offset ", pos_, ")");
    MOEX_RETURN_IF_ERROR(ParseTensorInfo(&tensors[i]));
  }
  return absl::OkStatus();
}

absl::Status GgufParser::ParseTensorInfo(GgufTensorInfo* t) {
  const uint64_t info_at = pos_;
  std::string_view name;
  MOEX_RETURN_IF_ERROR(ReadString(&name, "tensor name"));
  t->name = std::string(name);
  ctx_ = absl::StrCat("tensor ", Quote(name), " (info at offset ", info_at, ")");

  uint32_t n_dims;
  MOEX_RETURN_IF_ERROR(Read(&n_dims, "n_dims"));
  if (n_dims == 0 || n_dims > kMaxDims) {
    return Fail(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat("n_dims ", n_dims, " at offset ", pos_ - 4, " is not in 1..", kMaxDims));
  }
  uint64_t n_elements = 1;
  bool too_many = false;
  for (uint32_t d = 0; d < n_dims; ++d) {
    uint64_t dim;
    MOEX_RETURN_IF_ERROR(Read(&dim, "dimension"));
    if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Fail(absl::StatusCode::kInvalidArgument,
                  absl::StrCat("dimension ", d, " is ", static_cast<int64_t>(dim), " at offset ",
                               pos_ - 8, "; dimensions must be positive"));
    }
    t->dims.push_back(static_cast<int64_t>(dim));
    if (MulOverflows(n_elements, dim, &n_elements) || n_elements > kMaxElements) too_many = true;
  }
  if (too_many) {
    std::string dims = absl::StrJoin(t->dims, " x ");
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("dimensions [", dims, "] hold more than 2^62 elements"));
  }
  MOEX_RETURN_IF_ERROR(Read(&t->type, "tensor type"));
  const kcpu::TypeTraits* traits = kcpu::FindTypeTraits(t->type);
  if (traits == nullptr) {
    return Fail(absl::StatusCode::kUnimplemented,
                absl::StrCat("unknown tensor type id ", t->type, " at offset ", pos_ - 4));
  }
  const uint64_t block_elems = static_cast<uint64_t>(traits->block_elems);
  if (static_cast<uint64_t>(t->dims[0]) % block_elems != 0) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("row length ", t->dims[0], " is not a multiple of the ", traits->name,
                             " block size ", block_elems));
  }
  if (MulOverflows(n_elements / block_elems, static_cast<uint64_t>(traits->block_bytes),
                   &t->nbytes)) {
    return Fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat(n_elements, " ", traits->name, " elements overflow a byte count"));
  }
  MOEX_RETURN_IF_ERROR(Read(&t->offset, "data offset"));
  if (t->offset % f_->alignment_ != 0) {
    return Fail(absl::StatusCode::kDataLoss,
                absl::StrCat("data offset ", t->offset, " at offset ", pos_ - 8,
                             " is not a multiple of the alignment ", f_->alignment_));
  }
  return absl::OkStatus();
}

absl::Status GgufParser::PlaceTensors() {
  ctx_.clear();
  std::vector<GgufTensorInfo>& tensors = f_->tensors_;
  const uint64_t header_end = pos_;
  if (!AlignUp(header_end, f_->alignment_, &f_->data_offset_)) {
    return Fail(absl::StatusCode::kInvalidArgument, "data section offset overflows");
  }
  for (GgufTensorInfo& t : tensors) {
    uint64_t start, end;
    if (AddOverflows(f_->data_offset_, t.offset, &start) || AddOverflows(start, t.nbytes, &end) ||
        end > size_) {
      return Fail(absl::StatusCode::kDataLoss,
                  absl::StrCat("tensor ", Quote(t.name), " data [offset ", f_->data_offset_, " + ",
                               t.offset, ", ", t.nbytes,
                               " bytes] runs past the end of the file (size ", size_, ")"));
    }
    t.data = base_ + start;
  }

  std::vector<uint32_t>& order = f_->tensor_order_;
  order.resize(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return tensors[a].name != tensors[b].name ? tensors[a].name < tensors[b].name : a < b;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    if (tensors[order[i - 1]].name == tensors[order[i]].name) {
      return Fail(absl::StatusCode::kDataLoss,
                  absl::StrCat("duplicate tensor name ", Quote(tensors[order[i]].name),
                               " (tensor infos ", order[i - 1], " and ", order[i], ")"));
    }
  }

  std::vector<uint32_t> by_offset(tensors.size());
  std::iota(by_offset.begin(), by_offset.end(), 0);
  std::sort(by_offset.begin(), by_offset.end(),
            [&](uint32_t a, uint32_t b) { return tensors[a].offset < tensors[b].offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo& a = tensors[by_offset[i - 1]];
    const GgufTensorInfo& b = tensors[by_offset[i]];
    if (a.offset + a.nbytes > b.offset) {  // no overflow: both ends were checked above
      return Fail(
          absl::StatusCode::kDataLoss,
          absl::StrCat("tensor ", Quote(b.name), " data at offset ", f_->data_offset_ + b.offset,
                       " overlaps tensor ", Quote(a.name), " [offset ", f_->data_offset_ + a.offset,
                       ", ", a.nbytes, " bytes]"));
    }
  }
  return absl::OkStatus();
}

// ---- GgufFile -------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat(path, ": cannot open"));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoStatus(err, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ == 0) {
    close(fd);
    return absl::DataLossError(
        absl::StrCat(path,
                     ": header: truncated: magic at offset 0 (4 bytes) runs past the end of the "
                     "file (size 0)"));
  }
  void* p = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  close(fd);  // the mapping keeps the file alive
  if (p == MAP_FAILED) return ErrnoStatus(err, absl::StrCat(path, ": cannot map"));
  file->base_ = static_cast<const uint8_t*>(p);

  GgufParser parser(file.get());
  MOEX_RETURN_IF_ERROR(parser.Parse());
  return file;
}

bool GgufFile::Populate() const {
#ifdef __linux__
  constexpr int kPopulateRead = 22;  // MADV_POPULATE_READ (Linux 5.14), absent in older headers
  // madvise wants a page-aligned start: the page holding the first tensor byte.
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t begin = data_offset_ / page * page;
  if (begin >= size_) return true;
  return madvise(const_cast<uint8_t*>(base_) + begin, size_ - begin, kPopulateRead) == 0;
#else
  return false;
#endif
}

GgufFile::~GgufFile() {
  if (base_ != nullptr) munmap(const_cast<uint8_t*>(base_), size_);
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = std::lower_bound(kv_order_.begin(), kv_order_.end(), key,
                             [&](uint32_t i, std::string_view k) { return kvs_[i].key < k; });
  if (it == kv_order_.end() || kvs_[*it].key != key) return nullptr;
  return &kvs_[*it].value;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = std::lower_bound(tensor_order_.begin(), tensor_order_.end(), name,
                             [&](uint32_t i, std::string_view n) { return tensors_[i].name < n; });
  if (it == tensor_order_.end() || tensors_[*it].name != name) return nullptr;
  return &tensors_[*it];
}

namespace {

absl::Status MissingKey(const std::string& path, std::string_view key) {
  return absl::NotFoundError(absl::StrCat(path, ": metadata key ", Quote(key), " not found"));
}

absl::Status WrongType(const std::string& path, std::string_view key, const GgufValue& v,
                       absl::string_view wanted) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": metadata key ", Quote(key), " has type ",
                                                 GgufTypeName(v.type()), ", expected ", wanted));
}

}  // namespace

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(path_, key);
  if (!v->is_integer() || v->type() == GgufType::kBool) {
    return WrongType(path_, key, *v, "an integer");
  }
  if (v->type() == GgufType::kUint64 && v->AsInt() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": metadata key ", Quote(key), " value ",
                                                   v->AsUint64(), " does not fit in int64"));
  }
  return v->AsInt();
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(path_, key);
  if (v->is_float()) return v->AsDouble();
  if (!v->is_integer() || v->type() == GgufType::kBool) {
    return WrongType(path_, key, *v, "a number");
  }
  if (v->type() == GgufType::kUint64) return static_cast<double>(v->AsUint64());
  return static_cast<double>(v->AsInt());
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(path_, key);
  if (v->type() != GgufType::kBool) return WrongType(path_, key, *v, "bool");
  return v->AsBool();
}

absl::StatusOr<std::string_view> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(path_, key);
  if (v->type() != GgufType::kString) return WrongType(path_, key, *v, "string");
  return v->AsString();
}

absl::StatusOr<const GgufValue*> GgufFile::GetArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(path_, key);
  if (v->type() != GgufType::kArray) return WrongType(path_, key, *v, "array");
  return v;
}

absl::StatusOr<int64_t> GgufFile::GetIntOr(std::string_view key, int64_t fallback) const {
  if (Find(key) == nullptr) return fallback;
  return GetInt(key);
}

absl::StatusOr<double> GgufFile::GetFloatOr(std::string_view key, double fallback) const {
  if (Find(key) == nullptr) return fallback;
  return GetFloat(key);
}

absl::StatusOr<bool> GgufFile::GetBoolOr(std::string_view key, bool fallback) const {
  if (Find(key) == nullptr) return fallback;
  return GetBool(key);
}

// ---- GgufWriter -----------------------------------------------------------------------------

namespace {

// A deep copy whose strings own their bytes, so it outlives the file it came from.
GgufValue OwnedCopy(const GgufValue& v) {
  if (v.type() == GgufType::kString) return GgufValue::String(std::string(v.AsString()));
  if (v.type() != GgufType::kArray) return v;
  std::vector<GgufValue> elems;
  elems.reserve(v.elems().size());
  for (const GgufValue& e : v.elems()) elems.push_back(OwnedCopy(e));
  return GgufValue::Array(v.elem_type(), std::move(elems));
}

absl::Status ValidateValue(std::string_view key, const GgufValue& v, int depth) {
  if (!IsValidType(static_cast<uint32_t>(v.type()))) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF key ", Quote(key), ": invalid value type ",
                                                   static_cast<uint32_t>(v.type())));
  }
  if (v.is_integer() && !IntFits(v.type(), v.AsInt())) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF key ", Quote(key), ": value ", v.AsInt(),
                                                   " does not fit in ", GgufTypeName(v.type())));
  }
  if (v.type() != GgufType::kArray) return absl::OkStatus();
  if (depth >= kMaxArrayDepth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GGUF key ", Quote(key), ": arrays nested more than ", kMaxArrayDepth, " deep"));
  }
  for (const GgufValue& e : v.elems()) {
    if (e.type() != v.elem_type()) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF key ", Quote(key), ": array of ",
                                                     GgufTypeName(v.elem_type()), " holds a ",
                                                     GgufTypeName(e.type())));
    }
    MOEX_RETURN_IF_ERROR(ValidateValue(key, e, depth + 1));
  }
  return absl::OkStatus();
}

// Writes to a growing byte vector (Serialize).
class VectorSink {
 public:
  explicit VectorSink(std::vector<uint8_t>* out) : out_(out) {}
  void Write(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    out_->insert(out_->end(), b, b + n);
    written_ += n;
  }
  uint64_t written() const { return written_; }

 private:
  std::vector<uint8_t>* out_;
  uint64_t written_ = 0;
};

// Writes to a file descriptor through a fixed buffer (WriteFile); remembers the first error
// so the emitting code need not check every call.
class FdSink {
 public:
  explicit FdSink(int fd) : fd_(fd), buf_(1 << 20) {}
  void Write(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    written_ += n;
    while (n > 0 && err_ == 0) {
      if (used_ == buf_.size()) Flush();
      const size_t take = std::min(n, buf_.size() - used_);
      std::memcpy(buf_.data() + used_, b, take);
      used_ += take;
      b += take;
      n -= take;
    }
  }
  // Returns 0 or the errno of the first failed write.
  int Flush() {
    size_t done = 0;
    while (done < used_ && err_ == 0) {
      const ssize_t w = write(fd_, buf_.data() + done, used_ - done);
      if (w < 0) {
        if (errno != EINTR) err_ = errno;
      } else {
        done += static_cast<size_t>(w);
      }
    }
    used_ = 0;
    return err_;
  }
  uint64_t written() const { return written_; }

 private:
  int fd_;
  std::vector<uint8_t> buf_;
  size_t used_ = 0;
  uint64_t written_ = 0;
  int err_ = 0;
};

template <typename Sink, typename T>
void Put(Sink& s, T v) {
  s.Write(&v, sizeof(v));
}

template <typename Sink>
void PutString(Sink& s, std::string_view v) {
  Put<Sink, uint64_t>(s, v.size());
  s.Write(v.data(), v.size());
}

template <typename Sink>
void PutPadding(Sink& s, uint64_t alignment) {
  static constexpr uint8_t kZeros[256] = {};
  uint64_t pad = (alignment - s.written() % alignment) % alignment;
  while (pad > 0) {
    const uint64_t n = std::min<uint64_t>(pad, sizeof(kZeros));
    s.Write(kZeros, n);
    pad -= n;
  }
}

// The value's payload, without its type tag (REQUIRES: ValidateValue passed).
template <typename Sink>
void PutValue(Sink& s, const GgufValue& v) {
  switch (v.type()) {
    case GgufType::kUint8:
      Put<Sink, uint8_t>(s, static_cast<uint8_t>(v.AsInt()));
      break;
    case GgufType::kInt8:
      Put<Sink, int8_t>(s, static_cast<int8_t>(v.AsInt()));
      break;
    case GgufType::kUint16:
      Put<Sink, uint16_t>(s, static_cast<uint16_t>(v.AsInt()));
      break;
    case GgufType::kInt16:
      Put<Sink, int16_t>(s, static_cast<int16_t>(v.AsInt()));
      break;
    case GgufType::kUint32:
      Put<Sink, uint32_t>(s, static_cast<uint32_t>(v.AsInt()));
      break;
    case GgufType::kInt32:
      Put<Sink, int32_t>(s, static_cast<int32_t>(v.AsInt()));
      break;
    case GgufType::kUint64:
      Put<Sink, uint64_t>(s, v.AsUint64());
      break;
    case GgufType::kInt64:
      Put<Sink, int64_t>(s, v.AsInt());
      break;
    case GgufType::kFloat32:
      Put<Sink, float>(s, static_cast<float>(v.AsDouble()));
      break;
    case GgufType::kFloat64:
      Put<Sink, double>(s, v.AsDouble());
      break;
    case GgufType::kBool:
      Put<Sink, uint8_t>(s, v.AsBool() ? 1 : 0);
      break;
    case GgufType::kString:
      PutString(s, v.AsString());
      break;
    case GgufType::kArray:
      Put<Sink, uint32_t>(s, static_cast<uint32_t>(v.elem_type()));
      Put<Sink, uint64_t>(s, v.elems().size());
      for (const GgufValue& e : v.elems()) PutValue(s, e);
      break;
  }
}

}  // namespace

void GgufWriter::Set(std::string key, GgufValue value) {
  for (GgufKeyValue& kv : kvs_) {
    if (kv.key == key) {
      kv.value = std::move(value);
      return;
    }
  }
  GgufKeyValue kv;
  kv.key = std::move(key);
  kv.value = std::move(value);
  kvs_.push_back(std::move(kv));
}

void GgufWriter::CopyMetadata(const GgufFile& src, std::string_view prefix) {
  for (const GgufKeyValue& kv : src.metadata()) {
    if (kv.key.starts_with(prefix)) Set(kv.key, OwnedCopy(kv.value));
  }
}

absl::StatusOr<uint64_t> GgufWriter::CheckTensor(const std::string& name,
                                                 const std::vector<int64_t>& dims,
                                                 uint32_t type) const {
  const std::string what = absl::StrCat("GGUF tensor ", Quote(name));
  for (const Tensor& t : tensors_) {
    if (t.name == name) return absl::InvalidArgumentError(what + ": added twice");
  }
  if (dims.empty() || dims.size() > kMaxDims) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", dims.size(), " dimensions (1..", kMaxDims, " allowed)"));
  }
  uint64_t n = 1;
  for (int64_t d : dims) {
    if (d <= 0) return absl::InvalidArgumentError(absl::StrCat(what, ": dimension ", d));
    if (MulOverflows(n, static_cast<uint64_t>(d), &n) || n > kMaxElements) {
      return absl::InvalidArgumentError(what + ": more than 2^62 elements");
    }
  }
  const kcpu::TypeTraits* traits = kcpu::FindTypeTraits(type);
  if (traits == nullptr) {
    return absl::UnimplementedError(absl::StrCat(what, ": unknown tensor type id ", type));
  }
  if (dims[0] % traits->block_elems != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": row length ", dims[0],
                                                   " is not a multiple of the ", traits->name,
                                                   " block size ", traits->block_elems));
  }
  uint64_t nbytes;
  if (MulOverflows(n / traits->block_elems, traits->block_bytes, &nbytes)) {
    return absl::InvalidArgumentError(what + ": size overflows");
  }
  return nbytes;
}

absl::Status GgufWriter::AddTensor(std::string name, std::vector<int64_t> dims, uint32_t type,
                                   std::span<const uint8_t> data) {
  MOEX_ASSIGN_OR_RETURN(const uint64_t nbytes, CheckTensor(name, dims, type));
  if (nbytes != data.size()) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF tensor ", Quote(name), ": ", data.size(),
                                                   " bytes of data, the shape needs ", nbytes));
  }
  tensors_.push_back(Tensor{std::move(name), std::move(dims), type, nbytes,
                            std::vector<uint8_t>(data.begin(), data.end()), nullptr});
  return absl::OkStatus();
}

absl::Status GgufWriter::AddTensorDeferred(std::string name, std::vector<int64_t> dims,
                                           uint32_t type, TensorFiller fill) {
  MOEX_ASSIGN_OR_RETURN(const uint64_t nbytes, CheckTensor(name, dims, type));
  if (!fill) return absl::InvalidArgumentError("GGUF tensor " + Quote(name) + ": no filler");
  tensors_.push_back(Tensor{std::move(name), std::move(dims), type, nbytes, {}, std::move(fill)});
  return absl::OkStatus();
}

namespace {

// Checks the writer's contents and returns the alignment to use.
absl::StatusOr<uint64_t> ValidateForWrite(const std::vector<GgufKeyValue>& kvs) {
  uint64_t alignment = kDefaultAlignment;
  for (const GgufKeyValue& kv : kvs) {
    MOEX_RETURN_IF_ERROR(ValidateValue(kv.key, kv.value, 0));
    if (kv.key == kAlignmentKey) {
      if (kv.value.type() != GgufType::kUint32 || !IsPowerOfTwo(kv.value.AsUint64())) {
        return absl::InvalidArgumentError(
            absl::StrCat("GGUF key '", kAlignmentKey, "' must be a u32 power of two"));
      }
      alignment = kv.value.AsUint64();
    }
  }
  return alignment;
}

template <typename Sink>
absl::Status Emit(Sink& s, uint64_t alignment, const std::vector<GgufKeyValue>& kvs,
                  const auto& tensors) {
  s.Write(kMagic, sizeof(kMagic));
  Put<Sink, uint32_t>(s, 3);
  Put<Sink, uint64_t>(s, tensors.size());
  Put<Sink, uint64_t>(s, kvs.size());
  for (const GgufKeyValue& kv : kvs) {
    PutString(s, kv.key);
    Put<Sink, uint32_t>(s, static_cast<uint32_t>(kv.value.type()));
    PutValue(s, kv.value);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    PutString(s, t.name);
    Put<Sink, uint32_t>(s, static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) Put<Sink, uint64_t>(s, static_cast<uint64_t>(d));
    Put<Sink, uint32_t>(s, t.type);
    Put<Sink, uint64_t>(s, offset);
    offset += (t.nbytes + alignment - 1) / alignment * alignment;
  }
  // No padding after the last tensor (or after the header of a file without tensors): the
  // format does not need it, and so every truncation of a written file is detectable.
  std::vector<uint8_t> produced;
  for (const auto& t : tensors) {
    PutPadding(s, alignment);
    if (!t.fill) {
      s.Write(t.data.data(), t.data.size());
      continue;
    }
    produced.assign(t.nbytes, 0);
    absl::Status st = t.fill(std::span<uint8_t>(produced));
    if (!st.ok()) return st;
    s.Write(produced.data(), produced.size());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<uint8_t>> GgufWriter::Serialize() const {
  MOEX_ASSIGN_OR_RETURN(const uint64_t alignment, ValidateForWrite(kvs_));
  std::vector<uint8_t> out;
  VectorSink sink(&out);
  MOEX_RETURN_IF_ERROR(Emit(sink, alignment, kvs_, tensors_));
  return out;
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  MOEX_ASSIGN_OR_RETURN(const uint64_t alignment, ValidateForWrite(kvs_));
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat(path, ": cannot create a temporary file"));
  // mkostemp makes the file 0600; a model file is ordinarily world-readable.
  fchmod(fd, 0644);
  FdSink sink(fd);
  absl::Status emitted = Emit(sink, alignment, kvs_, tensors_);
  if (!emitted.ok()) {
    close(fd);
    unlink(tmp.c_str());
    return emitted;
  }
  int err = sink.Flush();
  if (err == 0 && fsync(fd) != 0) err = errno;
  if (close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    unlink(tmp.c_str());
    return ErrnoStatus(err, absl::StrCat(path, ": cannot write"));
  }
  return absl::OkStatus();
}

}  // namespace moex
