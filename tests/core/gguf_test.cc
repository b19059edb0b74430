#include "runtime/core/gguf.h"

#include <dirent.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels_cpu/quant.h"
#include "tests/test_util.h"

namespace moex {
namespace {

using ::testing::HasSubstr;

constexpr uint32_t kF32 = static_cast<uint32_t>(kcpu::GgmlType::kF32);
constexpr uint32_t kF16 = static_cast<uint32_t>(kcpu::GgmlType::kF16);
constexpr uint32_t kQ8_0 = static_cast<uint32_t>(kcpu::GgmlType::kQ8_0);
constexpr uint32_t kQ4_K = static_cast<uint32_t>(kcpu::GgmlType::kQ4_K);

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
  return v;
}

std::string WriteBytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  f.close();
  EXPECT_TRUE(f.good()) << path;
  return path;
}

std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") out.push_back(name);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// Offset of the first occurrence of `needle` in `hay` (the bytes of a name or key).
size_t Locate(const std::vector<uint8_t>& hay, std::string_view needle) {
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end());
  EXPECT_NE(it, hay.end()) << needle;
  return static_cast<size_t>(it - hay.begin());
}

template <typename T>
void Poke(std::vector<uint8_t>* b, size_t off, T v) {
  ASSERT_LE(off + sizeof(T), b->size());
  std::memcpy(b->data() + off, &v, sizeof(T));
}

template <typename T>
T Peek(const std::vector<uint8_t>& b, size_t off) {
  T v{};
  std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}

GgufValue I32Array(std::vector<int32_t> v) {
  std::vector<GgufValue> e;
  for (int32_t x : v) e.push_back(GgufValue::Int(GgufType::kInt32, x));
  return GgufValue::Array(GgufType::kInt32, std::move(e));
}

GgufValue StringArray(std::vector<std::string> v) {
  std::vector<GgufValue> e;
  for (std::string& s : v) e.push_back(GgufValue::String(std::move(s)));
  return GgufValue::Array(GgufType::kString, std::move(e));
}

class GgufTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = moex::testing::MakeTempDir(); }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

// ---- round trip ----------------------------------------------------------------------------

TEST_F(GgufTest, RoundTripEveryValueTypeAndTensors) {
  GgufWriter w;
  w.SetString("general.architecture", "testarch");
  w.SetU32("general.alignment", 64);
  w.Set("v.u8", GgufValue::Int(GgufType::kUint8, 255));
  w.Set("v.i8", GgufValue::Int(GgufType::kInt8, -128));
  w.Set("v.u16", GgufValue::Int(GgufType::kUint16, 65535));
  w.Set("v.i16", GgufValue::Int(GgufType::kInt16, -32768));
  w.SetU32("v.u32", 0xFFFFFFFFu);
  w.Set("v.i32", GgufValue::Int(GgufType::kInt32, std::numeric_limits<int32_t>::min()));
  w.Set("v.u64max", GgufValue::Uint64(std::numeric_limits<uint64_t>::max()));
  w.Set("v.u64zero", GgufValue::Uint64(0));
  w.Set("v.i64min", GgufValue::Int(GgufType::kInt64, std::numeric_limits<int64_t>::min()));
  w.Set("v.i64neg", GgufValue::Int(GgufType::kInt64, -1));
  w.SetF32("v.f32", -1.5f);
  w.Set("v.f64", GgufValue::Float(GgufType::kFloat64, 1e300 / 3.0));
  w.SetBool("v.true", true);
  w.SetBool("v.false", false);
  w.SetString("v.str", "h\xC3\xA9llo\nworld");
  w.SetString("v.empty", "");
  w.Set("v.i32s", I32Array({-7, 0, 2147483647}));
  w.Set("v.strs", StringArray({"a", "", "long string with spaces"}));
  w.Set("v.empty_arr", GgufValue::Array(GgufType::kFloat32, {}));
  w.Set("v.bools",
        GgufValue::Array(GgufType::kBool, {GgufValue::Bool(true), GgufValue::Bool(false)}));
  w.Set("v.f64s",
        GgufValue::Array(GgufType::kFloat64, {GgufValue::Float(GgufType::kFloat64, -0.25),
                                              GgufValue::Float(GgufType::kFloat64, 1e-300)}));
  // [[1, 2], [], [3]] of u8, and an array of arrays of strings.
  w.Set("v.nested",
        GgufValue::Array(
            GgufType::kArray,
            {GgufValue::Array(GgufType::kUint8, {GgufValue::Int(GgufType::kUint8, 1),
                                                 GgufValue::Int(GgufType::kUint8, 2)}),
             GgufValue::Array(GgufType::kUint8, {}),
             GgufValue::Array(GgufType::kUint8, {GgufValue::Int(GgufType::kUint8, 3)})}));
  w.Set("v.nested_strs",
        GgufValue::Array(GgufType::kArray, {StringArray({"x", "yy"}), StringArray({"zzz"})}));

  struct Spec {
    std::string name;
    std::vector<int64_t> dims;
    uint32_t type;
    size_t nbytes;
  };
  const std::vector<Spec> specs = {
      {"t.f32", {8, 3}, kF32, 8 * 3 * 4},
      {"t.q8_0", {64, 2}, kQ8_0, 4 * 34},    // 4 blocks of 32
      {"t.q4_k", {256, 3}, kQ4_K, 3 * 144},  // 3 super-blocks of 256
      {"t.f16", {5}, kF16, 10},
      {"t.f32_4d", {2, 3, 1, 2}, kF32, 12 * 4},
  };
  std::vector<std::vector<uint8_t>> datas;
  for (size_t i = 0; i < specs.size(); ++i) {
    datas.push_back(Pattern(specs[i].nbytes, static_cast<uint8_t>(i * 31 + 1)));
    ASSERT_TRUE(w.AddTensor(specs[i].name, specs[i].dims, specs[i].type, datas.back()).ok());
  }

  const std::string path = Path("round.gguf");
  ASSERT_TRUE(w.WriteFile(path).ok());
  absl::StatusOr<std::vector<uint8_t>> serialized = w.Serialize();
  ASSERT_TRUE(serialized.ok());
  EXPECT_EQ(ReadBytes(path), *serialized);
  // No temporary file is left behind.
  EXPECT_EQ(ListDir(dir_), std::vector<std::string>{"round.gguf"});

  absl::StatusOr<std::unique_ptr<GgufFile>> opened = GgufFile::Open(path);
  ASSERT_TRUE(opened.ok()) << opened.status();
  const GgufFile& f = **opened;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.file_size(), serialized->size());
  EXPECT_EQ(f.data_offset() % 64, 0u);
  ASSERT_EQ(f.metadata().size(), 25u);
  EXPECT_EQ(f.metadata()[0].key, "general.architecture");
  EXPECT_EQ(f.metadata()[0].file_offset, 24u);
  EXPECT_EQ(f.metadata()[1].key, "general.alignment");
  EXPECT_EQ(f.metadata().back().key, "v.nested_strs");

  EXPECT_EQ(*f.GetString("general.architecture"), "testarch");
  EXPECT_EQ(f.Find("v.u8")->type(), GgufType::kUint8);
  EXPECT_EQ(*f.GetInt("v.u8"), 255);
  EXPECT_EQ(*f.GetInt("v.i8"), -128);
  EXPECT_EQ(*f.GetInt("v.u16"), 65535);
  EXPECT_EQ(*f.GetInt("v.i16"), -32768);
  EXPECT_EQ(*f.GetInt("v.u32"), 4294967295);
  EXPECT_EQ(*f.GetInt("v.i32"), std::numeric_limits<int32_t>::min());
  EXPECT_EQ(f.Find("v.u64max")->type(), GgufType::kUint64);
  EXPECT_EQ(f.Find("v.u64max")->AsUint64(), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(*f.GetInt("v.u64zero"), 0);
  EXPECT_EQ(*f.GetInt("v.i64min"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*f.GetInt("v.i64neg"), -1);
  EXPECT_EQ(f.Find("v.f32")->type(), GgufType::kFloat32);
  EXPECT_EQ(*f.GetFloat("v.f32"), -1.5);
  EXPECT_EQ(*f.GetFloat("v.f64"), 1e300 / 3.0);
  EXPECT_TRUE(*f.GetBool("v.true"));
  EXPECT_FALSE(*f.GetBool("v.false"));
  EXPECT_EQ(*f.GetString("v.str"), "h\xC3\xA9llo\nworld");
  EXPECT_EQ(*f.GetString("v.empty"), "");

  const GgufValue* i32s = *f.GetArray("v.i32s");
  ASSERT_EQ(i32s->elem_type(), GgufType::kInt32);
  ASSERT_EQ(i32s->elems().size(), 3u);
  EXPECT_EQ(i32s->elems()[0].AsInt(), -7);
  EXPECT_EQ(i32s->elems()[2].AsInt(), 2147483647);
  const GgufValue* strs = *f.GetArray("v.strs");
  ASSERT_EQ(strs->elem_type(), GgufType::kString);
  ASSERT_EQ(strs->elems().size(), 3u);
  EXPECT_EQ(strs->elems()[0].AsString(), "a");
  EXPECT_EQ(strs->elems()[1].AsString(), "");
  EXPECT_EQ(strs->elems()[2].AsString(), "long string with spaces");
  EXPECT_EQ((*f.GetArray("v.empty_arr"))->elem_type(), GgufType::kFloat32);
  EXPECT_TRUE((*f.GetArray("v.empty_arr"))->elems().empty());
  const GgufValue* bools = *f.GetArray("v.bools");
  ASSERT_EQ(bools->elems().size(), 2u);
  EXPECT_TRUE(bools->elems()[0].AsBool());
  EXPECT_FALSE(bools->elems()[1].AsBool());
  const GgufValue* f64s = *f.GetArray("v.f64s");
  ASSERT_EQ(f64s->elems().size(), 2u);
  EXPECT_EQ(f64s->elems()[0].AsDouble(), -0.25);
  EXPECT_EQ(f64s->elems()[1].AsDouble(), 1e-300);
  const GgufValue* nested = *f.GetArray("v.nested");
  ASSERT_EQ(nested->elem_type(), GgufType::kArray);
  ASSERT_EQ(nested->elems().size(), 3u);
  EXPECT_EQ(nested->elems()[0].elem_type(), GgufType::kUint8);
  ASSERT_EQ(nested->elems()[0].elems().size(), 2u);
  EXPECT_EQ(nested->elems()[0].elems()[1].AsInt(), 2);
  EXPECT_TRUE(nested->elems()[1].elems().empty());
  EXPECT_EQ(nested->elems()[2].elems()[0].AsInt(), 3);
  const GgufValue* nested_strs = *f.GetArray("v.nested_strs");
  ASSERT_EQ(nested_strs->elems().size(), 2u);
  ASSERT_EQ(nested_strs->elems()[0].elem_type(), GgufType::kString);
  EXPECT_EQ(nested_strs->elems()[0].elems()[1].AsString(), "yy");
  EXPECT_EQ(nested_strs->elems()[1].elems()[0].AsString(), "zzz");

  ASSERT_EQ(f.tensors().size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    SCOPED_TRACE(specs[i].name);
    const GgufTensorInfo& t = f.tensors()[i];
    EXPECT_EQ(t.name, specs[i].name);
    EXPECT_EQ(t.dims, specs[i].dims);
    EXPECT_EQ(t.type, specs[i].type);
    EXPECT_EQ(t.nbytes, specs[i].nbytes);
    EXPECT_EQ(t.offset % 64, 0u);
    EXPECT_EQ(t.data, f.base() + f.data_offset() + t.offset);
    EXPECT_EQ(static_cast<size_t>(t.data - f.base() - f.data_offset()) % 64, 0u);
    EXPECT_EQ(std::memcmp(t.data, datas[i].data(), datas[i].size()), 0);
    EXPECT_EQ(f.FindTensor(specs[i].name), &t);
  }
  EXPECT_EQ(f.tensors()[3].n_elements(), 5);
  EXPECT_EQ(f.tensors()[4].n_elements(), 12);
  EXPECT_EQ(f.FindTensor("t.missing"), nullptr);
  EXPECT_EQ(f.Find("v.missing"), nullptr);
}

TEST_F(GgufTest, DefaultAlignmentIs32AndVersion2IsRead) {
  GgufWriter w;
  w.SetString("general.architecture", "x");
  ASSERT_TRUE(w.AddTensor("a", {3}, kF32, Pattern(12, 1)).ok());
  ASSERT_TRUE(w.AddTensor("b", {1}, kF32, Pattern(4, 2)).ok());
  absl::StatusOr<std::vector<uint8_t>> bytes = w.Serialize();
  ASSERT_TRUE(bytes.ok());
  Poke<uint32_t>(&*bytes, 4, 2);
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(WriteBytes(Path("v2.gguf"), *bytes));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 2u);
  EXPECT_EQ((*f)->alignment(), 32u);
  EXPECT_EQ((*f)->data_offset() % 32, 0u);
  EXPECT_EQ((*f)->FindTensor("b")->offset, 32u);
  EXPECT_EQ((*f)->file_size(), (*f)->data_offset() + 32 + 4);  // no padding after the end
}

TEST_F(GgufTest, FileWithoutTensorsOrMetadata) {
  GgufWriter w;
  absl::StatusOr<std::vector<uint8_t>> bytes = w.Serialize();
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->size(), 24u);
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(WriteBytes(Path("e.gguf"), *bytes));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->metadata().empty());
  EXPECT_TRUE((*f)->tensors().empty());
}

TEST_F(GgufTest, Getters) {
  GgufWriter w;
  w.SetF32("f", 2.5f);
  w.SetU32("u", 7);
  w.SetBool("b", true);
  w.SetString("s", "str");
  w.Set("big", GgufValue::Uint64(uint64_t{1} << 63));
  w.Set("a", I32Array({1}));
  const std::string path = Path("getters.gguf");
  ASSERT_TRUE(w.WriteFile(path).ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> opened = GgufFile::Open(path);
  ASSERT_TRUE(opened.ok());
  const GgufFile& f = **opened;

  EXPECT_EQ(*f.GetFloat("u"), 7.0);  // integers are numbers too
  EXPECT_EQ(*f.GetFloat("big"), 9223372036854775808.0);
  EXPECT_EQ(*f.GetIntOr("absent", -3), -3);
  EXPECT_EQ(*f.GetIntOr("u", -3), 7);
  EXPECT_EQ(*f.GetFloatOr("absent", 0.5), 0.5);
  EXPECT_TRUE(*f.GetBoolOr("absent", true));
  EXPECT_TRUE(*f.GetBoolOr("b", false));

  absl::Status s = f.GetInt("f").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("getters.gguf"));
  EXPECT_THAT(s.message(), HasSubstr("'f'"));
  EXPECT_THAT(s.message(), HasSubstr("f32"));
  EXPECT_EQ(f.GetInt("b").status().code(), absl::StatusCode::kInvalidArgument);  // bool
  EXPECT_EQ(f.GetFloat("b").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetInt("big").status().code(), absl::StatusCode::kInvalidArgument);  // > int64
  EXPECT_EQ(f.GetBool("u").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetString("a").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetArray("s").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetFloat("s").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetIntOr("f", 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetBoolOr("s", true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetFloatOr("a", 1).status().code(), absl::StatusCode::kInvalidArgument);
  s = f.GetString("absent.key").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("absent.key"));
  EXPECT_THAT(s.message(), HasSubstr("getters.gguf"));
}

// ---- writer ---------------------------------------------------------------------------------

TEST_F(GgufTest, WriterSetReplacesInPlace) {
  GgufWriter w;
  w.SetU32("a", 1);
  w.SetU32("b", 2);
  w.SetString("a", "replaced");
  const std::string path = Path("set.gguf");
  ASSERT_TRUE(w.WriteFile(path).ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok());
  ASSERT_EQ((*f)->metadata().size(), 2u);
  EXPECT_EQ((*f)->metadata()[0].key, "a");
  EXPECT_EQ((*f)->metadata()[0].value.AsString(), "replaced");
  EXPECT_EQ((*f)->metadata()[1].key, "b");
}

TEST_F(GgufTest, WriterRejectsBadTensorsAndValues) {
  GgufWriter w;
  EXPECT_EQ(w.AddTensor("short", {4}, kF32, Pattern(15, 0)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.AddTensor("q", {32}, kQ8_0, Pattern(33, 0)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.AddTensor("rows", {16, 2}, kQ8_0, Pattern(34, 0)).code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status s = w.AddTensor("unknown", {4}, 99, Pattern(16, 0));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("99"));
  EXPECT_EQ(w.AddTensor("zero", {0}, kF32, {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.AddTensor("nodims", {}, kF32, Pattern(4, 0)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.AddTensor("5d", {1, 1, 1, 1, 1}, kF32, Pattern(4, 0)).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(w.AddTensor("ok", {1}, kF32, Pattern(4, 0)).ok());
  EXPECT_EQ(w.AddTensor("ok", {1}, kF32, Pattern(4, 0)).code(), absl::StatusCode::kInvalidArgument);

  GgufWriter bad_align;
  bad_align.SetU32("general.alignment", 48);
  EXPECT_EQ(bad_align.Serialize().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad_align.WriteFile(Path("bad_align.gguf")).code(), absl::StatusCode::kInvalidArgument);
  GgufWriter mixed;
  mixed.Set("mixed", GgufValue::Array(GgufType::kInt32, {GgufValue::Int(GgufType::kInt32, 1),
                                                         GgufValue::String("x")}));
  EXPECT_EQ(mixed.Serialize().status().code(), absl::StatusCode::kInvalidArgument);
  GgufWriter range;
  range.Set("u8", GgufValue::Int(GgufType::kUint8, 256));
  EXPECT_EQ(range.Serialize().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ListDir(dir_).empty());  // failed writes leave nothing behind

  GgufWriter good;
  good.SetU32("x", 1);
  s = good.WriteFile(dir_ + "/no/such/dir/out.gguf");
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("out.gguf"));
  EXPECT_TRUE(ListDir(dir_).empty());
}

TEST_F(GgufTest, CopyMetadataOwnsStringsAfterSourceIsClosed) {
  GgufWriter src;
  src.SetString("tokenizer.ggml.model", "llama");
  src.Set("tokenizer.ggml.tokens", StringArray({"<s>", "</s>", "hello"}));
  src.Set("tokenizer.nested", GgufValue::Array(GgufType::kArray, {StringArray({"deep"})}));
  src.SetU32("tokenizer.ggml.bos_token_id", 1);
  src.SetString("general.name", "not copied");
  const std::string src_path = Path("src.gguf");
  ASSERT_TRUE(src.WriteFile(src_path).ok());

  GgufWriter dst;
  dst.SetString("general.name", "dst");
  {
    absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(src_path);
    ASSERT_TRUE(f.ok());
    dst.CopyMetadata(**f, "tokenizer.");
  }  // the source mapping is gone now
  ASSERT_EQ(unlink(src_path.c_str()), 0);
  const std::string dst_path = Path("dst.gguf");
  ASSERT_TRUE(dst.WriteFile(dst_path).ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(dst_path);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->metadata().size(), 5u);
  EXPECT_EQ(*(*f)->GetString("general.name"), "dst");
  EXPECT_EQ(*(*f)->GetString("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(*(*f)->GetInt("tokenizer.ggml.bos_token_id"), 1);
  const GgufValue* tokens = *(*f)->GetArray("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens->elems().size(), 3u);
  EXPECT_EQ(tokens->elems()[2].AsString(), "hello");
  EXPECT_EQ((*(*f)->GetArray("tokenizer.nested"))->elems()[0].elems()[0].AsString(), "deep");
}

// ---- corrupt files --------------------------------------------------------------------------

// A small valid file whose fields the corruption tests locate by the bytes of their names.
std::vector<uint8_t> SmallFile(uint32_t alignment = 32) {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  if (alignment != 32) w.SetU32("general.alignment", alignment);
  w.SetString("general.name", "tiny");
  w.SetBool("test.flag", true);
  w.SetU32("test.u32", 7);
  w.Set("test.arr", I32Array({1, -2, 3}));
  w.SetU32("dup.key1", 1);
  w.SetU32("dup.key2", 2);
  EXPECT_TRUE(w.AddTensor("tensor.a1", {4, 2}, kF32, Pattern(32, 1)).ok());
  EXPECT_TRUE(w.AddTensor("tensor.a2", {32}, kQ8_0, Pattern(34, 2)).ok());
  EXPECT_TRUE(w.AddTensor("tensor.a3", {8}, kF32, Pattern(32, 3)).ok());
  absl::StatusOr<std::vector<uint8_t>> bytes = w.Serialize();
  EXPECT_TRUE(bytes.ok());
  return *bytes;
}

// Field offsets inside SmallFile().
size_t ValueOf(const std::vector<uint8_t>& b, std::string_view key) {  // the value's payload
  return Locate(b, key) + key.size() + 4;
}
size_t TypeOf(const std::vector<uint8_t>& b, std::string_view key) {
  return Locate(b, key) + key.size();
}
size_t NDimsOf(const std::vector<uint8_t>& b, std::string_view tensor) {
  return Locate(b, tensor) + tensor.size();
}
size_t DimOf(const std::vector<uint8_t>& b, std::string_view tensor, int d) {
  return NDimsOf(b, tensor) + 4 + 8 * d;
}
size_t TensorTypeOf(const std::vector<uint8_t>& b, std::string_view tensor) {
  return DimOf(b, tensor, Peek<uint32_t>(b, NDimsOf(b, tensor)));
}
size_t OffsetOf(const std::vector<uint8_t>& b, std::string_view tensor) {
  return TensorTypeOf(b, tensor) + 4;
}

class GgufCorruptTest : public GgufTest {
 protected:
  // Writes `bytes`, opens them and checks the error code and that the message names the
  // file and contains each of `needles`.
  void ExpectError(const std::vector<uint8_t>& bytes, absl::StatusCode code,
                   std::vector<std::string> needles) {
    const std::string path = WriteBytes(Path("corrupt.gguf"), bytes);
    absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), code) << f.status();
    EXPECT_THAT(f.status().message(), HasSubstr(path)) << f.status();
    for (const std::string& n : needles) EXPECT_THAT(f.status().message(), HasSubstr(n));
    EXPECT_EQ(std::string(f.status().message()).find('\n'), std::string::npos);
  }
};

TEST_F(GgufCorruptTest, SmallFileIsValid) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f =
      GgufFile::Open(WriteBytes(Path("ok.gguf"), SmallFile()));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->tensors().size(), 3u);
}

TEST_F(GgufCorruptTest, Header) {
  std::vector<uint8_t> b = SmallFile();
  b[0] = 'X';
  ExpectError(b, absl::StatusCode::kDataLoss, {"magic", "offset 0"});

  b = SmallFile();
  Poke<uint32_t>(&b, 4, 1);
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"version 1"});
  Poke<uint32_t>(&b, 4, 4);
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"version 4"});
  Poke<uint32_t>(&b, 4, 0x03000000);  // a big-endian file
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"big-endian"});

  b = SmallFile();
  Poke<uint64_t>(&b, 16, 1'000'000);  // kv_count
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"1000000 metadata entries"});
  b = SmallFile();
  Poke<uint64_t>(&b, 8, uint64_t{1} << 60);  // tensor_count: the product overflows
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"tensors"});
  b = SmallFile();
  Poke<uint64_t>(&b, 8, ~uint64_t{0});
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"tensors"});
}

TEST_F(GgufCorruptTest, Metadata) {
  std::vector<uint8_t> b = SmallFile();
  Poke<uint64_t>(&b, 24, uint64_t{1} << 50);  // the first key's length
  ExpectError(b, absl::StatusCode::kDataLoss, {"metadata entry 0", "key", "offset 32"});

  b = SmallFile();
  Poke<uint64_t>(&b, ValueOf(b, "general.name"), uint64_t{1} << 40);  // string length
  ExpectError(b, absl::StatusCode::kDataLoss, {"'general.name'", "past the end"});
  b = SmallFile();
  Poke<uint64_t>(&b, ValueOf(b, "general.name"), ~uint64_t{0});  // pos + len overflows
  ExpectError(b, absl::StatusCode::kDataLoss, {"'general.name'"});

  b = SmallFile();
  Poke<uint32_t>(&b, TypeOf(b, "test.u32"), 13);
  ExpectError(b, absl::StatusCode::kDataLoss, {"'test.u32'", "invalid value type 13"});

  b = SmallFile();
  Poke<uint32_t>(&b, ValueOf(b, "test.arr"), 99);  // array element type
  ExpectError(b, absl::StatusCode::kDataLoss, {"'test.arr'", "element type 99"});

  b = SmallFile();
  Poke<uint8_t>(&b, ValueOf(b, "test.flag"), 2);
  ExpectError(b, absl::StatusCode::kDataLoss, {"'test.flag'", "bool value 2"});

  b = SmallFile();
  b[Locate(b, "dup.key2") + 7] = '1';  // "dup.key2" -> "dup.key1"
  ExpectError(b, absl::StatusCode::kDataLoss, {"duplicate key 'dup.key1'"});
}

TEST_F(GgufCorruptTest, HugeArrayCountIsRejectedQuickly) {
  std::vector<uint8_t> b = SmallFile();
  Poke<uint64_t>(&b, ValueOf(b, "test.arr") + 4, 1'000'000'000);
  const auto start = std::chrono::steady_clock::now();
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"'test.arr'", "1000000000"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  Poke<uint64_t>(&b, ValueOf(b, "test.arr") + 4, ~uint64_t{0});
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"'test.arr'"});
}

TEST_F(GgufCorruptTest, Alignment) {
  std::vector<uint8_t> b = SmallFile(64);
  ASSERT_TRUE(GgufFile::Open(WriteBytes(Path("a64.gguf"), b)).ok());
  Poke<uint32_t>(&b, ValueOf(b, "general.alignment"), 48);
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"general.alignment", "48"});
  Poke<uint32_t>(&b, ValueOf(b, "general.alignment"), 0);
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"general.alignment"});
  b = SmallFile(64);
  Poke<uint32_t>(&b, TypeOf(b, "general.alignment"), static_cast<uint32_t>(GgufType::kInt32));
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"general.alignment", "i32"});
}

TEST_F(GgufCorruptTest, TensorShapes) {
  std::vector<uint8_t> b = SmallFile();
  Poke<uint32_t>(&b, NDimsOf(b, "tensor.a2"), 0);
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"'tensor.a2'", "n_dims 0"});
  Poke<uint32_t>(&b, NDimsOf(b, "tensor.a2"), 5);
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"'tensor.a2'", "n_dims 5"});

  b = SmallFile();
  Poke<uint64_t>(&b, DimOf(b, "tensor.a1", 1), 0);
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"'tensor.a1'", "dimension 1 is 0"});
  Poke<uint64_t>(&b, DimOf(b, "tensor.a1", 1), ~uint64_t{0});  // -1 as int64
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"'tensor.a1'", "dimension 1 is -1"});

  b = SmallFile();  // the product overflows 64 bits
  Poke<uint64_t>(&b, DimOf(b, "tensor.a1", 0), uint64_t{1} << 40);
  Poke<uint64_t>(&b, DimOf(b, "tensor.a1", 1), uint64_t{1} << 40);
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"'tensor.a1'", "2^62"});
  Poke<uint64_t>(&b, DimOf(b, "tensor.a1", 0), uint64_t{1} << 62);  // 2^63: over 2^62
  Poke<uint64_t>(&b, DimOf(b, "tensor.a1", 1), 2);
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"'tensor.a1'", "2^62"});

  b = SmallFile();  // rows of 16 in 32-value blocks, though 32 values in all
  Poke<uint64_t>(&b, DimOf(b, "tensor.a2", 0), 16);
  Poke<uint32_t>(&b, NDimsOf(b, "tensor.a2"), 1);
  ExpectError(b, absl::StatusCode::kInvalidArgument, {"'tensor.a2'", "block size 32"});
}

TEST_F(GgufCorruptTest, TwoTo40ElementsIsRejectedQuickly) {
  std::vector<uint8_t> b = SmallFile();
  Poke<uint64_t>(&b, DimOf(b, "tensor.a1", 0), uint64_t{1} << 20);
  Poke<uint64_t>(&b, DimOf(b, "tensor.a1", 1), uint64_t{1} << 20);
  const auto start = std::chrono::steady_clock::now();
  ExpectError(b, absl::StatusCode::kDataLoss,
              {"'tensor.a1'", "4398046511104 bytes", "past the end of the file"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
}

TEST_F(GgufCorruptTest, TensorTypesAndPlacement) {
  std::vector<uint8_t> b = SmallFile();
  Poke<uint32_t>(&b, TensorTypeOf(b, "tensor.a2"), 99);
  ExpectError(b, absl::StatusCode::kUnimplemented, {"'tensor.a2'", "type id 99"});

  b = SmallFile();
  const uint64_t a2 = Peek<uint64_t>(b, OffsetOf(b, "tensor.a2"));
  Poke<uint64_t>(&b, OffsetOf(b, "tensor.a2"), a2 + 4);
  ExpectError(b, absl::StatusCode::kDataLoss, {"'tensor.a2'", "alignment 32"});

  b = SmallFile();  // the last tensor moved one alignment step past the end
  Poke<uint64_t>(&b, OffsetOf(b, "tensor.a3"), Peek<uint64_t>(b, OffsetOf(b, "tensor.a3")) + 32);
  ExpectError(b, absl::StatusCode::kDataLoss, {"'tensor.a3'", "32 bytes", "past the end"});
  Poke<uint64_t>(&b, OffsetOf(b, "tensor.a3"), ~uint64_t{31});  // data_offset + offset wraps
  ExpectError(b, absl::StatusCode::kDataLoss, {"'tensor.a3'", "past the end"});

  b = SmallFile();
  Poke<uint64_t>(&b, OffsetOf(b, "tensor.a3"), 0);  // on top of tensor.a1
  ExpectError(b, absl::StatusCode::kDataLoss, {"overlaps", "'tensor.a1'"});
  b = SmallFile();  // tensor.a1 [0, 32) grows to [0, 64) over tensor.a2 at 32
  Poke<uint64_t>(&b, DimOf(b, "tensor.a1", 1), 4);
  ExpectError(b, absl::StatusCode::kDataLoss, {"'tensor.a2'", "overlaps", "'tensor.a1'"});

  b = SmallFile();
  b[Locate(b, "tensor.a3") + 8] = '1';
  ExpectError(b, absl::StatusCode::kDataLoss, {"duplicate tensor name 'tensor.a1'"});
}

// Nested arrays are built by hand: the writer refuses to nest deeper than the reader reads.
std::vector<uint8_t> NestedArrayFile(int depth) {
  std::vector<uint8_t> b = {'G', 'G', 'U', 'F'};
  auto put32 = [&](uint32_t v) {
    b.insert(b.end(), reinterpret_cast<uint8_t*>(&v), reinterpret_cast<uint8_t*>(&v) + 4);
  };
  auto put64 = [&](uint64_t v) {
    b.insert(b.end(), reinterpret_cast<uint8_t*>(&v), reinterpret_cast<uint8_t*>(&v) + 8);
  };
  put32(3);
  put64(0);  // tensors
  put64(1);  // kvs
  put64(4);
  b.insert(b.end(), {'d', 'e', 'e', 'p'});
  put32(static_cast<uint32_t>(GgufType::kArray));
  for (int i = 1; i < depth; ++i) {
    put32(static_cast<uint32_t>(GgufType::kArray));
    put64(1);
  }
  put32(static_cast<uint32_t>(GgufType::kUint8));
  put64(1);
  b.push_back(42);
  return b;
}

TEST_F(GgufCorruptTest, NestingDepth) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f =
      GgufFile::Open(WriteBytes(Path("deep8.gguf"), NestedArrayFile(8)));
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufValue* v = (*f)->Find("deep");
  for (int i = 0; i < 7; ++i) v = &v->elems().at(0);
  EXPECT_EQ(v->elem_type(), GgufType::kUint8);
  EXPECT_EQ(v->elems().at(0).AsInt(), 42);
  ExpectError(NestedArrayFile(9), absl::StatusCode::kInvalidArgument, {"'deep'", "nested"});
  ExpectError(NestedArrayFile(100000), absl::StatusCode::kInvalidArgument, {"'deep'", "nested"});
}

TEST_F(GgufCorruptTest, TruncationAtEveryOffset) {
  for (uint32_t alignment : {32u, 64u}) {
    const std::vector<uint8_t> full = SmallFile(alignment);
    const std::string path = Path("trunc.gguf");
    for (size_t len = 0; len < full.size(); ++len) {
      SCOPED_TRACE(len);
      WriteBytes(path, std::vector<uint8_t>(full.begin(), full.begin() + len));
      absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
      ASSERT_FALSE(f.ok());
      EXPECT_TRUE(f.status().code() == absl::StatusCode::kDataLoss ||
                  f.status().code() == absl::StatusCode::kInvalidArgument)
          << f.status();
      EXPECT_THAT(f.status().message(), HasSubstr(path));
    }
    WriteBytes(path, full);
    EXPECT_TRUE(GgufFile::Open(path).ok());
  }
  // Cut inside the metadata and the tensor table, the message names the key or tensor.
  const std::vector<uint8_t> full = SmallFile();
  std::vector<uint8_t> cut(full.begin(), full.begin() + ValueOf(full, "dup.key2") + 2);
  ExpectError(cut, absl::StatusCode::kDataLoss, {"'dup.key2'", "truncated", "u32 at offset"});
  cut.assign(full.begin(), full.begin() + DimOf(full, "tensor.a2", 0) + 3);
  ExpectError(cut, absl::StatusCode::kDataLoss, {"'tensor.a2'", "truncated"});
  cut.assign(full.begin(), full.end() - 1);
  ExpectError(cut, absl::StatusCode::kDataLoss, {"'tensor.a3'", "past the end"});
}

TEST_F(GgufCorruptTest, EveryByteFlippedNeverCrashes) {
  const std::vector<uint8_t> full = SmallFile();
  const std::string path = Path("flip.gguf");
  int errors = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    for (uint8_t x : {0x01, 0x80, 0xFF}) {
      std::vector<uint8_t> b = full;
      b[i] ^= x;
      WriteBytes(path, b);
      absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
      if (!f.ok()) {
        ++errors;
        EXPECT_THAT(f.status().message(), HasSubstr(path));
        continue;
      }
      for (const GgufTensorInfo& t : (*f)->tensors()) {  // whatever opens lies in the file
        EXPECT_GE(t.data, (*f)->base() + (*f)->data_offset());
        EXPECT_LE(t.data + t.nbytes, (*f)->base() + (*f)->file_size());
      }
    }
  }
  EXPECT_GT(errors, 0);
}

TEST_F(GgufTest, MissingEmptyAndNonRegularFiles) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(Path("absent.gguf"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(f.status().message(), HasSubstr("absent.gguf"));
  f = GgufFile::Open(WriteBytes(Path("empty.gguf"), {}));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(f.status().message(), HasSubstr("empty.gguf"));
  f = GgufFile::Open(dir_);
  EXPECT_FALSE(f.ok());
}

// ---- real files -----------------------------------------------------------------------------

TEST(GgufRealFiles, OpenEveryTestFile) {
  const std::string root = moex::testing::TestDataDir();
  if (root.empty()) GTEST_SKIP() << "no ../shared/testdata";
  // Vocabulary sizes from testdata/README.md.
  const std::map<std::string, size_t> expected_tokens = {
      {"vocab/ggml-vocab-llama-spm.gguf", 32000}, {"vocab/ggml-vocab-qwen2.gguf", 151936},
      {"vocab/ggml-vocab-gpt-2.gguf", 50257},     {"vocab/ggml-vocab-deepseek-llm.gguf", 102400},
      {"vocab/vocab-tiny4k.gguf", 4096},
  };
  int n_files = 0;
  for (const std::string sub : {"models", "vocab", "tiny-moe"}) {
    for (const std::string& name : ListDir(root + "/" + sub)) {
      if (!name.ends_with(".gguf")) continue;
      const std::string rel = sub + "/" + name;
      SCOPED_TRACE(rel);
      ++n_files;
      absl::StatusOr<std::unique_ptr<GgufFile>> opened = GgufFile::Open(root + "/" + rel);
      ASSERT_TRUE(opened.ok()) << opened.status();
      const GgufFile& f = **opened;
      EXPECT_TRUE(f.version() == 2 || f.version() == 3);
      absl::StatusOr<std::string_view> arch = f.GetString("general.architecture");
      ASSERT_TRUE(arch.ok()) << arch.status();
      EXPECT_FALSE(arch->empty());
      absl::StatusOr<const GgufValue*> tokens = f.GetArray("tokenizer.ggml.tokens");
      ASSERT_TRUE(tokens.ok()) << tokens.status();
      EXPECT_EQ((*tokens)->elem_type(), GgufType::kString);
      auto it = expected_tokens.find(rel);
      EXPECT_EQ((*tokens)->elems().size(), it == expected_tokens.end() ? 4096 : it->second);
      for (const GgufValue& t : (*tokens)->elems()) ASSERT_EQ(t.type(), GgufType::kString);
      if (sub == "vocab") {
        EXPECT_TRUE(f.tensors().empty());
      } else {
        EXPECT_FALSE(f.tensors().empty());
        EXPECT_NE(f.FindTensor("token_embd.weight"), nullptr);
      }
      uint64_t total = 0;
      for (const GgufTensorInfo& t : f.tensors()) {
        const kcpu::TypeTraits* traits = kcpu::FindTypeTraits(t.type);
        ASSERT_NE(traits, nullptr) << t.name;
        EXPECT_EQ(t.nbytes, static_cast<uint64_t>(t.n_elements() / traits->block_elems *
                                                  traits->block_bytes));
        EXPECT_GE(t.data, f.base() + f.data_offset());
        EXPECT_LE(t.data + t.nbytes, f.base() + f.file_size()) << t.name;
        EXPECT_EQ(t.offset % f.alignment(), 0u);
        EXPECT_EQ(f.FindTensor(t.name), &t);
        total += t.nbytes;
      }
      if (!f.tensors().empty()) {
        EXPECT_LE(f.data_offset() + total, f.file_size());
      }
    }
  }
  EXPECT_GE(n_files, 11);
}

}  // namespace
}  // namespace moex
