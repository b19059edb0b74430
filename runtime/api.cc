// The public API (include/moex/moex.h) over the runtime's pieces.
#include <hwloc.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cache/kv_cache.h"
#include "kernels_cpu/parallel.h"
#include "moex/moex.h"
#include "predictor/expert_predictor.h"
#include "runtime/arch.h"
#include "runtime/core/gguf.h"
#include "runtime/core/status_macros.h"
#include "runtime/core_pinning.h"
#include "runtime/device/device.h"
#include "runtime/forward.h"
#include "runtime/gpu_forward.h"
#include "runtime/hybrid_run.h"
#include "runtime/model_info.h"
#include "runtime/model_weights.h"
#include "runtime/sampler.h"
#include "runtime/tokenizer.h"
#include "tbb/blocked_range.h"
#include "tbb/task_arena.h"

namespace moex {

int PhysicalCores() {
  static const int cores = [] {
    hwloc_topology_t topo;
    int n = 0;
    if (hwloc_topology_init(&topo) == 0) {
      if (hwloc_topology_load(topo) == 0) n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
      hwloc_topology_destroy(topo);
    }
    return n > 0 ? n : 1;
  }();
  return cores;
}

namespace {

// MemAvailable of /proc/meminfo in bytes (memory the system can give without swapping,
// page cache included); 0 where unknown.
double AvailableMemoryBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

}  // namespace

double MeasureReadBandwidth(int threads) {
  constexpr size_t kBytes = size_t{256} << 20;  // far beyond any last-level cache
  std::vector<uint64_t> buf(kBytes / 8, 1);
  tbb::task_arena arena(threads > 0 ? threads : PhysicalCores());
  CorePinning pinning(arena);  // as the model's workers run
  double best = 0;
  for (int pass = 0; pass < 4; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    uint64_t sum = 0;
    ArenaExecute(arena, [&] {
      sum = ParallelReduce(
          tbb::blocked_range<size_t>(0, buf.size(), 1 << 16), uint64_t{0},
          [&](const tbb::blocked_range<size_t>& r, uint64_t acc) {
            uint64_t a[8] = {};
            size_t i = r.begin();
            for (; i + 8 <= r.end(); i += 8) {
              for (int j = 0; j < 8; ++j) a[j] += buf[i + j];
            }
            for (; i < r.end(); ++i) acc += buf[i];
            for (uint64_t v : a) acc += v;
            return acc;
          },
          std::plus<uint64_t>());
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (pass > 0 && sum == buf.size()) best = std::max(best, kBytes / s);  // pass 0 faults pages in
  }
  return best;
}

struct Model::Impl {
  std::unique_ptr<GgufFile> file;
  ModelWeights weights;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the file has no tokenizer keys
  ModelInfo info;
  // The model's own worker pool, so two models (or a host application's TBB use) do
  // not fight over one global thread count.
  std::unique_ptr<tbb::task_arena> arena;
  std::unique_ptr<CorePinning> pinning;  // after arena: it goes first
};

struct Session::Impl {
  const Model::Impl* model = nullptr;
  std::unique_ptr<KvCache> kv;
  std::unique_ptr<Forward> forward;
  std::vector<int32_t> history;  // every token of the conversation, in order
  int32_t pending = -1;          // sampled last, not yet in the KV cache
  Stats stats;
  RoutingCallback routing_callback;
  std::unique_ptr<PredictorMeter> meter;
  PredictionCallback prediction_callback;
  int prediction_distance = 0;
  int64_t layer_pos0 = 0;             // position of the batch the meter is looking at
  std::unique_ptr<HybridRun> hybrid;  // sim:PROFILE, else null
  std::unique_ptr<GpuForward> gpu;    // cuda, else null
  std::string device_note;            // auto: why the GPU is not used

  // The device clock now (0 on cpu).
  double DeviceSeconds() {
    if (!hybrid) return 0;
    absl::StatusOr<double> t = hybrid->Seconds();
    return t.ok() ? *t : 0;
  }

  // The forward pass has one observer; it serves the routing callback and the meter.
  void InstallObserver();
  // Hands the meter's guesses to prediction_callback (or none when it is empty).
  void InstallGuessSink();

  absl::Status Feed(std::span<const int32_t> tokens, bool all_logits, std::vector<float>* logits);
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Open(const std::string& path,
                                                   const ModelOptions& options) {
  if (options.threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("threads = ", options.threads, " < 0"));
  }
  auto impl = std::make_unique<Impl>();
  MOEX_ASSIGN_OR_RETURN(impl->file, GgufFile::Open(path));
  MOEX_ASSIGN_OR_RETURN(HParams hp, ReadHParams(*impl->file));
  MOEX_ASSIGN_OR_RETURN(impl->weights, BindWeights(*impl->file, hp));
  MOEX_ASSIGN_OR_RETURN(impl->tokenizer, LoadTokenizer(*impl->file));
  const Tokenizer* tok = impl->tokenizer.get();
  if (tok != nullptr && tok->n_vocab() != impl->weights.hp.n_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the tokenizer has ", tok->n_vocab(),
                                                   " tokens but token_embd.weight has ",
                                                   impl->weights.hp.n_vocab, " rows"));
  }
  impl->info = MakeModelInfo(*impl->file, impl->weights);
  impl->info.bos_token = tok != nullptr ? tok->bos() : -1;
  impl->info.eos_token = tok != nullptr ? tok->eos() : -1;
  impl->info.add_bos = tok != nullptr && tok->add_bos();
  if (options.prefault) {
    // A file that does not fit beside what else runs would only evict its own pages.
    const double available = AvailableMemoryBytes();
    if (available > 0 && static_cast<double>(impl->file->file_size()) <= 0.8 * available) {
      impl->file->Populate();
    }
  }
  impl->arena =
      std::make_unique<tbb::task_arena>(options.threads > 0 ? options.threads : PhysicalCores());
  if (options.pin_threads) impl->pinning = std::make_unique<CorePinning>(*impl->arena);
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

const ModelInfo& Model::info() const { return impl_->info; }

std::string Model::Detokenize(std::span<const int32_t> tokens) const {
  std::string out;
  if (impl_->tokenizer != nullptr) {
    impl_->tokenizer->impl().DecodeTo(tokens, /*render_special=*/false,
                                      /*strip_prefix_space=*/false, &out);
  }
  return out;
}

const Tokenizer* Model::tokenizer() const { return impl_->tokenizer.get(); }

namespace {

// The GPU pass of a session on `device` ("cuda" or "cuda:N").
absl::StatusOr<std::unique_ptr<GpuForward>> MakeGpuForward(const ModelWeights& weights,
                                                           const SessionOptions& options,
                                                           const KvCache::Options& ko, int64_t ctx,
                                                           const std::string& device) {
  if (ko.policy.name != "full") {
    return absl::UnimplementedError(absl::StrCat(
        "--device cuda: KV policy '", ko.policy.name,
        "' runs on the CPU only for now (the GPU holds the full cache); use --kv-policy full"));
  }
  GpuForwardOptions go;
  MOEX_ASSIGN_OR_RETURN(go.device_index, ParseCudaDeviceIndex(device));
  go.gpu_mem = options.gpu_mem;
  go.moe_policy = options.moe_policy;
  go.kv_type = ko.type;
  go.context = ctx;
  return GpuForward::Create(weights, go);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Session>> Model::NewSession(const SessionOptions& options) const {
  const HParams& hp = impl_->weights.hp;
  int64_t ctx = options.context > 0 ? options.context : std::min<int64_t>(hp.n_ctx_train, 4096);
  if (ctx > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("context ", ctx, " is beyond the limit 2^24"));
  }
  auto s = std::make_unique<Session::Impl>();
  s->model = impl_.get();
  KvCache::Options ko;
  ko.n_layer = hp.n_layer;
  ko.n_ctx = ctx;
  ko.n_head_kv = hp.n_head_kv;
  ko.head_dim = hp.head_dim;
  MOEX_ASSIGN_OR_RETURN(ko.type, ParseKvType(options.kv_type));
  MOEX_ASSIGN_OR_RETURN(ko.policy, ParseKvPolicy(options.kv_policy));
  MOEX_ASSIGN_OR_RETURN(s->kv, KvCache::Create(ko));
  s->forward = std::make_unique<Forward>(&impl_->weights, s->kv.get());
  const bool auto_device = options.device == "auto";
  if (auto_device || absl::StartsWith(options.device, "cuda")) {
    absl::StatusOr<std::unique_ptr<GpuForward>> gpu =
        MakeGpuForward(impl_->weights, options, ko, ctx, auto_device ? "cuda" : options.device);
    if (gpu.ok()) {
      s->gpu = std::move(*gpu);
      s->forward->set_gpu(s->gpu.get());
    } else if (!auto_device) {
      return gpu.status();
    } else if (gpu.status().code() != absl::StatusCode::kUnavailable) {
      // A GPU is there but this model or these options do not run on it: the CPU does.
      s->device_note = absl::StrCat("no GPU run (", gpu.status().message(), "); on the CPU");
    }
  } else if (!options.device.empty() && options.device != "cpu") {
    HybridRunOptions ho;
    ho.device = options.device;
    ho.cpu_profile = options.cpu_profile;
    ho.gpu_mem = options.gpu_mem;
    ho.moe_policy = options.moe_policy;
    ho.cache_policy = options.cache_policy;
    ho.prefetch = options.prefetch;
    ho.context = ctx;
    MOEX_ASSIGN_OR_RETURN(s->hybrid, HybridRun::Create(impl_->weights, ho));
    s->forward->set_hybrid(s->hybrid.get());
  }
  return std::unique_ptr<Session>(new Session(std::move(s)));
}

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::~Session() = default;

void Session::Reset() {
  impl_->kv->Clear();
  impl_->history.clear();
  impl_->pending = -1;
  if (impl_->meter) impl_->meter->NewSequence();
}

void Session::TruncateTo(int64_t n) {
  Impl& s = *impl_;
  n = std::clamp<int64_t>(n, 0, static_cast<int64_t>(s.history.size()));
  // history = the KV cache's tokens, plus the pending token (sampled, not yet evaluated).
  if (n < s.kv->size()) {
    s.kv->Truncate(n);
    s.pending = -1;
  } else if (n == s.kv->size()) {
    s.pending = -1;
  }
  s.history.resize(n);
}

const std::vector<int32_t>& Session::tokens() const { return impl_->history; }

void Session::Impl::InstallObserver() {
  if (!routing_callback && !meter) {
    forward->set_routing_observer(nullptr);
    return;
  }
  forward->set_routing_observer([this](const MoeLayerEvent& ev) {
    const Routing& r = *ev.routing;
    layer_pos0 = ev.pos0;
    if (meter) meter->OnLayer(ev.layer, ev.n_tokens, ev.moe_input, ev.residual, r.experts.data());
    if (!routing_callback) return;
    RoutingEvent e;
    e.layer = static_cast<int32_t>(ev.layer);
    e.pos0 = ev.pos0;
    e.n_tokens = static_cast<int32_t>(r.n_tokens);
    e.k = static_cast<int32_t>(r.k);
    e.n_expert = r.n_tokens > 0 ? static_cast<int32_t>(r.probs.size() / r.n_tokens) : 0;
    e.experts = r.experts.data();
    e.weights = r.weights.data();
    e.probs = r.probs.data();
    routing_callback(e);
  });
}

void Session::SetRoutingCallback(RoutingCallback callback) {
  impl_->routing_callback = std::move(callback);
  impl_->InstallObserver();
}

void Session::EnablePredictorAccuracy(int max_distance) {
  const ModelWeights& w = impl_->model->weights;
  if (!w.hp.is_moe() || max_distance < 1) return;
  std::vector<PredictorLayer> layers;
  for (const LayerWeights& l : w.layers) layers.push_back({l.moe.router, l.ffn_norm.data()});
  impl_->meter = std::make_unique<PredictorMeter>(std::move(layers), w.hp.n_embd, w.hp.n_expert,
                                                  w.hp.n_expert_used, w.hp.rms_eps, max_distance);
  impl_->InstallGuessSink();
  impl_->InstallObserver();
}

void Session::Impl::InstallGuessSink() {
  if (!meter) return;
  if (!prediction_callback) {
    meter->set_guess_sink(nullptr);
    return;
  }
  meter->set_guess_sink([this](int p, int d, int64_t layer, int64_t n, const int32_t* ids) {
    if (d > prediction_distance) return;
    PredictionEvent e;
    e.predictor = PredictorMeter::kNames[p];
    e.layer = static_cast<int32_t>(layer);
    e.distance = d;
    e.pos0 = layer_pos0;
    e.n_tokens = static_cast<int32_t>(n);
    e.k = static_cast<int32_t>(model->weights.hp.n_expert_used);
    e.experts = ids;
    prediction_callback(e);
  });
}

void Session::SetPredictionCallback(int max_distance, PredictionCallback callback) {
  impl_->prediction_callback = std::move(callback);
  impl_->prediction_distance = max_distance;
  if (impl_->prediction_callback &&
      (!impl_->meter || impl_->meter->max_distance() < max_distance)) {
    EnablePredictorAccuracy(max_distance);  // installs the sink
    return;
  }
  impl_->InstallGuessSink();
}

std::vector<PredictorAccuracy> Session::predictor_accuracy() const {
  std::vector<PredictorAccuracy> out;
  const PredictorMeter* m = impl_->meter.get();
  if (m == nullptr) return out;
  for (int p = 0; p < PredictorMeter::kNumPredictors; ++p) {
    // The same-layer predictors do not depend on a distance: they are reported at 1.
    const int max_d = p < 2 ? m->max_distance() : 1;
    for (int d = 1; d <= max_d; ++d) {
      for (int64_t l = -1; l < m->n_layer(); ++l) {
        const PredictorMeter::Score s = l < 0 ? m->ModelScore(p, d) : m->score(p, d, l);
        if (s.samples == 0) continue;
        out.push_back(
            {PredictorMeter::kNames[p], d, static_cast<int32_t>(l), s.recall(), s.samples});
      }
    }
  }
  return out;
}

int64_t Session::position() const { return impl_->kv->size(); }
int64_t Session::context() const { return impl_->kv->capacity(); }
int64_t Session::kv_bytes() const {
  return impl_->gpu ? impl_->gpu->kv_bytes() : impl_->kv->bytes();
}
int64_t Session::kv_peak_bytes() const {
  return impl_->gpu ? impl_->gpu->kv_bytes() : impl_->kv->peak_bytes();
}
int64_t Session::kv_allocated_bytes() const {
  return impl_->gpu ? impl_->gpu->kv_bytes() : impl_->kv->allocated_bytes();
}
const Stats& Session::stats() const { return impl_->stats; }

DeviceStats Session::device_stats() const {
  DeviceStats d;
  d.note = impl_->device_note;
  if (const GpuForward* g = impl_->gpu.get()) {
    // A static split: whole layers' experts on the GPU, the others on the CPU.
    d.device = g->device_name();
    d.moe_policy = g->moe_policy();
    d.steps = g->steps();
    d.tokens = g->tokens();
    d.layer_gpu_experts = g->layer_gpu_experts();
    d.layer_cpu_experts = g->layer_cpu_experts();
    for (size_t il = 0; il < g->expert_layers_on_gpu().size(); ++il) {
      d.slots += g->expert_layers_on_gpu()[il] ? impl_->model->weights.hp.n_expert : 0;
      d.hits += d.layer_gpu_experts[il];
      d.misses += d.layer_cpu_experts[il];
    }
    return d;
  }
  const HybridRun* h = impl_->hybrid.get();
  if (h == nullptr) return d;
  const HybridStats& st = h->stats();
  d.device = h->device_name();
  d.moe_policy = MoePolicyName(h->hybrid().options().policy);
  d.cache_policy = ExpertCachePolicyName(h->hybrid().cache().policy());
  d.prefetch = PrefetchModeName(h->hybrid().prefetch());
  d.seconds = impl_->DeviceSeconds();
  d.steps = st.steps;
  d.tokens = st.tokens;
  d.slots = h->slots();
  d.expert_bytes = h->expert_bytes();
  d.hits = st.hits;
  d.misses = st.misses;
  d.ondemand_copies = st.ondemand_copies;
  d.prefetch_copies = st.prefetch_copies;
  d.refresh_copies = st.refresh_copies;
  d.prefetch_used = st.prefetch_used;
  d.bytes_copied = st.bytes_copied;
  d.stall_seconds = st.gpu_wait_s;
  for (const HybridLayerStats& l : st.layers) {
    d.layer_gpu_experts.push_back(l.gpu_experts);
    d.layer_cpu_experts.push_back(l.cpu_experts);
  }
  return d;
}

namespace {
double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

// The last token Generate() sampled is not in the KV cache yet (it had no need of
// logits); the next call evaluates it in front of its own tokens.
absl::Status Session::Impl::Feed(std::span<const int32_t> tokens, bool all_logits,
                                 std::vector<float>* logits) {
  std::vector<int32_t> batch;
  if (pending >= 0) batch.push_back(pending);
  batch.insert(batch.end(), tokens.begin(), tokens.end());
  absl::Status st;
  ArenaExecute(*model->arena, [&] { st = forward->Eval(batch, all_logits, logits); });
  MOEX_RETURN_IF_ERROR(st);
  if (all_logits && pending >= 0) {
    logits->erase(logits->begin(), logits->begin() + model->weights.hp.n_vocab);
  }
  pending = -1;
  history.insert(history.end(), tokens.begin(), tokens.end());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Session::Evaluate(std::span<const int32_t> tokens) {
  if (tokens.empty()) return absl::InvalidArgumentError("no tokens to evaluate");
  std::vector<float> logits;
  const auto t0 = std::chrono::steady_clock::now();
  const double d0 = impl_->DeviceSeconds();
  MOEX_RETURN_IF_ERROR(impl_->Feed(tokens, true, &logits));
  impl_->stats = Stats{};
  impl_->stats.prompt_tokens = static_cast<int64_t>(tokens.size());
  impl_->stats.prefill_seconds = SecondsSince(t0);
  impl_->stats.device_prefill_seconds = impl_->DeviceSeconds() - d0;
  return logits;
}

absl::StatusOr<std::vector<int32_t>> Session::Generate(std::span<const int32_t> prompt,
                                                       const GenerateOptions& options,
                                                       const TokenCallback& on_token) {
  Impl& s = *impl_;
  if (prompt.empty()) return absl::InvalidArgumentError("Generate needs at least one prompt token");
  if (options.max_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens = ", options.max_tokens, " < 0"));
  }
  // Check the whole request fits before doing any work: failing halfway would leave the
  // user with a truncated answer.
  MOEX_RETURN_IF_ERROR(s.kv->Reserve(static_cast<int64_t>(prompt.size()) + options.max_tokens +
                                     (s.pending >= 0 ? 1 : 0)));
  s.stats = Stats{};
  Sampler sampler(options.sampling);
  std::vector<int32_t> out;
  std::vector<float> logits;
  const auto t0 = std::chrono::steady_clock::now();
  const double d0 = s.DeviceSeconds();
  MOEX_RETURN_IF_ERROR(s.Feed(prompt, false, &logits));
  s.stats.prompt_tokens = static_cast<int64_t>(prompt.size());
  s.stats.prefill_seconds = SecondsSince(t0);

  const auto t1 = std::chrono::steady_clock::now();
  const double d1 = s.DeviceSeconds();
  s.stats.device_prefill_seconds = d1 - d0;
  const Tokenizer* tokenizer = s.model->tokenizer.get();
  const int32_t eos = s.model->info.eos_token;
  auto end_of_generation = [&](int32_t t) {
    return tokenizer != nullptr ? tokenizer->IsEog(t) : t == eos;
  };
  for (int32_t i = 0; i < options.max_tokens; ++i) {
    const int32_t tok = sampler.Sample(logits, s.history);
    out.push_back(tok);
    s.stats.generated_tokens = static_cast<int64_t>(out.size());
    const bool keep_going = !on_token || on_token(tok);
    if (!keep_going || (options.stop_at_eos && end_of_generation(tok)) ||
        i + 1 == options.max_tokens) {
      s.pending = tok;
      s.history.push_back(tok);
      break;
    }
    const int32_t one[1] = {tok};
    MOEX_RETURN_IF_ERROR(s.Feed(one, false, &logits));
  }
  s.stats.decode_seconds = SecondsSince(t1);
  s.stats.device_decode_seconds = s.DeviceSeconds() - d1;
  return out;
}

}  // namespace moex
