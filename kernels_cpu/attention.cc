#include "kernels_cpu/attention.h"

#include <cmath>
#include <vector>

#include "kernels_cpu/ops.h"
#include "kernels_cpu/parallel.h"
#include "tbb/blocked_range2d.h"

namespace moex::kcpu {

void CausalAttention(const AttentionShape& s, const float* q, int64_t n_tokens, int64_t pos0,
                     const float* k, const float* v, int64_t kv_stride, float* out) {
  const int64_t group = s.n_head / s.n_head_kv;
  const int64_t q_stride = s.n_head * s.head_dim;
  ParallelFor(tbb::blocked_range2d<int64_t>(0, n_tokens, 0, s.n_head),
              [&](const tbb::blocked_range2d<int64_t>& r) {
                std::vector<float> scores(pos0 + n_tokens);
                for (int64_t t = r.rows().begin(); t < r.rows().end(); ++t) {
                  const int64_t n_ctx = pos0 + t + 1;
                  for (int64_t h = r.cols().begin(); h < r.cols().end(); ++h) {
                    const float* qh = q + t * q_stride + h * s.head_dim;
                    const int64_t kvh = h / group;
                    for (int64_t j = 0; j < n_ctx; ++j) {
                      scores[j] =
                          Dot(qh, k + j * kv_stride + kvh * s.head_dim, s.head_dim) * s.scale;
                    }
                    Softmax(scores.data(), n_ctx);
                    float* oh = out + t * q_stride + h * s.head_dim;
                    for (int64_t d = 0; d < s.head_dim; ++d) oh[d] = 0;
                    for (int64_t j = 0; j < n_ctx; ++j) {
                      Axpy(scores[j], v + j * kv_stride + kvh * s.head_dim, oh, s.head_dim);
                    }
                  }
                }
              });
}

}  // namespace moex::kcpu
