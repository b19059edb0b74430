// End-to-end tests of the `moex` binary on bad input: corrupt, truncated and absurd GGUF
// files, models moex cannot run, and bad flags. Every failure must be a clean one: exit
// code 1 or 2 (never a signal), exactly one line of output prefixed "moex <command>: ",
// naming the file and the problem, and no sanitizer report, crash or abort.
//
// The valid model the corrupt files start from is written by `moex gen` itself; the byte
// offsets of the header, metadata, tensor table and data are found by walking the file
// here (independently of the reader under test).
#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/core/gguf.h"
#include "tests/test_util.h"

namespace moex {
namespace {

using ::moex::testing::BinaryPath;
using ::moex::testing::MakeTempDir;
using ::moex::testing::RunCommand;

// ---- Running the binary ---------------------------------------------------------------------

struct Result {
  int code = -1;
  std::string output;
};

std::string Quoted(const std::string& s) { return "'" + s + "'"; }

// Runs `moex ARGS`, capturing stdout and stderr together.
Result Moex(const std::string& args) {
  Result r;
  r.code = RunCommand(Quoted(BinaryPath("tools/moex")) + " " + args, &r.output);
  return r;
}

// Runs `moex ARGS`, capturing stderr only (stdout is discarded).
Result MoexStderr(const std::string& args) {
  Result r;
  r.code = RunCommand("{ " + Quoted(BinaryPath("tools/moex")) + " " + args + " 2>&1 >/dev/null; }",
                      &r.output);
  return r;
}

std::string Basename(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// What a clean failure must look like.
struct Expect {
  std::vector<int> codes = {1, 2};  // accepted exit codes
  std::vector<std::string> all_of;  // every one of these must appear
  std::vector<std::string> any_of;  // at least one of these must appear (if any)

  Expect& Codes(std::vector<int> v) {
    codes = std::move(v);
    return *this;
  }
  Expect& AllOf(std::vector<std::string> v) {
    all_of = std::move(v);
    return *this;
  }
  Expect& AnyOf(std::vector<std::string> v) {
    any_of = std::move(v);
    return *this;
  }
};

::testing::AssertionResult IsCleanError(const Result& r, const std::string& command,
                                        const Expect& e) {
  auto fail = [&]() {
    return ::testing::AssertionFailure()
           << "`moex " << command << "` exited " << r.code << " with output:\n"
           << r.output << "\n--- ";
  };
  if (r.code >= 128) return fail() << "killed by signal " << r.code - 128;
  bool code_ok = false;
  for (int c : e.codes) code_ok |= r.code == c;
  if (!code_ok) {
    auto f = fail() << "expected exit code";
    for (int c : e.codes) f << " " << c;
    return f;
  }
  for (const char* bad : {"Sanitizer", "Segmentation", "terminate called", "Aborted"}) {
    if (Contains(r.output, bad)) return fail() << "output mentions '" << bad << "'";
  }
  std::string line = r.output;
  if (!line.empty() && line.back() == '\n') line.pop_back();
  if (line.empty()) return fail() << "no error message";
  if (Contains(line, "\n")) return fail() << "expected exactly one line of output";
  const std::string prefix = "moex " + command.substr(0, command.find(' ')) + ": ";
  if (line.rfind(prefix, 0) != 0) return fail() << "expected the prefix '" << prefix << "'";
  for (const std::string& s : e.all_of) {
    if (!Contains(line, s)) return fail() << "expected the message to mention '" << s << "'";
  }
  if (!e.any_of.empty()) {
    bool any = false;
    for (const std::string& s : e.any_of) any |= Contains(line, s);
    if (!any) {
      auto f = fail() << "expected the message to mention one of:";
      for (const std::string& s : e.any_of) f << " '" << s << "'";
      return f;
    }
  }
  return ::testing::AssertionSuccess();
}

// Words that describe a file that ends too early.
const std::vector<std::string> kTruncatedWords = {"truncated", "past the end", "cannot fit"};

// ---- Byte-level edits -----------------------------------------------------------------------

using Bytes = std::vector<uint8_t>;

bool ReadFileBytes(const std::string& path, Bytes* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

void WriteFileBytes(const std::string& path, std::span<const uint8_t> bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << "cannot write " << path;
}

template <typename T>
void Put(Bytes* b, uint64_t offset, T v) {
  ASSERT_LE(offset + sizeof(T), b->size());
  std::memcpy(b->data() + offset, &v, sizeof(T));  // GGUF is little-endian, like the host
}

template <typename T>
T Get(const Bytes& b, uint64_t offset) {
  T v{};
  if (offset + sizeof(T) <= b.size()) std::memcpy(&v, b.data() + offset, sizeof(T));
  return v;
}

// Where things are in a valid GGUF file, found by walking its bytes.
struct Layout {
  struct Kv {
    std::string key;
    uint64_t begin = 0;       // the key's u64 length
    uint64_t value_type = 0;  // the u32 value type
    uint64_t value = 0;       // the value (for an array: its u32 element type)
    uint64_t end = 0;
  };
  struct TensorInfo {
    std::string name;
    uint64_t begin = 0;   // the name's u64 length
    uint64_t n_dims = 0;  // the u32 dimension count
    uint64_t dims = 0;    // the u64 dims
    uint64_t type = 0;    // the u32 ggml type
    uint64_t offset = 0;  // the u64 data offset
    uint64_t end = 0;
  };
  std::vector<Kv> kvs;
  std::vector<TensorInfo> tensors;
  uint64_t kvs_begin = 24;
  uint64_t tensors_begin = 0;
  uint64_t tensors_end = 0;

  const Kv* FindKv(std::string_view key) const {
    for (const Kv& kv : kvs) {
      if (kv.key == key) return &kv;
    }
    return nullptr;
  }
  const TensorInfo* FindTensor(std::string_view name) const {
    for (const TensorInfo& t : tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
};

class Walker {
 public:
  explicit Walker(const Bytes& b) : b_(b) {}

  bool Walk(Layout* l) {
    if (b_.size() < 24 || std::memcmp(b_.data(), "GGUF", 4) != 0) return false;
    const uint64_t n_tensors = Get<uint64_t>(b_, 8);
    const uint64_t n_kv = Get<uint64_t>(b_, 16);
    pos_ = 24;
    for (uint64_t i = 0; i < n_kv; ++i) {
      Layout::Kv kv;
      kv.begin = pos_;
      if (!String(&kv.key)) return false;
      kv.value_type = pos_;
      const uint32_t type = Get<uint32_t>(b_, pos_);
      pos_ += 4;
      kv.value = pos_;
      if (!Value(type)) return false;
      kv.end = pos_;
      l->kvs.push_back(kv);
    }
    l->tensors_begin = pos_;
    for (uint64_t i = 0; i < n_tensors; ++i) {
      Layout::TensorInfo t;
      t.begin = pos_;
      if (!String(&t.name)) return false;
      t.n_dims = pos_;
      const uint32_t n_dims = Get<uint32_t>(b_, pos_);
      t.dims = pos_ + 4;
      t.type = t.dims + 8ull * n_dims;
      t.offset = t.type + 4;
      t.end = t.offset + 8;
      pos_ = t.end;
      if (n_dims > 4 || pos_ > b_.size()) return false;
      l->tensors.push_back(t);
    }
    l->tensors_end = pos_;
    return true;
  }

 private:
  bool String(std::string* out) {
    const uint64_t n = Get<uint64_t>(b_, pos_);
    if (pos_ + 8 + n > b_.size()) return false;
    if (out) out->assign(reinterpret_cast<const char*>(b_.data() + pos_ + 8), n);
    pos_ += 8 + n;
    return true;
  }
  bool Value(uint32_t type) {
    static constexpr int kSizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type == static_cast<uint32_t>(GgufType::kString)) return String(nullptr);
    if (type == static_cast<uint32_t>(GgufType::kArray)) {
      const uint32_t elem = Get<uint32_t>(b_, pos_);
      const uint64_t n = Get<uint64_t>(b_, pos_ + 4);
      pos_ += 12;
      for (uint64_t i = 0; i < n; ++i) {
        if (!Value(elem)) return false;
      }
      return true;
    }
    if (type >= std::size(kSizes)) return false;
    pos_ += kSizes[type];
    return pos_ <= b_.size();
  }

  const Bytes& b_;
  uint64_t pos_ = 0;
};

// ---- The fixture ----------------------------------------------------------------------------

constexpr int kVocab = 512;

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir());
    model_ = new std::string(*dir_ + "/model.gguf");
    Result gen = Moex(
        "gen --arch qwen3moe --type q8_0 --hidden 64 --layers 2 --heads 4 --kv-heads 2 "
        "--experts 4 --top-k 2 --ffn 64 --vocab-size " +
        std::to_string(kVocab) + " --quiet -o " + Quoted(*model_));
    setup_error_ = new std::string;
    bytes_ = new Bytes;
    layout_ = new Layout;
    if (gen.code != 0) {
      *setup_error_ = "moex gen failed: " + gen.output;
      return;
    }
    absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(*model_);
    if (!f.ok()) {
      *setup_error_ = "the generated model does not open: " + f.status().ToString();
      return;
    }
    src_ = f->release();
    if (!ReadFileBytes(*model_, bytes_) || !Walker(*bytes_).Walk(layout_)) {
      *setup_error_ = "cannot walk the generated model's bytes";
      return;
    }
    if (layout_->tensors_end > src_->data_offset() ||
        layout_->tensors.size() != src_->tensors().size() ||
        layout_->kvs.size() != src_->metadata().size()) {
      *setup_error_ = "the walked layout disagrees with GgufFile";
    }
  }

  static void TearDownTestSuite() {
    delete src_;
    src_ = nullptr;
    // MakeTempDir's directory goes when the process exits.
  }

  void SetUp() override { ASSERT_TRUE(setup_error_->empty()) << *setup_error_; }

  static const GgufFile& src() { return *src_; }
  static const Bytes& bytes() { return *bytes_; }
  static const Layout& layout() { return *layout_; }
  static std::string Path(const std::string& name) { return *dir_ + "/" + name; }

  // Writes `bytes` as DIR/name and returns the path.
  static std::string WriteCase(const std::string& name, std::span<const uint8_t> b) {
    const std::string path = Path(name);
    WriteFileBytes(path, b);
    return path;
  }
  // The model cut to its first `size` bytes.
  static std::string Truncated(uint64_t size) {
    return WriteCase("cut_at_" + std::to_string(size) + ".gguf", std::span(bytes()).first(size));
  }

  // Runs inspect, logits and run on `path` and checks each fails cleanly.
  static void ExpectAllCommandsFail(const std::string& path, Expect e,
                                    bool include_inspect = true) {
    e.all_of.push_back(Basename(path));
    const std::string out = Path("logits.bin");
    std::vector<std::string> commands = {
        "logits -m " + Quoted(path) + " --tokens 1,2,3 --out " + Quoted(out),
        "run -m " + Quoted(path) + " --tokens 1,2,3 -n 4 --temp 0"};
    if (include_inspect) commands.insert(commands.begin(), "inspect " + Quoted(path));
    for (const std::string& c : commands) {
      EXPECT_TRUE(IsCleanError(Moex(c), c, e));
    }
    struct stat st;
    EXPECT_NE(stat(out.c_str(), &st), 0) << "a failed `moex logits` left " << out << " behind";
  }

  // A copy of the model rebuilt with GgufWriter; `edit` changes the writer before tensors
  // are added, `keep` filters tensors and may change their dims and data.
  using TensorEdit = bool (*)(const GgufTensorInfo& t, std::vector<int64_t>* dims,
                              std::span<const uint8_t>* data);
  static std::string Rebuild(const std::string& name, void (*edit)(GgufWriter*), TensorEdit keep) {
    GgufWriter w;
    w.CopyMetadata(src(), "");
    if (edit) edit(&w);
    for (const GgufTensorInfo& t : src().tensors()) {
      std::vector<int64_t> dims = t.dims;
      std::span<const uint8_t> data(t.data, t.nbytes);
      if (keep && !keep(t, &dims, &data)) continue;
      absl::Status st = w.AddTensor(t.name, dims, t.type, data);
      EXPECT_TRUE(st.ok()) << st;
    }
    const std::string path = Path(name);
    absl::Status st = w.WriteFile(path);
    EXPECT_TRUE(st.ok()) << st;
    return path;
  }

  static std::string* dir_;
  static std::string* model_;
  static std::string* setup_error_;
  static const GgufFile* src_;
  static Bytes* bytes_;
  static Layout* layout_;
};

std::string* BadInputTest::dir_ = nullptr;
std::string* BadInputTest::model_ = nullptr;
std::string* BadInputTest::setup_error_ = nullptr;
const GgufFile* BadInputTest::src_ = nullptr;
Bytes* BadInputTest::bytes_ = nullptr;
Layout* BadInputTest::layout_ = nullptr;

// ---- A valid model --------------------------------------------------------------------------

TEST_F(BadInputTest, InspectJsonOfGeneratedModelIsOneJsonObject) {
  const Result r = Moex("inspect --json " + Quoted(*model_));
  ASSERT_EQ(r.code, 0) << r.output;
  std::string line = r.output;
  ASSERT_FALSE(line.empty());
  if (line.back() == '\n') line.pop_back();
  EXPECT_FALSE(Contains(line, "\n")) << r.output;
  EXPECT_EQ(line.front(), '{') << r.output;
  EXPECT_EQ(line.back(), '}') << r.output;
  EXPECT_TRUE(Contains(line, "\"architecture\":\"qwen3moe\"")) << r.output;
  EXPECT_TRUE(Contains(line, "\"expert_bytes\":")) << r.output;
}

TEST_F(BadInputTest, LogitsOfGeneratedModelWritesHeaderAndFiniteValues) {
  const std::string out = Path("good_logits.bin");
  const Result r = Moex("logits -m " + Quoted(*model_) + " --tokens 1,2,3,4 --out " + Quoted(out));
  ASSERT_EQ(r.code, 0) << r.output;
  Bytes b;
  ASSERT_TRUE(ReadFileBytes(out, &b));
  constexpr int kTokens = 4;
  ASSERT_EQ(b.size(), 8u + 4u * kTokens * kVocab);
  EXPECT_EQ(Get<int32_t>(b, 0), kTokens);
  EXPECT_EQ(Get<int32_t>(b, 4), kVocab);
  int non_finite = 0;
  for (size_t i = 8; i < b.size(); i += 4) non_finite += !std::isfinite(Get<float>(b, i));
  EXPECT_EQ(non_finite, 0);
}

// ---- Files that are not GGUF ----------------------------------------------------------------

TEST_F(BadInputTest, MissingFileSaysItCannotBeOpened) {
  ExpectAllCommandsFail(
      Path("no_such_model.gguf"),
      Expect().AnyOf({"No such file", "not found", "cannot open", "does not exist"}));
}

TEST_F(BadInputTest, EmptyFileIsTruncated) {
  ExpectAllCommandsFail(WriteCase("empty.gguf", {}), Expect().AnyOf({"truncated", "empty"}));
}

TEST_F(BadInputTest, WrongMagicIsReported) {
  Bytes b = bytes();
  std::memcpy(b.data(), "GGML", 4);
  ExpectAllCommandsFail(WriteCase("bad_magic.gguf", b), Expect().AnyOf({"magic", "not a GGUF"}));
}

TEST_F(BadInputTest, GgufVersion1IsUnsupported) {
  Bytes b = bytes();
  Put<uint32_t>(&b, 4, 1);
  ExpectAllCommandsFail(WriteCase("version1.gguf", b), Expect().AllOf({"version"}));
}

TEST_F(BadInputTest, GgufVersion99IsUnsupported) {
  Bytes b = bytes();
  Put<uint32_t>(&b, 4, 99);
  ExpectAllCommandsFail(WriteCase("version99.gguf", b), Expect().AllOf({"version", "99"}));
}

// ---- Truncation -----------------------------------------------------------------------------

TEST_F(BadInputTest, TruncationInTheHeaderIsReported) {
  for (uint64_t size : {2, 4, 6, 8, 12, 16, 20, 24}) {
    SCOPED_TRACE("cut at " + std::to_string(size));
    ExpectAllCommandsFail(Truncated(size), Expect().AnyOf(kTruncatedWords));
  }
}

TEST_F(BadInputTest, TruncationInTheMetadataIsReported) {
  const Layout& l = layout();
  const Layout::Kv* arch = l.FindKv("general.architecture");
  const Layout::Kv* tokens = l.FindKv("tokenizer.ggml.tokens");
  ASSERT_NE(arch, nullptr);
  ASSERT_NE(tokens, nullptr);
  for (uint64_t size :
       {l.kvs_begin + 4, l.kvs_begin + 10, arch->value_type + 2, arch->value + 9, tokens->value + 6,
        (tokens->value + tokens->end) / 2, l.kvs.back().begin + 10, l.tensors_begin - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(size));
    ExpectAllCommandsFail(Truncated(size), Expect().AnyOf(kTruncatedWords));
  }
}

TEST_F(BadInputTest, TruncationInTheTensorTableIsReported) {
  const Layout& l = layout();
  const Layout::TensorInfo& first = l.tensors.front();
  const Layout::TensorInfo& mid = l.tensors[l.tensors.size() / 2];
  for (uint64_t size : {l.tensors_begin + 3, first.begin + 12, first.dims + 4, mid.type + 1,
                        mid.offset + 5, l.tensors_end - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(size));
    ExpectAllCommandsFail(Truncated(size), Expect().AnyOf(kTruncatedWords));
  }
}

TEST_F(BadInputTest, TruncationInTheDataNamesATensor) {
  const uint64_t data = src().data_offset();
  const uint64_t size = bytes().size();
  std::vector<uint64_t> cuts = {data, data + 1, (data + size) / 2, size - 1};
  if (data > layout().tensors_end) cuts.insert(cuts.begin(), data - 1);  // in the padding
  for (uint64_t cut : cuts) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    ExpectAllCommandsFail(Truncated(cut), Expect().AllOf({"tensor"}).AnyOf(kTruncatedWords));
  }
}

// ---- Absurd counts and lengths --------------------------------------------------------------

TEST_F(BadInputTest, KvCountOf2To60IsRejected) {
  Bytes b = bytes();
  Put<uint64_t>(&b, 16, uint64_t{1} << 60);
  ExpectAllCommandsFail(WriteCase("kv_count.gguf", b),
                        Expect().AllOf({"1152921504606846976", "metadata"}));
}

TEST_F(BadInputTest, TensorCountOf2To60IsRejected) {
  Bytes b = bytes();
  Put<uint64_t>(&b, 8, uint64_t{1} << 60);
  ExpectAllCommandsFail(WriteCase("tensor_count.gguf", b),
                        Expect().AllOf({"1152921504606846976", "tensor"}));
}

TEST_F(BadInputTest, KeyLengthBeyondTheFileIsRejected) {
  Bytes b = bytes();
  Put<uint64_t>(&b, layout().kvs_begin, b.size() + 1000);
  ExpectAllCommandsFail(WriteCase("key_length.gguf", b),
                        Expect().AllOf({"metadata"}).AnyOf(kTruncatedWords));
}

TEST_F(BadInputTest, StringValueLengthBeyondTheFileNamesTheKey) {
  const Layout::Kv* arch = layout().FindKv("general.architecture");
  ASSERT_NE(arch, nullptr);
  Bytes b = bytes();
  Put<uint64_t>(&b, arch->value, b.size() + 1000);
  ExpectAllCommandsFail(WriteCase("string_length.gguf", b),
                        Expect().AllOf({"general.architecture"}).AnyOf(kTruncatedWords));
}

TEST_F(BadInputTest, ArrayLengthOf10To9NamesTheKey) {
  const Layout::Kv* tokens = layout().FindKv("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  Bytes b = bytes();
  Put<uint64_t>(&b, tokens->value + 4, 1000000000);
  ExpectAllCommandsFail(WriteCase("array_length.gguf", b),
                        Expect().AllOf({"tokenizer.ggml.tokens"}));
}

// ---- Absurd tensor infos --------------------------------------------------------------------

TEST_F(BadInputTest, TensorOf2To40ElementsNamesTheTensor) {
  const Layout::TensorInfo* t = layout().FindTensor("token_embd.weight");
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(Get<uint32_t>(bytes(), t->n_dims), 2u);
  const uint64_t ne0 = Get<uint64_t>(bytes(), t->dims);
  Bytes b = bytes();
  Put<uint64_t>(&b, t->dims + 8, (uint64_t{1} << 40) / ne0);
  ExpectAllCommandsFail(WriteCase("huge_tensor.gguf", b), Expect().AllOf({"token_embd.weight"}));
}

TEST_F(BadInputTest, ZeroDimensionNamesTheTensor) {
  const Layout::TensorInfo* t = layout().FindTensor("token_embd.weight");
  ASSERT_NE(t, nullptr);
  Bytes b = bytes();
  Put<uint64_t>(&b, t->dims + 8, 0);
  ExpectAllCommandsFail(WriteCase("zero_dim.gguf", b), Expect().AllOf({"token_embd.weight"}));
}

TEST_F(BadInputTest, FiveDimensionsNameTheTensor) {
  // token_embd.weight [64, 512] becomes [64, 512, 1, 1, 1]: same bytes, but more
  // dimensions than GGUF allows. The table grows by 24 bytes; the data is re-aligned.
  const Layout& l = layout();
  const Layout::TensorInfo* t = l.FindTensor("token_embd.weight");
  ASSERT_NE(t, nullptr);
  const uint32_t n_dims = Get<uint32_t>(bytes(), t->n_dims);
  const uint64_t extra = 5 - n_dims;
  const Bytes& old = bytes();
  Bytes b(old.begin(), old.begin() + t->type);
  for (uint64_t i = 0; i < extra; ++i) {
    const uint64_t one = 1;
    b.insert(b.end(), reinterpret_cast<const uint8_t*>(&one),
             reinterpret_cast<const uint8_t*>(&one) + 8);
  }
  b.insert(b.end(), old.begin() + t->type, old.begin() + l.tensors_end);
  const uint64_t align = src().alignment();
  b.resize((b.size() + align - 1) / align * align, 0);
  b.insert(b.end(), old.begin() + src().data_offset(), old.end());
  Put<uint32_t>(&b, t->n_dims, 5);
  ExpectAllCommandsFail(WriteCase("five_dims.gguf", b), Expect().AllOf({"token_embd.weight"}));
}

TEST_F(BadInputTest, TensorOffsetBeyondTheFileNamesTheTensor) {
  const Layout::TensorInfo* t = layout().FindTensor("output.weight");
  ASSERT_NE(t, nullptr);
  const uint64_t align = src().alignment();
  Bytes b = bytes();
  Put<uint64_t>(&b, t->offset, (b.size() + align - 1) / align * align);
  ExpectAllCommandsFail(WriteCase("offset_beyond.gguf", b), Expect().AllOf({"output.weight"}));
}

TEST_F(BadInputTest, UnknownTensorTypeNamesTheTensorAndTheType) {
  const Layout::TensorInfo* t = layout().FindTensor("output.weight");
  ASSERT_NE(t, nullptr);
  Bytes b = bytes();
  Put<uint32_t>(&b, t->type, 99);
  ExpectAllCommandsFail(WriteCase("type99.gguf", b), Expect().AllOf({"output.weight", "99"}));
}

// ---- Valid GGUF files that moex cannot run --------------------------------------------------

TEST_F(BadInputTest, MissingRequiredTensorIsNamed) {
  const std::string path =
      Rebuild("no_attn_q.gguf", nullptr,
              [](const GgufTensorInfo& t, std::vector<int64_t>*, std::span<const uint8_t>*) {
                return t.name != "blk.0.attn_q.weight";
              });
  ExpectAllCommandsFail(path, Expect().AllOf({"blk.0.attn_q.weight"}), /*include_inspect=*/false);
}

TEST_F(BadInputTest, TensorWithWrongShapeIsNamed) {
  // blk.0.attn_q.weight [64, 64] becomes [64, 32] (its first 32 rows).
  const std::string path = Rebuild(
      "wrong_shape.gguf", nullptr,
      [](const GgufTensorInfo& t, std::vector<int64_t>* dims, std::span<const uint8_t>* data) {
        if (t.name == "blk.0.attn_q.weight") {
          dims->back() /= 2;
          *data = data->first(data->size() / 2);
        }
        return true;
      });
  ExpectAllCommandsFail(path, Expect().AllOf({"blk.0.attn_q.weight"}), /*include_inspect=*/false);
}

TEST_F(BadInputTest, UnsupportedArchitectureIsNamed) {
  const std::string path = Rebuild(
      "mamba.gguf", [](GgufWriter* w) { w->SetString("general.architecture", "mamba"); }, nullptr);
  ExpectAllCommandsFail(path, Expect().AllOf({"mamba"}).AnyOf({"architecture"}),
                        /*include_inspect=*/false);
}

TEST_F(BadInputTest, VocabOnlyFileSaysTokenEmbeddingIsMissing) {
  const std::string path = Rebuild("vocab_only.gguf", nullptr,
                                   [](const GgufTensorInfo&, std::vector<int64_t>*,
                                      std::span<const uint8_t>*) { return false; });
  ExpectAllCommandsFail(path, Expect().AllOf({"token_embd.weight"}), /*include_inspect=*/false);
}

TEST_F(BadInputTest, InspectDescribesValidFilesThatCannotRun) {
  // Structurally valid files are still described by `moex inspect`.
  const std::string path = Rebuild("vocab_only_inspect.gguf", nullptr,
                                   [](const GgufTensorInfo&, std::vector<int64_t>*,
                                      std::span<const uint8_t>*) { return false; });
  const Result r = Moex("inspect " + Quoted(path));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "token_embd.weight")) << r.output;
}

// ---- Bad flags and bad requests -------------------------------------------------------------

TEST_F(BadInputTest, NoModelIsAUsageError) {
  for (const std::string& c :
       {std::string("run --tokens 1,2,3 -n 4"), "logits --tokens 1,2,3 --out " + Quoted(Path("x")),
        std::string("inspect")}) {
    EXPECT_TRUE(IsCleanError(Moex(c), c, Expect().Codes({2}).AnyOf({"-m", "model"})));
  }
}

TEST_F(BadInputTest, NonNumericTokensAreAUsageError) {
  for (const std::string& c :
       {"run -m " + Quoted(*model_) + " --tokens abc -n 4",
        "logits -m " + Quoted(*model_) + " --tokens abc --out " + Quoted(Path("abc.bin"))}) {
    EXPECT_TRUE(IsCleanError(Moex(c), c, Expect().Codes({2}).AnyOf({"--tokens", "abc"})));
  }
}

TEST_F(BadInputTest, NonNumericFlagValueIsAUsageError) {
  const std::string m = Quoted(*model_);
  const std::string out = Quoted(Path("xyz.bin"));
  for (const std::string& c :
       {"run -m " + m + " --tokens 1,2,3 -n xyz", "run -m " + m + " --tokens 1,2,3 -n 4 -t xyz",
        "run -m " + m + " --tokens 1,2,3 -n 4 -c xyz",
        "logits -m " + m + " --tokens 1,2,3 --out " + out + " -t xyz",
        "logits -m " + m + " --tokens 1,2,3 --out " + out + " -c xyz"}) {
    EXPECT_TRUE(IsCleanError(Moex(c), c, Expect().Codes({2}).AllOf({"xyz"})));
  }
}

TEST_F(BadInputTest, UnknownFlagIsAUsageError) {
  for (const std::string& c : {"run -m " + Quoted(*model_) + " --tokens 1,2,3 --bogus 1",
                               "logits -m " + Quoted(*model_) + " --tokens 1 --out x --bogus 1",
                               "inspect " + Quoted(*model_) + " --bogus"}) {
    EXPECT_TRUE(IsCleanError(Moex(c), c, Expect().Codes({2}).AllOf({"--bogus"})));
  }
}

TEST_F(BadInputTest, TokenOutsideTheVocabularyIsNamed) {
  for (const std::string& c :
       {"run -m " + Quoted(*model_) + " --tokens 1,999999 -n 4 --json",
        "logits -m " + Quoted(*model_) + " --tokens 1,999999 --out " + Quoted(Path("oov.bin"))}) {
    EXPECT_TRUE(IsCleanError(Moex(c), c, Expect().Codes({1}).AllOf({"999999"})));
  }
}

TEST_F(BadInputTest, ContextOverflowMentionsTheContext) {
  const std::string c = "run -m " + Quoted(*model_) + " -c 8 --tokens 1,2,3 -n 100 --ignore-eos";
  // Human mode streams text on stdout before the error: its stderr is the one line.
  EXPECT_TRUE(IsCleanError(MoexStderr(c), c, Expect().Codes({1}).AllOf({"context"})));
  // --json prints nothing on stdout when it fails.
  EXPECT_TRUE(IsCleanError(Moex(c + " --json"), c, Expect().Codes({1}).AllOf({"context"})));
}

}  // namespace
}  // namespace moex
