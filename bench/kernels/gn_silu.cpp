// GroupNorm followed by SiLU in one kernel, channels-last float32 (an A/B candidate of bench/norm_fusion.py, not
// used by the model): per-channel sums over the pixels (vectorised across channels, partial sums per thread), folded
// into per-channel scale and shift per group, then one pass writing silu(x * scale + shift). Built on demand with
// torch.utils.cpp_extension.load_inline (needs a C++ compiler); -ffast-math lets GCC vectorise expf.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>
torch::Tensor gn_silu(torch::Tensor x, torch::Tensor w, torch::Tensor b, int64_t G, double eps) {
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast) && x.scalar_type() == at::kFloat);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), D = C / G;
  auto y = torch::empty_like(x);
  const float* px = x.data_ptr<float>(); float* py = y.data_ptr<float>();
  const float* pw = w.data_ptr<float>(); const float* pb = b.data_ptr<float>();
  std::vector<float> scale(N * C), shift(N * C);
  for (int64_t n = 0; n < N; ++n) {
    const float* xn = px + n * HW * C;
    int64_t T = at::get_num_threads();
    std::vector<double> sums(T * C * 2, 0.0);
    at::parallel_for(0, HW, 256, [&](int64_t s, int64_t e) {
      double* acc = sums.data() + at::get_thread_num() * C * 2;
      std::vector<float> fs(C, 0.f), fq(C, 0.f);
      for (int64_t p = s; p < e; ++p) {
        const float* row = xn + p * C;
        #pragma omp simd
        for (int64_t c = 0; c < C; ++c) { fs[c] += row[c]; fq[c] += row[c] * row[c]; }
      }
      for (int64_t c = 0; c < C; ++c) { acc[c] += fs[c]; acc[C + c] += fq[c]; }
    });
    for (int64_t g = 0; g < G; ++g) {
      double s = 0, q = 0;
      for (int64_t t = 0; t < T; ++t) for (int64_t c = g * D; c < (g + 1) * D; ++c) { s += sums[t*C*2 + c]; q += sums[t*C*2 + C + c]; }
      double cnt = (double)D * HW, mean = s / cnt, var = std::max(q / cnt - mean * mean, 0.0);
      double rstd = 1.0 / std::sqrt(var + eps);
      for (int64_t c = g * D; c < (g + 1) * D; ++c) { scale[n*C+c] = rstd * pw[c]; shift[n*C+c] = pb[c] - mean * rstd * pw[c]; }
    }
    float* yn = py + n * HW * C; const float* sc = scale.data() + n * C; const float* sh = shift.data() + n * C;
    at::parallel_for(0, HW, 256, [&](int64_t s, int64_t e) {
      for (int64_t p = s; p < e; ++p) {
        const float* row = xn + p * C; float* out = yn + p * C;
        #pragma omp simd
        for (int64_t c = 0; c < C; ++c) { float v = row[c] * sc[c] + sh[c]; out[c] = v / (1.f + std::exp(-v)); }
      }
    });
  }
  return y;
}
