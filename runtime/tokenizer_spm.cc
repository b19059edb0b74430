// SentencePiece-style BPE, as llama.cpp's llm_tokenizer_spm_session does it
// (src/llama-vocab.cpp): split the normalised text into UTF-8 characters, then keep
// merging the adjacent pair whose concatenation is a token with the highest score (ties:
// the leftmost pair), and finally spell whatever is not a token as byte tokens.
#include <algorithm>
#include <cstdint>
#include <string_view>
#include <vector>

#include "runtime/tokenizer.h"
#include "runtime/utf8.h"

namespace moex {
namespace {

struct Symbol {
  uint32_t start;  // byte offset in the text
  uint32_t n;      // bytes; 0 once merged into its left neighbour
  int32_t prev, next;
};

struct Bigram {
  float score;
  int32_t left, right;
  uint32_t size;  // bytes of the pair when it was queued
};

struct BigramOrder {  // the best bigram on top: highest score, then leftmost
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

namespace {

// Merges the characters starting at starts[0..n) (the last one ends at `end`).
void EncodeRun(const Vocab& vocab, std::string_view text, const uint32_t* starts, size_t n,
               size_t end, std::vector<int32_t>* out) {
  thread_local std::vector<Symbol> sym;
  thread_local std::vector<Bigram> heap;
  sym.clear();
  heap.clear();
  for (size_t k = 0; k < n; ++k) {
    const uint32_t next_start = k + 1 < n ? starts[k + 1] : static_cast<uint32_t>(end);
    const auto i = static_cast<int32_t>(k);
    sym.push_back({starts[k], next_start - starts[k], i - 1, k + 1 == n ? -1 : i + 1});
  }
  const BigramOrder order;
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint32_t size = sym[left].n + sym[right].n;
    const int32_t id = vocab.Find(text.substr(sym[left].start, size));
    if (id < 0) return;
    heap.push_back({vocab.score(id), left, right, size});
    std::push_heap(heap.begin(), heap.end(), order);
  };
  for (int32_t i = 1; i < static_cast<int32_t>(sym.size()); ++i) try_add(i - 1, i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), order);
    const Bigram b = heap.back();
    heap.pop_back();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    // Stale: one side was merged away, or grew, since this pair was queued.
    if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }

  for (int32_t i = sym.empty() ? -1 : 0; i != -1; i = sym[i].next) {
    const std::string_view piece = text.substr(sym[i].start, sym[i].n);
    const int32_t id = vocab.Find(piece);
    if (id >= 0) {
      out->push_back(id);
      continue;
    }
    // Only single characters can be missing (every merge made a token): spell the bytes.
    for (char c : piece) {
      const int32_t byte = vocab.ByteToken(static_cast<uint8_t>(c));
      if (byte >= 0) {
        out->push_back(byte);
      } else if (vocab.unk() >= 0) {
        out->push_back(vocab.unk());
      }
    }
  }
}

constexpr std::string_view kSpace = "\xE2\x96\x81";  // "▁"

}  // namespace

void SpmEncode(const Vocab& vocab, std::string_view text, std::vector<int32_t>* out) {
  // The characters, as llama.cpp splits them (by the lead byte's announced length).
  thread_local std::vector<uint32_t> starts;
  starts.clear();
  for (size_t off = 0; off < text.size();) {
    starts.push_back(static_cast<uint32_t>(off));
    off += std::min(utf8::LeadLength(text[off]), text.size() - off);
  }
  // One priority queue over a whole long text is slow (cache misses). When no token has
  // a "▁" after anything but "▁" (true of Llama's vocabulary), no merge can cross the
  // start of a word, so the words are merged one by one: the same merges, in the same
  // relative order, hence the same ids.
  if (!vocab.spm_words_independent()) {
    EncodeRun(vocab, text, starts.data(), starts.size(), text.size(), out);
    return;
  }
  auto is_space = [&](size_t k) {
    const uint32_t e = k + 1 < starts.size() ? starts[k + 1] : static_cast<uint32_t>(text.size());
    return e - starts[k] == 3 && text.substr(starts[k], 3) == kSpace;
  };
  size_t first = 0;
  bool prev_space = false;
  for (size_t k = 0; k < starts.size(); ++k) {
    const bool space = is_space(k);
    if (space && !prev_space && k > first) {
      EncodeRun(vocab, text, starts.data() + first, k - first, starts[k], out);
      first = k;
    }
    prev_space = space;
  }
  if (first < starts.size()) {
    EncodeRun(vocab, text, starts.data() + first, starts.size() - first, text.size(), out);
  }
}

}  // namespace moex
