// Tokenizer throughput (bytes of text per second) on about 1 MiB of real English text and
// code: the tiny-moe validation files (KJV Bible, fortunes, Python documentation)
// concatenated and repeated. One benchmark per vocabulary of ../shared/testdata/vocab,
// encoding (parse_special on, as prompts are) and decoding.
//
//   build/release/bench/moex_tokenizer_bench
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "moex/tokenizer.h"

namespace moex {
namespace {

std::string TestData() {
  if (const char* env = std::getenv("MOEX_TESTDATA")) return env;
  return MOEX_TESTDATA_DIR;
}

const std::string& Corpus() {
  static const std::string text = [] {
    std::string one;
    for (const char* f : {"val-kjv.txt", "val-fortunes.txt", "val-python.txt"}) {
      std::ifstream in(TestData() + "/tiny-moe/" + f, std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      one += ss.str();
    }
    std::string all;
    while (!one.empty() && all.size() < (size_t{1} << 20)) all += one;
    return all;
  }();
  return text;
}

std::unique_ptr<Tokenizer> Open(const std::string& name) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Open(TestData() + "/vocab/" + name);
  return t.ok() ? std::move(*t) : nullptr;
}

void BM_Encode(benchmark::State& state, const std::string& name) {
  std::unique_ptr<Tokenizer> tok = Open(name);
  if (tok == nullptr || Corpus().empty()) {
    state.SkipWithError("no ../shared/testdata (vocab or tiny-moe)");
    return;
  }
  EncodeOptions o;
  o.parse_special = true;
  size_t n_tokens = 0;
  for (auto _ : state) {
    absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(Corpus(), o);
    n_tokens = ids.ok() ? ids->size() : 0;
    benchmark::DoNotOptimize(n_tokens);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * Corpus().size()));
  state.counters["tokens"] = static_cast<double>(n_tokens);
  state.counters["bytes/token"] = static_cast<double>(Corpus().size()) / n_tokens;
}

void BM_Decode(benchmark::State& state, const std::string& name) {
  std::unique_ptr<Tokenizer> tok = Open(name);
  if (tok == nullptr || Corpus().empty()) {
    state.SkipWithError("no ../shared/testdata (vocab or tiny-moe)");
    return;
  }
  const std::vector<int32_t> ids = *tok->Encode(Corpus(), {});
  for (auto _ : state) {
    Tokenizer::StreamDecoder dec = tok->NewStreamDecoder();
    size_t n = 0;
    for (int32_t id : ids) n += dec.Push(id).size();
    benchmark::DoNotOptimize(n);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * Corpus().size()));
}

#define MOEX_TOKENIZER_BENCH(label, file)                                                \
  BENCHMARK_CAPTURE(BM_Encode, label, std::string(file))->Unit(benchmark::kMillisecond); \
  BENCHMARK_CAPTURE(BM_Decode, label, std::string(file))->Unit(benchmark::kMillisecond)

MOEX_TOKENIZER_BENCH(llama_spm, "ggml-vocab-llama-spm.gguf");
MOEX_TOKENIZER_BENCH(tiny4k_spm, "vocab-tiny4k.gguf");
MOEX_TOKENIZER_BENCH(qwen2_bpe, "ggml-vocab-qwen2.gguf");
MOEX_TOKENIZER_BENCH(gpt2_bpe, "ggml-vocab-gpt-2.gguf");
MOEX_TOKENIZER_BENCH(deepseek_llm_bpe, "ggml-vocab-deepseek-llm.gguf");

}  // namespace
}  // namespace moex

BENCHMARK_MAIN();
