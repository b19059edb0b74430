// SentencePiece-style BPE, as llama.cpp's llm_tokenizer_spm_session does it
// (src/llama-vocab.cpp): split the normalised text into UTF-8 characters, then keep
// merging the adjacent pair whose concatenation is a token with the highest score (ties:
// the leftmost pair), and finally spell whatever is not a token as byte tokens.
#include <cstdint>
#include <queue>
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

void SpmEncode(const Vocab& vocab, std::string_view text, std::vector<int32_t>* out) {
  std::vector<Symbol> sym;
  sym.reserve(text.size());
  for (size_t off = 0; off < text.size();) {
    const size_t n = std::min(utf8::LeadLength(text[off]), text.size() - off);
    const auto i = static_cast<int32_t>(sym.size());
    sym.push_back({static_cast<uint32_t>(off), static_cast<uint32_t>(n), i - 1,
                   off + n == text.size() ? -1 : i + 1});
    off += n;
  }

  std::vector<Bigram> storage;
  storage.reserve(sym.size());
  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue(BigramOrder(),
                                                                       std::move(storage));
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint32_t size = sym[left].n + sym[right].n;
    const int32_t id = vocab.Find(text.substr(sym[left].start, size));
    if (id < 0) return;
    queue.push({vocab.score(id), left, right, size});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(sym.size()); ++i) try_add(i - 1, i);

  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
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

}  // namespace moex
