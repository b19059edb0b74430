// The public Tokenizer (include/moex/tokenizer.h): loading, the special-token pass,
// dispatch to the SentencePiece or byte-level BPE encoder, decoding and streaming.
#include "runtime/tokenizer.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/utf8.h"

namespace moex {

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const GgufFile& file) {
  auto impl = std::make_unique<Tokenizer::Impl>();
  MOEX_ASSIGN_OR_RETURN(impl->vocab, Vocab::Load(file));
  if (impl->vocab.kind() == Vocab::Kind::kNone) return std::unique_ptr<Tokenizer>();
  if (impl->vocab.kind() == Vocab::Kind::kBpe) {
    MOEX_ASSIGN_OR_RETURN(BpeModel bpe, BpeModel::Load(file, impl->vocab));
    impl->bpe.emplace(std::move(bpe));
    absl::StatusOr<PreTokenizer> pre = PreTokenizer::Create(impl->vocab.pre());
    if (!pre.ok()) {
      return absl::InternalError(absl::StrCat(file.path(), ": tokenizer.ggml.pre '",
                                              std::string(impl->vocab.pre()),
                                              "': ", pre.status().message()));
    }
    impl->pre.emplace(std::move(*pre));
  }
  impl->BuildSpecials();
  return std::make_unique<Tokenizer>(std::move(impl));
}

void Tokenizer::Impl::BuildSpecials() {
  const auto n = static_cast<int32_t>(vocab.size());
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < n; ++id) {
    if (vocab.IsSpecial(id)) ids.push_back(id);
  }
  // llama.cpp tries the longest special tokens first (its sort leaves the order of equal
  // lengths unspecified; here it is by id).
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return vocab.piece(a).size() > vocab.piece(b).size();
  });
  special_rank.assign(n, -1);
  trie.assign(1, TrieNode());
  for (size_t r = 0; r < ids.size(); ++r) {
    const int32_t id = ids[r];
    special_rank[id] = static_cast<int32_t>(r);
    const std::string_view p = vocab.piece(id);
    const auto first = static_cast<uint8_t>(p[0]);
    first_any[first] = true;
    if (vocab.type(id) == Vocab::kUserDefined) {
      first_user[first] = true;
      has_user = true;
    }
    int32_t node = 0;
    for (char c : p) {
      const auto b = static_cast<uint8_t>(c);
      int32_t next = -1;
      for (const auto& [kb, kn] : trie[node].kids) {
        if (kb == b) next = kn;
      }
      if (next < 0) {
        next = static_cast<int32_t>(trie.size());
        trie[node].kids.emplace_back(b, next);
        trie.emplace_back();
      }
      node = next;
    }
    if (trie[node].token < 0) trie[node].token = id;
  }
}

void Tokenizer::Impl::Partition(std::string_view text, bool parse_special,
                                std::vector<Fragment>* out) const {
  out->clear();
  if (text.empty()) return;
  const bool* first = parse_special ? first_any : first_user;
  struct Hit {
    int32_t rank;
    uint32_t pos, len;
    int32_t token;
  };
  std::vector<Hit> hits;
  if (parse_special || has_user) {
    for (size_t pos = 0; pos < text.size(); ++pos) {
      if (!first[static_cast<uint8_t>(text[pos])]) continue;
      int32_t node = 0;
      for (size_t k = pos; k < text.size(); ++k) {
        const auto b = static_cast<uint8_t>(text[k]);
        int32_t next = -1;
        for (const auto& [kb, kn] : trie[node].kids) {
          if (kb == b) next = kn;
        }
        if (next < 0) break;
        node = next;
        const int32_t tok = trie[node].token;
        if (tok >= 0 && (parse_special || vocab.type(tok) == Vocab::kUserDefined)) {
          hits.push_back({special_rank[tok], static_cast<uint32_t>(pos),
                          static_cast<uint32_t>(k + 1 - pos), tok});
        }
      }
    }
  }
  if (hits.empty()) {
    out->push_back({text, -1});
    return;
  }
  // llama.cpp's pass takes the special tokens one by one, longest first, and splits each
  // remaining stretch of text at the token's occurrences, left to right. Equivalently: an
  // occurrence is kept when it overlaps none kept before it in (rank, position) order.
  std::sort(hits.begin(), hits.end(), [](const Hit& a, const Hit& b) {
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
  });
  std::set<std::pair<uint32_t, uint32_t>> kept;  // (start, end)
  std::vector<Hit> accepted;
  for (const Hit& h : hits) {
    const uint32_t end = h.pos + h.len;
    auto it = kept.lower_bound({h.pos, 0});
    if (it != kept.end() && it->first < end) continue;
    if (it != kept.begin() && std::prev(it)->second > h.pos) continue;
    kept.insert({h.pos, end});
    accepted.push_back(h);
  }
  std::sort(accepted.begin(), accepted.end(),
            [](const Hit& a, const Hit& b) { return a.pos < b.pos; });
  size_t at = 0;
  for (const Hit& h : accepted) {
    if (h.pos > at) out->push_back({text.substr(at, h.pos - at), -1});
    out->push_back({{}, h.token});
    at = h.pos + h.len;
  }
  if (at < text.size()) out->push_back({text.substr(at), -1});
}

void Tokenizer::Impl::DecodeTo(std::span<const int32_t> ids, bool render_special,
                               bool strip_prefix_space, std::string* out) const {
  // SentencePiece: Encode puts a space before the text and after every special token
  // (llama.cpp: add_space_prefix && is_prev_special); take that one space away again.
  bool after_special =
      strip_prefix_space && vocab.add_space_prefix() && vocab.kind() == Vocab::Kind::kSpm;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab.size()) continue;
    std::string_view t = vocab.Text(id, render_special);
    if (vocab.IsSpecial(id)) {
      after_special =
          strip_prefix_space && vocab.add_space_prefix() && vocab.kind() == Vocab::Kind::kSpm;
      out->append(t);
      continue;
    }
    if (after_special && !t.empty() && t[0] == ' ') t.remove_prefix(1);
    if (!t.empty() || vocab.type(id) == Vocab::kNormal) after_special = false;
    out->append(t);
  }
}

// ---- Tokenizer ------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Open(const std::string& gguf_path) {
  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(gguf_path));
  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, LoadTokenizer(*file));
  if (tok == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(gguf_path, ": no tokenizer (the key tokenizer.ggml.model is missing)"));
  }
  return tok;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       const EncodeOptions& options) const {
  if (text.size() >= (size_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("text of ", text.size(), " bytes is beyond the tokenizer's 2 GiB limit"));
  }
  const Impl& m = *impl_;
  const Vocab& v = m.vocab;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (options.add_bos && v.add_bos()) out.push_back(v.bos());
  std::vector<Impl::Fragment> frags;
  m.Partition(text, options.parse_special, &frags);

  if (v.kind() == Vocab::Kind::kSpm) {
    bool prev_special = true;  // the text's start counts as "after a special token"
    std::string norm;
    for (const Impl::Fragment& f : frags) {
      if (f.token >= 0) {
        out.push_back(f.token);
        prev_special = true;
        continue;
      }
      norm.clear();
      if (v.add_space_prefix() && prev_special) norm += "\xE2\x96\x81";
      for (char c : f.text) {
        if (c == ' ') {
          norm += "\xE2\x96\x81";  // "▁"
        } else {
          norm.push_back(c);
        }
      }
      SpmEncode(v, norm, &out);
      prev_special = false;
    }
    return out;
  }

  std::vector<std::string_view> words;
  std::string clean;
  for (const Impl::Fragment& f : frags) {
    if (f.token >= 0) {
      out.push_back(f.token);
      continue;
    }
    std::string_view t = f.text;
    if (!utf8::IsValid(t)) {  // PCRE2 in UTF mode needs well-formed input
      clean = utf8::Sanitize(t);
      t = clean;
    }
    words.clear();
    MOEX_RETURN_IF_ERROR(m.pre->Split(t, &words));
    for (std::string_view w : words) m.bpe->EncodeWord(w, m.pre->ignore_merges(), &out);
  }
  return out;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool render_special) const {
  std::string out;
  impl_->DecodeTo(ids, render_special, /*strip_prefix_space=*/true, &out);
  return out;
}

std::string Tokenizer::StreamDecoder::Push(int32_t id) {
  pending_.append(tokenizer_->impl().vocab.Text(id, render_special_));
  std::string out;
  size_t i = 0, len;
  uint32_t cp;
  while (i < pending_.size()) {
    const utf8::Seq s = utf8::Decode(pending_, i, &len, &cp);
    if (s == utf8::Seq::kIncomplete) break;  // wait for the rest of the character
    if (s == utf8::Seq::kValid) {
      out.append(pending_, i, len);
    } else {
      out.append(utf8::kReplacement);
    }
    i += len;
  }
  pending_.erase(0, i);
  return out;
}

std::string Tokenizer::StreamDecoder::Flush() {
  std::string out = pending_.empty() ? "" : std::string(utf8::kReplacement);
  pending_.clear();
  return out;
}

int32_t Tokenizer::n_vocab() const { return static_cast<int32_t>(impl_->vocab.size()); }
int32_t Tokenizer::bos() const { return impl_->vocab.bos(); }
int32_t Tokenizer::eos() const { return impl_->vocab.eos(); }
int32_t Tokenizer::eot() const { return impl_->vocab.eot(); }
bool Tokenizer::add_bos() const { return impl_->vocab.add_bos(); }

std::string_view Tokenizer::Piece(int32_t id) const {
  return id >= 0 && id < n_vocab() ? impl_->vocab.piece(id) : std::string_view();
}

bool Tokenizer::IsControl(int32_t id) const {
  return id >= 0 && id < n_vocab() && impl_->vocab.type(id) == Vocab::kControl;
}

int32_t Tokenizer::TokenId(std::string_view piece) const { return impl_->vocab.Find(piece); }

std::string Tokenizer::kind() const {
  return impl_->vocab.kind() == Vocab::Kind::kSpm ? "spm" : "bpe";
}

std::string Tokenizer::pre() const { return impl_->pre ? impl_->pre->name() : ""; }

bool Tokenizer::pre_known() const { return !impl_->pre || impl_->pre->known(); }

}  // namespace moex
