// Descriptions of model files: what `moex inspect` shows, and how to make synthetic
// models (`moex gen`). Thread-safe free functions.
#ifndef MOEX_INFO_H_
#define MOEX_INFO_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex {

struct ModelInfo {
  std::string path;
  std::string architecture;
  std::string name;
  int64_t n_vocab = 0;
  int64_t n_ctx_train = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  int64_t n_rot = 0;
  float rope_freq_base = 0;
  float rms_eps = 0;
  int64_t n_ff = 0;
  int64_t n_expert = 0;
  int64_t n_expert_used = 0;
  int64_t n_ff_exp = 0;
  int64_t n_ff_shexp = 0;
  int32_t bos_token = -1;     // -1: none
  std::string chat_template;  // tokenizer.chat_template (Jinja text), "" when absent
  int32_t eos_token = -1;
  bool add_bos = false;
  uint64_t file_bytes = 0;
  uint64_t expert_bytes = 0;        // one routed expert of layer 0 (gate + up + down), 0 if dense
  uint64_t expert_bytes_total = 0;  // all routed experts of all layers
};

struct TensorDescription {
  std::string name;
  std::string type;           // "q4_K", "f32", ...
  std::vector<int64_t> dims;  // ne[0] first
  uint64_t offset = 0;        // absolute offset in the file
  uint64_t bytes = 0;
};

struct FileDescription {
  std::string path;
  uint32_t version = 0;
  uint64_t file_bytes = 0;
  uint64_t alignment = 0;
  // Metadata as (key, value rendered as text); long arrays are summarised.
  std::vector<std::pair<std::string, std::string>> metadata;
  std::vector<TensorDescription> tensors;
  // Present when the architecture is supported and the weights bind.
  bool has_model_info = false;
  ModelInfo model;
  std::string model_error;  // why has_model_info is false
};

// Reads a GGUF file's header, metadata and tensor table (no tensor data).
absl::StatusOr<FileDescription> DescribeFile(const std::string& path);

// A model with random weights, for tests and benchmarks (the `moex gen` command).
struct SyntheticModelSpec {
  std::string arch = "qwen3moe";  // llama | qwen2moe | qwen3moe | olmoe
  // A ggml type name (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K) or
  // a mix (q4_k_m, q5_k_m) as llama.cpp's quantiser defines it.
  std::string type = "q4_k_m";
  int64_t hidden = 256;
  int64_t layers = 4;
  int64_t heads = 8;
  int64_t kv_heads = 4;
  int64_t head_dim = 0;  // 0: hidden / heads
  int64_t experts = 8;   // 0: dense (llama only)
  int64_t top_k = 2;
  int64_t ffn = 512;       // expert FFN width (dense FFN width when experts == 0)
  int64_t shared_ffn = 0;  // qwen2moe shared expert width (0: hidden * 2 for qwen2moe)
  int64_t vocab_size = 0;  // 0: the vocab file's size, or 4096
  int64_t context = 4096;
  std::string vocab_path;  // GGUF whose tokenizer.* keys are copied; "" = a byte vocab
  uint64_t seed = 1;
};

// Writes a synthetic model; reports progress (0..1) through `progress` when set.
absl::Status WriteSyntheticModel(const SyntheticModelSpec& spec, const std::string& out_path,
                                 const std::function<void(double)>& progress = {});

}  // namespace moex

#endif  // MOEX_INFO_H_
