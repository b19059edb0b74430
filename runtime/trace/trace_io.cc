// Trace files (docs/TRACE_FORMAT.md), and imports of other engines' traces (CSV, the
// Mixtral JSON-lines dumps).
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "moex/trace.h"
#include "runtime/core/status_macros.h"

namespace moex {
namespace {

constexpr char kMagic[8] = {'M', 'O', 'E', 'X', 'T', 'R', 'C', '\0'};
// Version 2 adds the predictions section; a file without predictions is still written as
// version 1, so readers that predate version 2 keep reading every trace they could before.
constexpr uint32_t kVersion = 1, kVersionPredictions = 2;
constexpr uint32_t kFlagWeights = 1, kFlagProbs = 2, kFlagPredictions = 4;
// Limits that keep a corrupt header from asking for absurd allocations.
constexpr uint32_t kMaxExperts = 65535, kMaxTopK = 1024, kMaxLayers = 4096;
constexpr uint32_t kMaxName = 1 << 16;
constexpr uint32_t kMaxPredictors = 64, kMaxPredictorName = 256;

bool SmallIds(int32_t num_experts) { return num_experts <= 256; }

// Guesses per token in the file: every predictor, distance d and layer l >= d.
uint64_t GuessesPerToken(const TraceHeader& h) {
  uint64_t n = 0;
  for (int d = 1; d <= h.predict_distance; ++d) n += h.num_layers - d;
  return n * h.predictors.size();
}

// Empty when the prediction fields of a header are consistent.
std::string BadPredictionShape(const TraceHeader& h) {
  if (h.predictors.empty()) {
    return h.predict_distance == 0 && h.predict_size == 0
               ? ""
               : "a predict distance or size without predictors";
  }
  if (h.predictors.size() > kMaxPredictors) {
    return absl::StrCat(h.predictors.size(), " predictors (at most ", kMaxPredictors, ")");
  }
  for (const std::string& name : h.predictors) {
    if (name.empty() || name.size() > kMaxPredictorName) return "a predictor name's length";
  }
  if (h.predict_distance < 1 || h.predict_distance >= h.num_layers) {
    return absl::StrCat("predict distance ", h.predict_distance, " outside 1..", h.num_layers - 1);
  }
  if (h.predict_size < 0 || h.predict_size > h.num_experts) {
    return absl::StrCat("guess size ", h.predict_size, " of ", h.num_experts, " experts");
  }
  return "";
}

void PutU32(std::string* out, uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);  // the format is little-endian, as every host moex runs on
  out->append(b, 4);
}

}  // namespace

// ---- writer -----------------------------------------------------------------------------

struct TraceWriter::Impl {
  std::string path;
  TraceHeader h;
  std::FILE* f = nullptr;
  bool open_seq = false;
  bool failed = false;
  std::string seq_name;
  // Cells of the open sequence, [token][layer]; `filled` says which were added.
  std::vector<int32_t> experts;
  std::vector<float> weights, probs;
  std::vector<uint8_t> filled;
  // Guesses of the open sequence, laid out as Trace::predictions; `guessed` per guess.
  std::vector<int32_t> preds;
  std::vector<uint8_t> guessed;
  size_t PredCell(int64_t token, int p, int d, int l) const {
    return ((static_cast<size_t>(token) * h.predictors.size() + p) * h.predict_distance + d - 1) *
               h.num_layers +
           l;
  }

  absl::Status Write(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f) != n) {
      failed = true;
      return absl::InternalError(absl::StrCat(path, ": write failed: ", std::strerror(errno)));
    }
    return absl::OkStatus();
  }
};

TraceWriter::TraceWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TraceWriter::~TraceWriter() {
  if (impl_->f) std::fclose(impl_->f);
}

absl::StatusOr<std::unique_ptr<TraceWriter>> TraceWriter::Create(const std::string& path,
                                                                 const TraceHeader& header) {
  if (header.num_experts < 1 || header.num_experts > static_cast<int32_t>(kMaxExperts) ||
      header.top_k < 1 || header.top_k > header.num_experts || header.num_layers < 1 ||
      header.num_layers > static_cast<int32_t>(kMaxLayers) || header.model.size() > kMaxName) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad trace shape: ", header.num_experts,
                                                   " experts, top-", header.top_k, ", ",
                                                   header.num_layers, " layers"));
  }
  if (const std::string bad = BadPredictionShape(header); !bad.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad predictions: ", bad));
  }
  const bool preds = !header.predictors.empty();
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->h = header;
  impl->f = std::fopen(path.c_str(), "wb");
  if (!impl->f) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot create: ", std::strerror(errno)));
  }
  std::string hdr(kMagic, 8);
  PutU32(&hdr, preds ? kVersionPredictions : kVersion);
  PutU32(&hdr, (header.has_weights ? kFlagWeights : 0) | (header.has_probs ? kFlagProbs : 0) |
                   (preds ? kFlagPredictions : 0));
  PutU32(&hdr, header.num_experts);
  PutU32(&hdr, header.top_k);
  PutU32(&hdr, header.num_layers);
  PutU32(&hdr, header.model.size());
  hdr += header.model;
  if (preds) {
    PutU32(&hdr, header.predictors.size());
    PutU32(&hdr, header.predict_distance);
    PutU32(&hdr, header.guess_size());
    for (const std::string& name : header.predictors) {
      PutU32(&hdr, name.size());
      hdr += name;
    }
  }
  MOEX_RETURN_IF_ERROR(impl->Write(hdr.data(), hdr.size()));
  return std::unique_ptr<TraceWriter>(new TraceWriter(std::move(impl)));
}

absl::Status TraceWriter::BeginSequence(const std::string& name) {
  Impl& w = *impl_;
  if (w.open_seq) return absl::FailedPreconditionError("trace: a sequence is already open");
  if (name.size() > kMaxName) return absl::InvalidArgumentError("trace: sequence name too long");
  w.open_seq = true;
  w.seq_name = name;
  w.experts.clear();
  w.weights.clear();
  w.probs.clear();
  w.filled.clear();
  w.preds.clear();
  w.guessed.clear();
  return absl::OkStatus();
}

absl::Status TraceWriter::Add(int64_t token, int32_t layer, const int32_t* experts,
                              const float* weights, const float* probs) {
  Impl& w = *impl_;
  const TraceHeader& h = w.h;
  if (!w.open_seq) return absl::FailedPreconditionError("trace: Add outside a sequence");
  if (token < 0 || token >= (int64_t{1} << 31) || layer < 0 || layer >= h.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("trace: token ", token, " layer ", layer, " out of range"));
  }
  const size_t cells = static_cast<size_t>(token + 1) * h.num_layers;
  if (w.filled.size() < cells) {
    w.filled.resize(cells, 0);
    w.experts.resize(cells * h.top_k, 0);
    if (h.has_weights) w.weights.resize(cells * h.top_k, 0.0f);
    if (h.has_probs) w.probs.resize(cells * h.num_experts, 0.0f);
  }
  const size_t cell = static_cast<size_t>(token) * h.num_layers + layer;
  for (int j = 0; j < h.top_k; ++j) {
    if (experts[j] < 0 || experts[j] >= h.num_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("trace: expert id ", experts[j], " outside 0..", h.num_experts - 1));
    }
    for (int i = 0; i < j; ++i) {
      if (experts[i] == experts[j]) {
        return absl::InvalidArgumentError(
            absl::StrCat("trace: expert id ", experts[j], " twice in one token's top-k"));
      }
    }
    w.experts[cell * h.top_k + j] = experts[j];
    if (h.has_weights) w.weights[cell * h.top_k + j] = weights ? weights[j] : 0.0f;
  }
  if (h.has_probs && probs) {
    std::copy(probs, probs + h.num_experts, w.probs.begin() + cell * h.num_experts);
  }
  w.filled[cell] = 1;
  return absl::OkStatus();
}

absl::Status TraceWriter::AddPrediction(int64_t token, int32_t layer, int32_t predictor,
                                        int32_t distance, const int32_t* experts) {
  Impl& w = *impl_;
  const TraceHeader& h = w.h;
  if (!w.open_seq) return absl::FailedPreconditionError("trace: AddPrediction outside a sequence");
  if (predictor < 0 || predictor >= static_cast<int32_t>(h.predictors.size()) || distance < 1 ||
      distance > h.predict_distance || layer < distance || layer >= h.num_layers || token < 0 ||
      token >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(absl::StrCat("trace: prediction ", predictor, " distance ",
                                                   distance, " of token ", token, " layer ", layer,
                                                   " out of range"));
  }
  const int G = h.guess_size();
  const size_t cells = w.PredCell(token + 1, 0, 1, 0);
  if (w.guessed.size() < cells) {
    w.guessed.resize(cells, 0);
    w.preds.resize(cells * G, kNoGuess);
  }
  const size_t cell = w.PredCell(token, predictor, distance, layer);
  for (int j = 0; j < G; ++j) {
    if (experts[j] < 0 || experts[j] >= h.num_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("trace: guessed expert id ", experts[j], " outside 0..", h.num_experts - 1));
    }
    for (int i = 0; i < j; ++i) {
      if (experts[i] == experts[j]) {
        return absl::InvalidArgumentError(
            absl::StrCat("trace: guessed expert id ", experts[j], " twice in one guess"));
      }
    }
    w.preds[cell * G + j] = experts[j];
  }
  w.guessed[cell] = 1;
  return absl::OkStatus();
}

absl::Status TraceWriter::EndSequence() {
  Impl& w = *impl_;
  const TraceHeader& h = w.h;
  if (!w.open_seq) return absl::FailedPreconditionError("trace: no open sequence");
  w.open_seq = false;
  for (size_t c = 0; c < w.filled.size(); ++c) {
    if (!w.filled[c]) {
      return absl::FailedPreconditionError(
          absl::StrCat("trace: sequence '", w.seq_name, "' token ", c / h.num_layers,
                       " has no routing for layer ", c % h.num_layers));
    }
  }
  const uint32_t n_tokens = w.filled.size() / h.num_layers;
  const int P = static_cast<int>(h.predictors.size()), D = h.predict_distance, G = h.guess_size();
  if (P > 0) {
    if (w.guessed.size() > w.PredCell(n_tokens, 0, 1, 0)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "trace: sequence '", w.seq_name, "' has guesses for tokens it has no routing for"));
    }
    w.guessed.resize(w.PredCell(n_tokens, 0, 1, 0), 0);
    w.preds.resize(w.guessed.size() * G, kNoGuess);
    for (uint32_t t = 0; t < n_tokens; ++t) {
      for (int p = 0; p < P; ++p) {
        for (int d = 1; d <= D; ++d) {
          for (int l = d; l < h.num_layers; ++l) {
            if (!w.guessed[w.PredCell(t, p, d, l)]) {
              return absl::FailedPreconditionError(
                  absl::StrCat("trace: sequence '", w.seq_name, "' token ", t, " has no ",
                               h.predictors[p], " guess for layer ", l, " at distance ", d));
            }
          }
        }
      }
    }
  }
  std::string rec;
  PutU32(&rec, w.seq_name.size());
  rec += w.seq_name;
  PutU32(&rec, n_tokens);
  MOEX_RETURN_IF_ERROR(w.Write(rec.data(), rec.size()));
  if (SmallIds(h.num_experts)) {
    std::vector<uint8_t> ids(w.experts.begin(), w.experts.end());
    MOEX_RETURN_IF_ERROR(w.Write(ids.data(), ids.size()));
  } else {
    std::vector<uint16_t> ids(w.experts.begin(), w.experts.end());
    MOEX_RETURN_IF_ERROR(w.Write(ids.data(), ids.size() * 2));
  }
  if (h.has_weights) MOEX_RETURN_IF_ERROR(w.Write(w.weights.data(), w.weights.size() * 4));
  if (h.has_probs) MOEX_RETURN_IF_ERROR(w.Write(w.probs.data(), w.probs.size() * 4));
  if (P > 0) {
    // Token-major, then predictor, distance, layer d..L-1: the guesses that exist.
    std::vector<int32_t> ids;
    ids.reserve(GuessesPerToken(h) * n_tokens * G);
    for (uint32_t t = 0; t < n_tokens; ++t) {
      for (int p = 0; p < P; ++p) {
        for (int d = 1; d <= D; ++d) {
          const size_t first = w.PredCell(t, p, d, d) * G;
          ids.insert(ids.end(), w.preds.begin() + first,
                     w.preds.begin() + first + static_cast<size_t>(h.num_layers - d) * G);
        }
      }
    }
    if (SmallIds(h.num_experts)) {
      std::vector<uint8_t> b(ids.begin(), ids.end());
      MOEX_RETURN_IF_ERROR(w.Write(b.data(), b.size()));
    } else {
      std::vector<uint16_t> b(ids.begin(), ids.end());
      MOEX_RETURN_IF_ERROR(w.Write(b.data(), b.size() * 2));
    }
  }
  return absl::OkStatus();
}

absl::Status TraceWriter::Close() {
  Impl& w = *impl_;
  if (!w.f) return absl::FailedPreconditionError("trace: already closed");
  const bool open = w.open_seq;
  const bool bad = std::fclose(w.f) != 0 || w.failed;
  w.f = nullptr;
  if (open) return absl::FailedPreconditionError("trace: closed with a sequence open");
  if (bad) return absl::InternalError(absl::StrCat(w.path, ": write failed"));
  return absl::OkStatus();
}

// ---- reader -----------------------------------------------------------------------------

namespace {

// Reads the whole file; traces are analysed in memory anyway.
absl::StatusOr<std::string> Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  const std::streamoff size = in.tellg();
  if (size < 0) {  // not seekable (a pipe): read it as a stream
    in.clear();
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return data;
  }
  // One read into a buffer of the file's size (a character iterator took 0.3 s of the 3.7
  // s a 384 MB trace took to read).
  std::string data(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (size > 0 && !in.read(data.data(), size)) {
    return absl::DataLossError(
        absl::StrCat(path, ": read failed after ", in.gcount(), " of ", size, " bytes"));
  }
  return data;
}

class Cursor {
 public:
  Cursor(const std::string& path, const std::string& data) : path_(path), data_(data) {}
  size_t pos() const { return pos_; }
  bool done() const { return pos_ == data_.size(); }
  absl::Status Need(uint64_t n, std::string_view what) const {
    if (n > data_.size() - pos_) {
      return absl::DataLossError(
          absl::StrCat(path_, ": truncated at byte ", pos_, " (", std::string(what), ")"));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<uint32_t> U32(std::string_view what) {
    MOEX_RETURN_IF_ERROR(Need(4, what));
    uint32_t v;
    std::memcpy(&v, data_.data() + pos_, 4);
    pos_ += 4;
    return v;
  }
  const char* Take(size_t n) {
    const char* p = data_.data() + pos_;
    pos_ += n;
    return p;
  }

 private:
  const std::string& path_;
  const std::string& data_;
  size_t pos_ = 0;
};

absl::StatusOr<TraceHeader> ParseHeader(const std::string& path, Cursor* c) {
  MOEX_RETURN_IF_ERROR(c->Need(8, "magic"));
  if (std::memcmp(c->Take(8), kMagic, 8) != 0) {
    return absl::DataLossError(absl::StrCat(path, ": not a moex trace (bad magic)"));
  }
  MOEX_ASSIGN_OR_RETURN(uint32_t version, c->U32("version"));
  if (version != kVersion && version != kVersionPredictions) {
    return absl::UnimplementedError(
        absl::StrCat(path, ": trace format version ", version, " (this reader knows 1 and 2)"));
  }
  TraceHeader h;
  MOEX_ASSIGN_OR_RETURN(uint32_t flags, c->U32("flags"));
  MOEX_ASSIGN_OR_RETURN(uint32_t e, c->U32("num_experts"));
  MOEX_ASSIGN_OR_RETURN(uint32_t k, c->U32("top_k"));
  MOEX_ASSIGN_OR_RETURN(uint32_t l, c->U32("num_layers"));
  MOEX_ASSIGN_OR_RETURN(uint32_t name_len, c->U32("model name length"));
  const uint32_t known =
      kFlagWeights | kFlagProbs | (version >= kVersionPredictions ? kFlagPredictions : 0);
  if (e < 1 || e > kMaxExperts || k < 1 || k > kMaxTopK || k > e || l < 1 || l > kMaxLayers ||
      name_len > kMaxName || (flags & ~known)) {
    return absl::DataLossError(absl::StrCat(path, ": bad header (", e, " experts, top-", k, ", ", l,
                                            " layers, flags ", flags, ")"));
  }
  MOEX_RETURN_IF_ERROR(c->Need(name_len, "model name"));
  h.model.assign(c->Take(name_len), name_len);
  h.num_experts = e;
  h.top_k = k;
  h.num_layers = l;
  h.has_weights = flags & kFlagWeights;
  h.has_probs = flags & kFlagProbs;
  if (flags & kFlagPredictions) {
    MOEX_ASSIGN_OR_RETURN(uint32_t np, c->U32("predictor count"));
    MOEX_ASSIGN_OR_RETURN(uint32_t dist, c->U32("predict distance"));
    MOEX_ASSIGN_OR_RETURN(uint32_t size, c->U32("guess size"));
    // Bounds before the casts below: a corrupt count must not become a huge loop.
    if (np < 1 || np > kMaxPredictors || dist > kMaxLayers || size < 1 || size > e) {
      return absl::DataLossError(absl::StrCat(path, ": bad predictions header (", np,
                                              " predictors, distance ", dist, ", guess size ", size,
                                              ")"));
    }
    h.predict_distance = dist;
    h.predict_size = size;
    for (uint32_t i = 0; i < np; ++i) {
      MOEX_ASSIGN_OR_RETURN(uint32_t n, c->U32("predictor name length"));
      if (n > kMaxPredictorName) {
        return absl::DataLossError(absl::StrCat(path, ": predictor name length ", n));
      }
      MOEX_RETURN_IF_ERROR(c->Need(n, "predictor name"));
      h.predictors.emplace_back(c->Take(n), n);
    }
    if (const std::string bad = BadPredictionShape(h); !bad.empty()) {
      return absl::DataLossError(absl::StrCat(path, ": bad predictions header: ", bad));
    }
  }
  return h;
}

// Reads one sequence's guesses (the cursor is at them, and they are all there) into
// t->predictions, with kNoGuess for the layers that have none.
absl::Status ReadGuesses(const std::string& path, const std::string& seq, uint32_t n,
                         uint64_t id_bytes, Cursor* c, Trace* t) {
  const TraceHeader& h = t->header;
  const int P = static_cast<int>(h.predictors.size()), D = h.predict_distance, L = h.num_layers;
  const int G = h.guess_size();
  const size_t pos0 = c->pos();
  const size_t base = t->predictions.size();
  t->predictions.resize(base + static_cast<size_t>(n) * P * D * L * G, kNoGuess);
  const int64_t t0 = t->seq_start.back();
  for (uint32_t tok = 0; tok < n; ++tok) {
    for (int p = 0; p < P; ++p) {
      for (int d = 1; d <= D; ++d) {
        const size_t count = static_cast<size_t>(L - d) * G;
        uint16_t* out = &t->predictions[t->PredictionIndex(t0 + tok, p, d, d)];
        const char* in = c->Take(count * id_bytes);
        if (id_bytes == 1) {
          std::copy(reinterpret_cast<const uint8_t*>(in),
                    reinterpret_cast<const uint8_t*>(in) + count, out);
        } else {
          std::memcpy(out, in, count * 2);
        }
        for (size_t i = 0; i < count; ++i) {
          if (out[i] >= h.num_experts) {
            return absl::DataLossError(absl::StrCat(path, ": ", seq, ": guessed expert id ", out[i],
                                                    " >= ", h.num_experts, " near byte ", pos0));
          }
          // Distinct ids in a guess, as in a top-k: precision counts on it.
          for (size_t j = i / G * G; j < i; ++j) {
            if (out[j] == out[i]) {
              return absl::DataLossError(absl::StrCat(path, ": ", seq, ": guessed expert id ",
                                                      out[i], " twice in one guess near byte ",
                                                      pos0));
            }
          }
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TraceHeader> ReadTraceHeader(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::string data(8 + 9 * 4 + kMaxName + kMaxPredictors * (4 + kMaxPredictorName), '\0');
  in.read(data.data(), data.size());
  data.resize(in.gcount());
  Cursor c(path, data);
  return ParseHeader(path, &c);
}

absl::StatusOr<Trace> ReadTrace(const std::string& path, const ReadTraceOptions& options) {
  MOEX_ASSIGN_OR_RETURN(std::string data, Slurp(path));
  Cursor c(path, data);
  Trace t;
  MOEX_ASSIGN_OR_RETURN(t.header, ParseHeader(path, &c));
  const TraceHeader& h = t.header;
  const uint64_t id_bytes = SmallIds(h.num_experts) ? 1 : 2;
  t.seq_start.push_back(0);
  {
    // Room for every id the file can hold, so the arrays do not grow (and copy) sequence
    // by sequence: a slot of a token's top-k takes at least its id, its weight and its
    // share of the probabilities.
    const double slot = static_cast<double>(id_bytes) + (h.has_weights ? 4 : 0) +
                        (h.has_probs ? 4.0 * h.num_experts / h.top_k : 0);
    const size_t most = static_cast<size_t>(static_cast<double>(data.size()) / slot);
    t.experts.reserve(most);
    if (h.has_weights) t.weights.reserve(most);
  }
  // seen[e] = the last token (numbered from 1 across the file) in which expert e was seen.
  std::vector<uint64_t> seen(h.num_experts, 0);
  uint64_t token = 0;
  while (!c.done()) {
    const std::string seq = absl::StrCat("sequence ", t.seq_names.size());
    MOEX_ASSIGN_OR_RETURN(uint32_t name_len, c.U32(seq + " name length"));
    if (name_len > kMaxName) {
      return absl::DataLossError(
          absl::StrCat(path, ": ", seq, " name length ", name_len, " at byte ", c.pos() - 4));
    }
    MOEX_RETURN_IF_ERROR(c.Need(name_len, seq + " name"));
    t.seq_names.emplace_back(c.Take(name_len), name_len);
    MOEX_ASSIGN_OR_RETURN(uint32_t n, c.U32(seq + " token count"));
    const uint64_t ids = uint64_t{n} * h.num_layers * h.top_k;
    const uint64_t probs = uint64_t{n} * h.num_layers * h.num_experts;
    // Up to 2^45 guessed ids per token and 2^32 tokens: checked, not wrapped.
    uint64_t guesses = 0;
    if (__builtin_mul_overflow(uint64_t{n}, GuessesPerToken(h) * h.guess_size(), &guesses) ||
        guesses > data.size()) {
      return absl::DataLossError(
          absl::StrCat(path, ": ", seq, ": ", n, " tokens of guesses, more than the file holds"));
    }
    const uint64_t body = ids * id_bytes + (h.has_weights ? ids * 4 : 0) +
                          (h.has_probs ? probs * 4 : 0) + guesses * id_bytes;
    MOEX_RETURN_IF_ERROR(c.Need(body, seq + " routing"));
    const size_t pos0 = c.pos();
    const size_t old = t.experts.size();
    t.experts.resize(old + ids);
    // A sequence of zero tokens has no body: nothing to copy (and memcpy of a null
    // pointer is undefined even for zero bytes; found by fuzz_trace).
    if (ids > 0 && id_bytes == 1) {
      const uint8_t* p = reinterpret_cast<const uint8_t*>(c.Take(ids));
      std::copy(p, p + ids, t.experts.begin() + old);
    } else if (ids > 0) {
      std::memcpy(t.experts.data() + old, c.Take(ids * 2), ids * 2);
    }
    for (uint64_t g = old; g < old + ids; g += h.top_k) {  // a token's top-k
      ++token;
      for (int j = 0; j < h.top_k; ++j) {
        const uint16_t e = t.experts[g + j];
        if (e >= h.num_experts) {
          return absl::DataLossError(absl::StrCat(path, ": ", seq, ": expert id ", e,
                                                  " >= ", h.num_experts, " near byte ", pos0));
        }
        // A token's top-k are distinct experts; the analysis counts on it (a repeated id
        // overflowed SRP's per-count histogram; found by fuzz_trace).
        if (seen[e] == token) {
          return absl::DataLossError(absl::StrCat(path, ": ", seq, ": expert id ", e,
                                                  " twice in one token's top-", h.top_k,
                                                  " near byte ", pos0));
        }
        seen[e] = token;
      }
    }
    if (h.has_weights && ids > 0) {
      const size_t w0 = t.weights.size();
      t.weights.resize(w0 + ids);
      std::memcpy(t.weights.data() + w0, c.Take(ids * 4), ids * 4);
    }
    if (h.has_probs && probs > 0) {
      const char* p = c.Take(probs * 4);
      if (options.load_probs) {
        const size_t p0 = t.probs.size();
        t.probs.resize(p0 + probs);
        std::memcpy(t.probs.data() + p0, p, probs * 4);
      }
    }
    if (guesses > 0) {
      MOEX_RETURN_IF_ERROR(ReadGuesses(path, seq, n, id_bytes, &c, &t));
    }
    t.seq_start.push_back(t.seq_start.back() + n);
  }
  if (!options.load_probs) t.header.has_probs = false;
  return t;
}

// ---- imports ----------------------------------------------------------------------------

namespace {

// One (sequence, token, layer) routing from a text import, and where it came from.
struct Row {
  int32_t seq;
  int64_t token;
  int32_t layer;
  int64_t line;
  size_t first;  // into the pooled ids / weights
};

struct RowSet {
  std::string path;
  std::vector<std::string> seq_names;
  std::map<std::string, int32_t> seq_index;
  std::vector<Row> rows;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  int32_t k = -1;
  bool has_weights = false;

  int32_t SeqId(const std::string& name) {
    auto [it, fresh] = seq_index.emplace(name, seq_names.size());
    if (fresh) seq_names.push_back(name);
    return it->second;
  }
  absl::Status Bad(int64_t line, std::string_view why) const {
    return absl::InvalidArgumentError(absl::StrCat(path, ":", line, ": ", std::string(why)));
  }
};

// Rows into a Trace: groups by sequence, checks every (token, layer) is there once.
absl::StatusOr<Trace> Assemble(RowSet& rs, int32_t num_experts, int64_t* dropped) {
  if (dropped) *dropped = 0;
  if (rs.rows.empty()) return absl::InvalidArgumentError(absl::StrCat(rs.path, ": no rows"));
  int32_t max_id = 0, layers = 0;
  for (int32_t id : rs.ids) max_id = std::max(max_id, id);
  for (const Row& r : rs.rows) layers = std::max(layers, r.layer + 1);
  Trace t;
  t.header.model = rs.path;  // imports carry no model name
  t.header.num_experts = num_experts > 0 ? num_experts : max_id + 1;
  t.header.top_k = rs.k;
  t.header.num_layers = layers;
  t.header.has_weights = rs.has_weights;
  if (max_id >= t.header.num_experts || t.header.num_experts > static_cast<int>(kMaxExperts)) {
    for (const Row& r : rs.rows) {
      for (int j = 0; j < rs.k; ++j) {
        if (rs.ids[r.first + j] >= t.header.num_experts) {
          return rs.Bad(r.line, absl::StrCat("expert id ", rs.ids[r.first + j],
                                             " >= the expert count ", t.header.num_experts));
        }
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(rs.path, ": too many experts"));
  }
  if (rs.k > t.header.num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat(rs.path, ": top-", rs.k, " of ", t.header.num_experts, " experts"));
  }
  // Every (token, layer) needs a row, so a token index at or past its sequence's row
  // count, or a layer index past the rows of the whole file, means rows are missing; say
  // so before sizing the grid by those indices (a 283-byte file with token_idx 578398826
  // asked for gigabytes; found by fuzz_trace).
  std::vector<int64_t> seq_rows(rs.seq_names.size(), 0);
  for (const Row& r : rs.rows) ++seq_rows[r.seq];
  for (const Row& r : rs.rows) {
    if (r.token >= seq_rows[r.seq]) {
      return rs.Bad(r.line, absl::StrCat("token ", r.token, ", but its sequence has only ",
                                         seq_rows[r.seq], " rows: tokens are missing"));
    }
    if (static_cast<size_t>(r.layer) >= rs.rows.size()) {
      return rs.Bad(r.line, absl::StrCat("layer ", r.layer, ", but the file has only ",
                                         rs.rows.size(), " rows: layers are missing"));
    }
  }
  // Row index per (token, layer) of each sequence; -1 = missing.
  std::vector<std::vector<int64_t>> grid(rs.seq_names.size());
  for (size_t i = 0; i < rs.rows.size(); ++i) {
    const Row& r = rs.rows[i];
    std::vector<int64_t>& g = grid[r.seq];
    const size_t cell = static_cast<size_t>(r.token) * layers + r.layer;
    if (g.size() <= cell) g.resize((r.token + 1) * static_cast<size_t>(layers), -1);
    if (g[cell] >= 0) {
      return rs.Bad(r.line, absl::StrCat("token ", r.token, " layer ", r.layer, " repeats line ",
                                         rs.rows[g[cell]].line));
    }
    g[cell] = i;
  }
  t.seq_start.push_back(0);
  for (size_t s = 0; s < grid.size(); ++s) {
    const std::vector<int64_t>& g = grid[s];
    const int64_t n = g.size() / layers;
    // Complete tokens first; incomplete ones are tolerated only as a tail (a recording cut
    // off mid-token), where they are dropped.
    int64_t complete = 0;
    while (complete < n &&
           std::all_of(g.begin() + complete * layers, g.begin() + (complete + 1) * layers,
                       [](int64_t v) { return v >= 0; })) {
      ++complete;
    }
    for (int64_t tok = complete; tok < n; ++tok) {
      bool any_missing = false;
      for (int l = 0; l < layers; ++l) any_missing |= g[tok * layers + l] < 0;
      if (!any_missing || tok + 1 == n) continue;
      // An incomplete token followed by another token: only fine if every later token is
      // incomplete too (several tokens cut at the end).
      for (int64_t u = tok + 1; u < n; ++u) {
        bool full = true;
        for (int l = 0; l < layers; ++l) full &= g[u * layers + l] >= 0;
        if (full) {
          int l = 0;
          while (g[tok * layers + l] >= 0) ++l;
          return absl::InvalidArgumentError(absl::StrCat(rs.path, ": sequence '", rs.seq_names[s],
                                                         "' token ", tok, " has no row for layer ",
                                                         l, " (later tokens are complete)"));
        }
      }
    }
    if (dropped) *dropped += n - complete;
    if (complete == 0) continue;
    t.seq_names.push_back(rs.seq_names[s]);
    for (int64_t cell = 0; cell < complete * layers; ++cell) {
      const Row& r = rs.rows[g[cell]];
      for (int j = 0; j < rs.k; ++j) {
        t.experts.push_back(rs.ids[r.first + j]);
        if (rs.has_weights) t.weights.push_back(rs.weights[r.first + j]);
      }
    }
    t.seq_start.push_back(t.seq_start.back() + complete);
  }
  if (t.seq_names.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(rs.path, ": no complete token"));
  }
  return t;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    const size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string_view::npos ? p : p - start));
    if (p == std::string_view::npos) return out;
    start = p + 1;
  }
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  return s;
}

// Whole-field number parsing (Debian's Abseil takes its own string_view, not std's).
template <typename T>
bool ParseInt(std::string_view s, T* out) {
  s = Trim(s);
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size() && !s.empty();
}
bool ParseFloat(std::string_view s, float* out) {
  const std::string str(Trim(s));
  if (str.empty()) return false;
  char* end = nullptr;
  *out = std::strtof(str.c_str(), &end);
  return end == str.c_str() + str.size();
}

// Adds one row's experts and weights (already split) to `rs`.
absl::Status AddRow(RowSet& rs, int64_t line, int32_t seq, int64_t token, int32_t layer,
                    const std::vector<std::string_view>& experts,
                    const std::vector<std::string_view>* weights) {
  if (token < 0 || token >= (int64_t{1} << 31)) return rs.Bad(line, "token out of range");
  if (layer < 0 || layer >= static_cast<int32_t>(kMaxLayers)) {
    return rs.Bad(line, "layer out of range");
  }
  const int k = experts.size();
  if (rs.k < 0) rs.k = k;
  if (k != rs.k) {
    return rs.Bad(line, absl::StrCat(k, " experts where earlier rows have ", rs.k));
  }
  if (k > static_cast<int>(kMaxTopK)) return rs.Bad(line, "too many experts in one row");
  if (weights && static_cast<int>(weights->size()) != k) {
    return rs.Bad(line, absl::StrCat(weights->size(), " weights for ", k, " experts"));
  }
  Row r{seq, token, layer, line, rs.ids.size()};
  for (int j = 0; j < k; ++j) {
    int32_t id;
    if (!ParseInt(experts[j], &id) || id < 0 || id >= static_cast<int32_t>(kMaxExperts)) {
      return rs.Bad(line, absl::StrCat("bad expert id '", std::string(experts[j]), "'"));
    }
    for (int i = 0; i < j; ++i) {
      if (rs.ids[r.first + i] == id) {
        return rs.Bad(line, absl::StrCat("expert ", id, " twice in one row"));
      }
    }
    rs.ids.push_back(id);
    if (weights) {
      float w;
      if (!ParseFloat((*weights)[j], &w)) {
        return rs.Bad(line, absl::StrCat("bad weight '", std::string((*weights)[j]), "'"));
      }
      rs.weights.push_back(w);
    }
  }
  rs.rows.push_back(r);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Trace> ImportCsv(const std::string& path, int32_t num_experts,
                                int64_t* dropped_tokens) {
  MOEX_ASSIGN_OR_RETURN(std::string data, Slurp(path));
  RowSet rs;
  rs.path = path;
  std::string_view rest(data);
  int64_t line_no = 0;
  int col_seq = -1, col_token = -1, col_layer = -1, col_experts = -1, col_weights = -1;
  size_t n_cols = 0;
  std::vector<std::string_view> parts;
  while (!rest.empty()) {
    const size_t nl = rest.find('\n');
    std::string_view line = Trim(rest.substr(0, nl));
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    ++line_no;
    if (line.empty()) continue;
    parts = Split(line, ',');
    if (col_token < 0) {  // the header
      for (size_t i = 0; i < parts.size(); ++i) {
        const std::string_view name = Trim(parts[i]);
        int* col = name == "seq"       ? &col_seq
                   : name == "token"   ? &col_token
                   : name == "layer"   ? &col_layer
                   : name == "experts" ? &col_experts
                   : name == "weights" ? &col_weights
                                       : nullptr;
        if (!col) {
          return rs.Bad(line_no, absl::StrCat("unknown column '", std::string(name),
                                              "' (want [seq,]token,layer,experts[,weights])"));
        }
        if (*col >= 0)
          return rs.Bad(line_no, absl::StrCat("column '", std::string(name), "' twice"));
        *col = i;
      }
      if (col_token < 0 || col_layer < 0 || col_experts < 0) {
        return rs.Bad(line_no, "header needs token, layer and experts columns");
      }
      n_cols = parts.size();
      rs.has_weights = col_weights >= 0;
      continue;
    }
    if (parts.size() != n_cols) {
      return rs.Bad(line_no, absl::StrCat(parts.size(), " fields, the header has ", n_cols));
    }
    int64_t token;
    int32_t layer;
    if (!ParseInt(parts[col_token], &token)) {
      return rs.Bad(line_no, absl::StrCat("bad token '", std::string(parts[col_token]), "'"));
    }
    if (!ParseInt(parts[col_layer], &layer)) {
      return rs.Bad(line_no, absl::StrCat("bad layer '", std::string(parts[col_layer]), "'"));
    }
    const int32_t seq = rs.SeqId(col_seq >= 0 ? std::string(Trim(parts[col_seq])) : "0");
    const std::vector<std::string_view> experts = Split(parts[col_experts], ';');
    std::vector<std::string_view> weights;
    if (col_weights >= 0) weights = Split(parts[col_weights], ';');
    MOEX_RETURN_IF_ERROR(
        AddRow(rs, line_no, seq, token, layer, experts, col_weights >= 0 ? &weights : nullptr));
  }
  if (col_token < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
  return Assemble(rs, num_experts, dropped_tokens);
}

namespace {

// The raw text of `"key": value` in a flat JSON object ("" when absent): a number, a
// string (without quotes) or an array (with brackets). Enough for the Mixtral dumps,
// whose objects are flat and whose strings hold no escapes.
std::string_view JsonField(std::string_view obj, std::string_view key) {
  const std::string pat = absl::StrCat("\"", std::string(key), "\"");
  size_t p = obj.find(pat);
  if (p == std::string_view::npos) return {};
  p = obj.find(':', p + pat.size());
  if (p == std::string_view::npos) return {};
  ++p;
  while (p < obj.size() && obj[p] == ' ') ++p;
  if (p >= obj.size()) return {};
  if (obj[p] == '"') {
    const size_t e = obj.find('"', p + 1);
    return e == std::string_view::npos ? std::string_view() : obj.substr(p + 1, e - p - 1);
  }
  if (obj[p] == '[') {
    const size_t e = obj.find(']', p);
    return e == std::string_view::npos ? std::string_view() : obj.substr(p, e - p + 1);
  }
  size_t e = p;
  while (e < obj.size() && obj[e] != ',' && obj[e] != '}') ++e;
  return Trim(obj.substr(p, e - p));
}

}  // namespace

absl::StatusOr<Trace> ImportMixtralJsonl(const std::string& path, int32_t num_experts,
                                         int64_t* dropped_tokens) {
  MOEX_ASSIGN_OR_RETURN(std::string data, Slurp(path));
  RowSet rs;
  rs.path = path;
  rs.has_weights = true;
  std::string_view rest(data);
  int64_t line_no = 0;
  while (!rest.empty()) {
    const size_t nl = rest.find('\n');
    std::string_view line = Trim(rest.substr(0, nl));
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    ++line_no;
    if (line.empty()) continue;
    const std::string_view problem = JsonField(line, "problem_id");
    const std::string_view dataset = JsonField(line, "dataset");
    int64_t token;
    int32_t layer;
    if (problem.empty()) return rs.Bad(line_no, "no \"problem_id\"");
    if (!ParseInt(JsonField(line, "token_idx"), &token)) {
      return rs.Bad(line_no, "no integer \"token_idx\"");
    }
    if (!ParseInt(JsonField(line, "layer"), &layer)) {
      return rs.Bad(line_no, "no integer \"layer\"");
    }
    std::string_view experts = JsonField(line, "experts");
    std::string_view probs = JsonField(line, "gating_probs");
    if (experts.size() < 2 || probs.size() < 2) {
      return rs.Bad(line_no, "no \"experts\" or \"gating_probs\" array");
    }
    const std::vector<std::string_view> e = Split(experts.substr(1, experts.size() - 2), ',');
    const std::vector<std::string_view> w = Split(probs.substr(1, probs.size() - 2), ',');
    // Sequence names as in the reference CSV: "<dataset>-<problem_id>".
    const std::string name = dataset.empty()
                                 ? std::string(problem)
                                 : absl::StrCat(std::string(dataset), "-", std::string(problem));
    MOEX_RETURN_IF_ERROR(AddRow(rs, line_no, rs.SeqId(name), token, layer, e, &w));
  }
  return Assemble(rs, num_experts, dropped_tokens);
}

absl::StatusOr<Trace> MergeTraces(std::vector<Trace> traces) {
  if (traces.empty()) return absl::InvalidArgumentError("no traces");
  Trace out = std::move(traces[0]);
  for (size_t i = 1; i < traces.size(); ++i) {
    Trace& t = traces[i];
    const TraceHeader &a = out.header, &b = t.header;
    if (a.num_layers != b.num_layers || a.top_k != b.top_k) {
      return absl::InvalidArgumentError(absl::StrCat("trace ", i + 1, " has ", b.num_layers,
                                                     " layers top-", b.top_k, ", trace 1 has ",
                                                     a.num_layers, " layers top-", a.top_k));
    }
    out.header.num_experts = std::max(a.num_experts, b.num_experts);
    if (a.has_weights != b.has_weights) {
      out.header.has_weights = false;
      out.weights.clear();
    }
    if (a.has_probs != b.has_probs || a.num_experts != b.num_experts) {
      out.header.has_probs = false;
      out.probs.clear();
    }
    if (a.predictors != b.predictors || a.predict_distance != b.predict_distance ||
        a.guess_size() != b.guess_size()) {
      out.header.predictors.clear();
      out.header.predict_distance = out.header.predict_size = 0;
      out.predictions.clear();
    }
    const int64_t base = out.tokens();
    for (size_t s = 0; s < t.seq_names.size(); ++s) {
      out.seq_names.push_back(t.seq_names[s]);
      out.seq_start.push_back(base + t.seq_start[s + 1]);
    }
    out.experts.insert(out.experts.end(), t.experts.begin(), t.experts.end());
    if (out.header.has_weights) {
      out.weights.insert(out.weights.end(), t.weights.begin(), t.weights.end());
    }
    if (out.header.has_probs) out.probs.insert(out.probs.end(), t.probs.begin(), t.probs.end());
    if (!out.header.predictors.empty()) {
      out.predictions.insert(out.predictions.end(), t.predictions.begin(), t.predictions.end());
    }
  }
  return out;
}

}  // namespace moex
