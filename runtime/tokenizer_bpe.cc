// Byte-level BPE, as llama.cpp's llm_tokenizer_bpe_session does it (src/llama-vocab.cpp):
// each byte of a word is one symbol (its character in GPT-2's alphabet), and the adjacent
// pair with the lowest merge rank (ties: the leftmost) is joined until no pair has a rank.
// llama.cpp compares strings; here every string that takes part in a merge is given an
// id once, at load time (vocabulary ids, and ids past the vocabulary for the rare joined
// piece that is not a token), so the loop compares integers.
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/tokenizer.h"
#include "runtime/utf8.h"

namespace moex {

absl::StatusOr<BpeModel> BpeModel::Load(const GgufFile& f, const Vocab& vocab) {
  BpeModel m;
  m.vocab_ = &vocab;
  m.n_vocab_ = static_cast<int32_t>(vocab.size());
  if (f.Find("tokenizer.ggml.merges") == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(f.path(), ": tokenizer.ggml.merges is missing (a gpt2 tokenizer needs it)"));
  }
  MOEX_ASSIGN_OR_RETURN(const GgufValue* merges, f.GetArray("tokenizer.ggml.merges"));
  if (merges->elem_type() != GgufType::kString) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": tokenizer.ggml.merges is not an array of strings"));
  }

  // Strings of merges that are not tokens get ids from n_vocab on.
  absl::flat_hash_map<std::string, int32_t> extra;
  auto intern = [&](std::string_view s) -> int32_t {
    const int32_t id = vocab.Find(s);
    if (id >= 0) return id;
    auto [it, inserted] =
        extra.emplace(std::string(s), m.n_vocab_ + static_cast<int32_t>(extra.size()));
    return it->second;
  };
  const auto& list = merges->elems();
  if (list.size() >= (size_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": tokenizer.ggml.merges has ", list.size(), " entries"));
  }
  m.merges_.reserve(list.size());
  for (size_t rank = 0; rank < list.size(); ++rank) {
    const std::string_view line = list[rank].AsString();
    // "left right"; the split is the first space after the first byte, as in llama.cpp
    // (a piece never holds a space: GPT-2's alphabet shows it as "Ġ").
    const size_t sp = line.find(' ', 1);
    if (sp == std::string_view::npos) continue;
    const std::string_view left = line.substr(0, sp), right = line.substr(sp + 1);
    const int32_t l = intern(left), r = intern(right);
    const int32_t joined = intern(absl::StrCat(std::string(left), std::string(right)));
    // The first (lowest) rank of a pair wins, as with llama.cpp's map emplace.
    m.merges_.emplace(Key(l, r), Merge{static_cast<int32_t>(rank), joined});
  }

  for (int b = 0; b < 256; ++b) {
    std::string c;
    utf8::Append(Gpt2CodePointOfByte(static_cast<uint8_t>(b)), &c);
    int32_t id = vocab.Find(c);
    if (id < 0) {
      auto it = extra.find(c);
      if (it != extra.end()) id = it->second;
    }
    m.byte_id_[b] = id;
    // A piece outside the vocabulary is spelled byte by byte of its text, each byte as a
    // one-byte token (llama.cpp's fallback; only printable ASCII normally has one).
    for (char ch : c) {
      const int32_t t = vocab.Find(std::string_view(&ch, 1));
      if (t >= 0) m.fallback_[b].push_back(t);
    }
    m.byte_char_[b] = std::move(c);
  }
  return m;
}

namespace {

struct Symbol {
  int32_t id;      // current piece (-1: a byte no merge knows)
  uint32_t start;  // byte offset in the word
  uint32_t n;      // bytes; 0 once merged into its left neighbour
  int32_t prev, next;
};

struct Bigram {
  int32_t rank;
  int32_t left, right;
  int32_t left_id, right_id, merged;
};

struct BigramOrder {  // lowest rank on top, then leftmost
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

}  // namespace

void BpeModel::EncodeWord(std::string_view word, bool ignore_merges,
                          std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    std::string encoded;
    for (char c : word) encoded += byte_char_[static_cast<uint8_t>(c)];
    const int32_t id = vocab_->Find(encoded);
    if (id >= 0) {
      out->push_back(id);
      return;
    }
  }
  if (word.size() == 1) {  // the common one-byte word needs no merging
    const int32_t id = byte_id_[static_cast<uint8_t>(word[0])];
    if (id >= 0 && id < n_vocab_) {
      out->push_back(id);
    } else {
      const auto& fb = fallback_[static_cast<uint8_t>(word[0])];
      out->insert(out->end(), fb.begin(), fb.end());
    }
    return;
  }

  thread_local std::vector<Symbol> sym;
  thread_local std::vector<Bigram> heap;
  sym.clear();
  heap.clear();
  const auto n = static_cast<int32_t>(word.size());
  for (int32_t i = 0; i < n; ++i) {
    sym.push_back({byte_id_[static_cast<uint8_t>(word[i])], static_cast<uint32_t>(i), 1, i - 1,
                   i + 1 == n ? -1 : i + 1});
  }
  const BigramOrder order;
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const int32_t l = sym[left].id, r = sym[right].id;
    if (l < 0 || r < 0) return;
    auto it = merges_.find(Key(l, r));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, left, right, l, r, it->second.merged});
    std::push_heap(heap.begin(), heap.end(), order);
  };
  for (int32_t i = 1; i < n; ++i) try_add(i - 1, i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), order);
    const Bigram b = heap.back();
    heap.pop_back();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    // Stale: either side changed since the pair was queued (llama.cpp compares the
    // strings; a piece's id names its string).
    if (l.n == 0 || r.n == 0 || l.id != b.left_id || r.id != b.right_id) continue;
    l.id = b.merged;
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }

  for (int32_t i = 0; i != -1; i = sym[i].next) {
    const Symbol& s = sym[i];
    if (s.id >= 0 && s.id < n_vocab_) {
      out->push_back(s.id);
      continue;
    }
    for (uint32_t k = s.start; k < s.start + s.n; ++k) {
      const auto& fb = fallback_[static_cast<uint8_t>(word[k])];
      out->insert(out->end(), fb.begin(), fb.end());
    }
  }
}

}  // namespace moex
