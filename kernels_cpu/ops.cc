#include "kernels_cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <span>
#include <vector>

#include "kernels_cpu/parallel.h"
#include "kernels_cpu/vec_dot.h"
#include "tbb/blocked_range.h"
#include "tbb/task_arena.h"

namespace moex::kcpu {

float Dot(const float* a, const float* b, int64_t n) {
  // 64 partial sums: the compiler keeps them in four 16-wide (or eight 8-wide) vector
  // registers, so four independent FMA chains hide the FMA latency. One chain would run
  // at a quarter of the core's speed.
  constexpr int kLanes = 64;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  }
  return s + acc[0];
}

namespace {

// Rows per task so that a task streams about `bytes` of weights.
int64_t Grain(int64_t row_bytes, int64_t bytes) {
  return std::max<int64_t>(1, bytes / std::max<int64_t>(1, row_bytes));
}

// How one task's outputs are computed; every path computes each output the same way
// whatever the batch, the row block or the other tasks (bit-identical results).
enum class Path : uint8_t {
  // x quantised once per row (Q8_K or Q8_0, see vec_dot.h), each output one integer
  // vec_dot over the weight row read in place. The activation error this adds (8-bit
  // codes per 32 or 256 values) is what llama.cpp's CPU path has too.
  kVecDot,
  // F16/BF16 widened in registers and dotted with the F32 x: no temporary row, so the
  // weights stream once at the bandwidth (dequantising to a row first ran at 40-60 %).
  kFloatDot,
  // F32 rows dotted in place; anything else dequantised to an F32 row once per row and
  // reused for every token.
  kRows,
};

struct Plan {
  Path path = Path::kRows;
  VecDotFn vdot = nullptr;
  VecDotBatchFn vbatch = nullptr;  // kVecDot: several tokens per weight block, or null
  int64_t batch_scratch = 0;       // bytes vbatch needs (VecDotBatchScratchBytes)
  FloatDotFn fdot = nullptr;
  int64_t row_bytes = 0;
  int64_t x_bytes = 0;  // kVecDot: one quantised activation row
  int64_t source = -1;  // kVecDot: index into Workspace::sources
  int64_t grain = 1;    // rows per chunk
};

// The rows of one activation matrix quantised for one activation type; tasks that read
// the same x with the same type share them (a layer's gate and up, all experts of a
// decode step).
struct Source {
  const float* x;
  int64_t cols;
  GgmlType act;
  int64_t x_bytes;
  int64_t n_rows;  // rows 0..n_rows-1 are quantised
  int64_t offset;  // bytes into Workspace::xq
};

struct Chunk {
  int64_t task, begin, end;  // rows [begin, end) of tasks[task]
};

// Scratch of one MatMulMany call, grown once per thread and kept (no allocation per
// token).
struct Workspace {
  std::vector<Plan> plans;
  std::vector<Source> sources;
  std::vector<int64_t> first_row;  // prefix sums of sources' n_rows
  std::vector<Chunk> chunks;
  std::vector<uint8_t> xq;
  // The batched kernels' scratch, one 64-byte-aligned stride per slot of the arena (a
  // chunk takes its thread's), grown on the calling thread before the parallel region, so
  // that no worker allocates.
  std::vector<uint8_t> batch_scratch;
  int64_t batch_stride = 0;
  uint8_t* BatchScratch(int slot) {
    auto base = reinterpret_cast<uintptr_t>(batch_scratch.data());
    base = (base + 63) & ~uintptr_t{63};
    return reinterpret_cast<uint8_t*>(base) + slot * batch_stride;
  }
};

int64_t XRow(const MatMulTask& t, int64_t tok) { return t.x_rows ? t.x_rows[tok] : tok; }

// Outputs of rows [b, e) of task t for all its tokens. Calls nothing that can run other
// TBB work, so the thread_local row below cannot be taken by a nested call.
void RunChunk(const MatMulTask& t, const Plan& p, const uint8_t* xq, int64_t b, int64_t e,
              void* scratch) {
  const auto* wb = static_cast<const uint8_t*>(t.w);
  switch (p.path) {
    case Path::kVecDot:
      if (p.vbatch != nullptr && t.n_tokens >= 2) {
        // Prefill: each weight block decoded once per group of kVecDotBatch tokens (same
        // bits as one vec_dot per token). Groups outermost: the group's activation rows
        // (8 x 2.3 KiB per 2048 values) stay in L1 while the chunk's 32 KiB of weights,
        // read from memory by the first group, come from L2 for the others (3-5 % faster
        // than rows outermost in BM_PrefillGemm).
        for (int64_t t0 = 0; t0 < t.n_tokens; t0 += kVecDotBatch) {
          const int nt = static_cast<int>(std::min<int64_t>(kVecDotBatch, t.n_tokens - t0));
          const void* xs[kVecDotBatch];
          for (int j = 0; j < nt; ++j) xs[j] = xq + XRow(t, t0 + j) * p.x_bytes;
          p.vbatch(wb + b * p.row_bytes, p.row_bytes, e - b, xs, nt, t.cols, t.y + t0 * t.rows + b,
                   t.rows, scratch);
        }
        return;
      }
      // Each weight row is used for all tokens while it is in L1.
      for (int64_t n = b; n < e; ++n) {
        const uint8_t* wr = wb + n * p.row_bytes;
        for (int64_t tok = 0; tok < t.n_tokens; ++tok) {
          t.y[tok * t.rows + n] = p.vdot(wr, xq + XRow(t, tok) * p.x_bytes, t.cols);
        }
      }
      return;
    case Path::kFloatDot:
      for (int64_t n = b; n < e; ++n) {
        const uint8_t* wr = wb + n * p.row_bytes;
        for (int64_t tok = 0; tok < t.n_tokens; ++tok) {
          t.y[tok * t.rows + n] = p.fdot(wr, t.x + XRow(t, tok) * t.cols, t.cols);
        }
      }
      return;
    case Path::kRows: {
      thread_local std::vector<float> row;
      if (t.type != GgmlType::kF32 && row.size() < static_cast<size_t>(t.cols)) row.resize(t.cols);
      for (int64_t n = b; n < e; ++n) {
        const float* wr;
        if (t.type == GgmlType::kF32) {
          wr = reinterpret_cast<const float*>(wb + n * p.row_bytes);
        } else {
          DequantizeRow(t.type, wb + n * p.row_bytes, row.data(), t.cols);
          wr = row.data();
        }
        for (int64_t tok = 0; tok < t.n_tokens; ++tok) {
          t.y[tok * t.rows + n] = Dot(wr, t.x + XRow(t, tok) * t.cols, t.cols);
        }
      }
      return;
    }
  }
}

// The path of one task; `level` (may be null) forces the integer path at that level.
Plan PlanTask(const MatMulTask& t, const IsaLevel* level) {
  Plan p;
  const TypeTraits& tt = GetTypeTraits(t.type);
  p.row_bytes = RowBytes(tt, t.cols);
  const GgmlType act = VecDotActivationType(t.type);
  // Quantised weights: the integer path for every batch size. Decode must give the same
  // logits as a prefill of the same tokens (tests/api), which holds only if a token's
  // outputs do not depend on the batch. For several tokens the batched vec_dots
  // (GetVecDotBatch: one weight row decoded once for up to 8 tokens, each token's sum in
  // the one-token kernel's order) keep that and are 1.3-2x faster per token than one
  // vec_dot each (BM_PrefillGemm), which were themselves 2-3x faster than dequantising the
  // row and taking F32 dots (BM_MatVec vs BM_MatVecLevel in bench/kernels_bench.cc).
  if (act != GgmlType::kF32 && t.cols % GetTypeTraits(act).block_elems == 0) {
    p.path = Path::kVecDot;
    p.vdot = level ? GetVecDot(t.type, *level) : GetVecDot(t.type);
    p.vbatch = level ? GetVecDotBatch(t.type, *level) : GetVecDotBatch(t.type);
    // Only a call that takes the batched path (RunChunk) needs its scratch.
    if (p.vbatch != nullptr && t.n_tokens >= 2) {
      p.batch_scratch = VecDotBatchScratchBytes(t.type, t.cols);
    }
    p.x_bytes = RowBytes(GetTypeTraits(act), t.cols);
    // Tasks of about 32 KiB of weights: a decode step's expert matrices (~0.3-1 MB) still
    // split into a dozen or more tasks per core, while each task streams long enough for
    // the hardware prefetchers to run ahead.
    p.grain = Grain(p.row_bytes, int64_t{32} << 10);
  } else if ((p.fdot = GetFloatDot(t.type)) != nullptr) {
    p.path = Path::kFloatDot;
    p.grain = Grain(p.row_bytes, int64_t{32} << 10);
  } else {
    p.path = Path::kRows;
    p.grain = Grain(p.row_bytes, int64_t{16} << 10);
  }
  return p;
}

void MatMulManyImpl(std::span<const MatMulTask> tasks, const IsaLevel* level) {
  // A per-thread workspace, grown once (no allocation per token) -- unless this thread is
  // already inside a MatMul whose workers read that workspace: a thread waiting in a
  // parallel_for may run other work of the arena (another session's delegated
  // evaluation), which calls MatMul again on the same thread. That nested call takes a
  // workspace of its own. (Found by TSan: docs/ROBUSTNESS.md.)
  thread_local Workspace tls_ws;
  thread_local bool tls_busy = false;
  std::unique_ptr<Workspace> own;
  const bool use_tls = !tls_busy;
  if (!use_tls) own = std::make_unique<Workspace>();
  Workspace& ws = use_tls ? tls_ws : *own;
  struct Release {
    bool active;
    ~Release() {
      if (active) tls_busy = false;
    }
  } release{use_tls};
  if (use_tls) tls_busy = true;

  ws.plans.clear();
  ws.sources.clear();
  ws.chunks.clear();
  int64_t xq_bytes = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const MatMulTask& t = tasks[i];
    Plan p = PlanTask(t, level);
    if (p.path == Path::kVecDot && t.n_tokens > 0) {
      int64_t need = t.n_tokens;
      if (t.x_rows) {
        need = 0;
        for (int64_t tok = 0; tok < t.n_tokens; ++tok) {
          need = std::max<int64_t>(need, t.x_rows[tok] + 1);
        }
      }
      const GgmlType act = VecDotActivationType(t.type);
      size_t s = 0;
      while (s < ws.sources.size() && !(ws.sources[s].x == t.x && ws.sources[s].cols == t.cols &&
                                        ws.sources[s].act == act)) {
        ++s;
      }
      if (s == ws.sources.size()) ws.sources.push_back(Source{t.x, t.cols, act, p.x_bytes, 0, 0});
      ws.sources[s].n_rows = std::max(ws.sources[s].n_rows, need);
      p.source = static_cast<int64_t>(s);
    }
    ws.plans.push_back(p);
    if (t.n_tokens <= 0) continue;
    for (int64_t b = 0; b < t.rows; b += p.grain) {
      ws.chunks.push_back(Chunk{static_cast<int64_t>(i), b, std::min(t.rows, b + p.grain)});
    }
  }
  ws.first_row.clear();
  int64_t total_rows = 0, total_values = 0;
  for (Source& src : ws.sources) {
    src.offset = xq_bytes;
    xq_bytes += src.n_rows * src.x_bytes;
    ws.first_row.push_back(total_rows);
    total_rows += src.n_rows;
    total_values += src.n_rows * src.cols;
  }
  if (ws.xq.size() < static_cast<size_t>(xq_bytes)) ws.xq.resize(xq_bytes);
  uint8_t* xq = ws.xq.data();
  int64_t scratch = 0;
  for (const Plan& p : ws.plans) scratch = std::max(scratch, p.batch_scratch);
  const int slots = std::max(1, tbb::this_task_arena::max_concurrency());
  if (scratch > 0) {
    ws.batch_stride = (scratch + 63) / 64 * 64;
    const size_t need = static_cast<size_t>(slots * ws.batch_stride + 64);
    if (ws.batch_scratch.size() < need) ws.batch_scratch.resize(need);
  }
  auto quantize = [&](int64_t r) {
    const int64_t s =
        std::upper_bound(ws.first_row.begin(), ws.first_row.end(), r) - ws.first_row.begin() - 1;
    const Source& src = ws.sources[s];
    const int64_t row = r - ws.first_row[s];
    QuantizeActivation(src.act, src.x + row * src.cols, xq + src.offset + row * src.x_bytes,
                       src.cols);
  };
  // A decode step's rows (a few thousand values) take less than a parallel region's
  // start-up; a prefill's (hundreds of rows) are worth splitting.
  if (total_values < (int64_t{1} << 16)) {
    for (int64_t r = 0; r < total_rows; ++r) quantize(r);
  } else {
    ParallelFor(tbb::blocked_range<int64_t>(0, total_rows, 4),
                [&](const tbb::blocked_range<int64_t>& r) {
                  for (int64_t i = r.begin(); i < r.end(); ++i) quantize(i);
                });
  }
  // One parallel region over every (task, row block): with a layer's experts in one call,
  // each core streams weights from the start to the end of the layer instead of meeting
  // the other at a barrier after every small matrix.
  auto run = [&](const tbb::blocked_range<size_t>& r) {
    for (size_t c = r.begin(); c < r.end(); ++c) {
      const Chunk& ch = ws.chunks[c];
      const Plan& p = ws.plans[ch.task];
      const uint8_t* txq = p.source >= 0 ? xq + ws.sources[p.source].offset : nullptr;
      void* scr = nullptr;
      if (p.batch_scratch > 0) {
        // TBB numbers the threads of a region's arena 0 .. max_concurrency - 1.
        scr = ws.BatchScratch(tbb::this_task_arena::current_thread_index());
      }
      RunChunk(tasks[ch.task], p, txq, ch.begin, ch.end, scr);
    }
  };
  ParallelFor(tbb::blocked_range<size_t>(0, ws.chunks.size(), 1), run);
}

}  // namespace

bool MatMulQuantizedActivations(GgmlType type, IsaLevel level, const void* w, int64_t rows,
                                int64_t cols, const float* x, int64_t n_tokens, float* y) {
  const GgmlType act = VecDotActivationType(type);
  if (act == GgmlType::kF32 || cols % GetTypeTraits(act).block_elems != 0) return false;
  const MatMulTask task{type, w, rows, cols, x, nullptr, n_tokens, y};
  MatMulManyImpl({&task, 1}, &level);
  return true;
}

void MatMul(GgmlType type, const void* w, int64_t rows, int64_t cols, const float* x,
            int64_t n_tokens, float* y) {
  const MatMulTask task{type, w, rows, cols, x, nullptr, n_tokens, y};
  MatMulManyImpl({&task, 1}, nullptr);
}

void MatMulMany(std::span<const MatMulTask> tasks) { MatMulManyImpl(tasks, nullptr); }

void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

void Rope(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int64_t pos, float freq_base,
          bool neox) {
  // theta_i = pos * base^(-2i/n_rot), as in RoFormer (Su et al. 2021) and llama.cpp.
  const int64_t half = n_rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float theta =
        static_cast<float>(pos) * std::pow(freq_base, -2.0f * static_cast<float>(i) / n_rot);
    const float c = std::cos(theta), s = std::sin(theta);
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + h * head_dim;
      const int64_t a = neox ? i : 2 * i;
      const int64_t b = neox ? i + half : 2 * i + 1;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

void Softmax(float* x, int64_t n) {
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void SwiGlu(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void Axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace moex::kcpu
