// Standalone check of the CUDA kernels against a plain double-precision CPU computation of
// SPEC.md section 2 (no torch). Exit status 0 when the scores match; also a small target for
// compute-sanitizer. Built by CMakeLists.txt with -DTGFR_BUILD_KERNEL_TEST=ON.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "word_region.cuh"

namespace {

using tgfr::kernels::ScalarType;
using tgfr::kernels::WordRegionProblem;

double reference_score(const std::vector<float>& w, const std::vector<float>& v, int i, int j, int T, int R, int D,
                       int length, double gamma1, double gamma2, bool word_softmax) {
  std::vector<double> a(T * R);
  for (int t = 0; t < length; ++t)
    for (int r = 0; r < R; ++r) {
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += double(w[(i * T + t) * D + d]) * v[(j * R + r) * D + d];
      a[t * R + r] = dot;
    }
  if (word_softmax)
    for (int r = 0; r < R; ++r) {
      double top = -INFINITY, total = 0;
      for (int t = 0; t < length; ++t) top = std::max(top, a[t * R + r]);
      for (int t = 0; t < length; ++t) total += std::exp(a[t * R + r] - top);
      for (int t = 0; t < length; ++t) a[t * R + r] = std::exp(a[t * R + r] - top) / total;
    }
  double top = -INFINITY;
  std::vector<double> logits(length);
  for (int t = 0; t < length; ++t) {
    double row_max = -INFINITY, row_sum = 0;
    for (int r = 0; r < R; ++r) row_max = std::max(row_max, gamma1 * a[t * R + r]);
    for (int r = 0; r < R; ++r) row_sum += std::exp(gamma1 * a[t * R + r] - row_max);
    double dot = 0, cc = 0, ww = 0;
    for (int d = 0; d < D; ++d) {
      double c = 0;
      for (int r = 0; r < R; ++r) c += std::exp(gamma1 * a[t * R + r] - row_max) / row_sum * v[(j * R + r) * D + d];
      const double x = w[(i * T + t) * D + d];
      dot += c * x, cc += c * c, ww += x * x;
    }
    logits[t] = gamma2 * dot / std::max(std::sqrt(cc * ww), 1e-8);
    top = std::max(top, logits[t]);
  }
  double total = 0;
  for (double logit : logits) total += std::exp(logit - top);
  return top + std::log(total);
}

#define CHECK_CUDA(call)                                                              \
  do {                                                                                \
    const cudaError_t error_ = (call);                                                \
    if (error_ != cudaSuccess) {                                                      \
      std::fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(error_));     \
      return false;                                                                   \
    }                                                                                 \
  } while (0)

// Inputs are rounded to bf16 first, so that the fp32 and bf16 runs see the same values.
bool check(ScalarType dtype, bool word_softmax) {
  const int N = 5, M = 6, T = 7, R = 23, D = 40;
  std::mt19937 generator(7);
  std::normal_distribution<float> normal;
  std::vector<float> w(N * T * D), v(M * R * D);
  for (float& x : w) x = __bfloat162float(__float2bfloat16(normal(generator)));
  for (float& x : v) x = __bfloat162float(__float2bfloat16(normal(generator)));
  const std::vector<int64_t> lengths = {1, 7, 3, 5, 2};
  const size_t element = dtype == ScalarType::kFloat32 ? 4 : 2;
  std::vector<__nv_bfloat16> w16(w.begin(), w.end()), v16(v.begin(), v.end());
  void *words, *regions;
  int64_t* lengths_device;
  float* scores;
  CHECK_CUDA(cudaMalloc(&words, w.size() * element));
  CHECK_CUDA(cudaMalloc(&regions, v.size() * element));
  CHECK_CUDA(cudaMalloc(&lengths_device, N * sizeof(int64_t)));
  CHECK_CUDA(cudaMalloc(&scores, N * M * sizeof(float)));
  const void* w_host = dtype == ScalarType::kFloat32 ? static_cast<const void*>(w.data()) : w16.data();
  const void* v_host = dtype == ScalarType::kFloat32 ? static_cast<const void*>(v.data()) : v16.data();
  CHECK_CUDA(cudaMemcpy(words, w_host, w.size() * element, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(regions, v_host, v.size() * element, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(lengths_device, lengths.data(), N * sizeof(int64_t), cudaMemcpyHostToDevice));
  const WordRegionProblem problem{dtype, words, T * D, D, lengths_device, regions, R * D, D,
                                  N, M, T, R, D, 4.0f, 5.0f, word_softmax};
  CHECK_CUDA(tgfr::kernels::word_region_scores_forward(problem, scores, M, nullptr));
  std::vector<float> result(N * M);
  CHECK_CUDA(cudaMemcpy(result.data(), scores, result.size() * sizeof(float), cudaMemcpyDeviceToHost));
  // bf16 rounds the probabilities entering the second product.
  const double tolerance = dtype == ScalarType::kFloat32 ? 1e-4 : 3e-2;
  double worst = 0;
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < M; ++j) {
      const double expected = reference_score(w, v, i, j, T, R, D, int(lengths[i]), 4.0, 5.0, word_softmax);
      worst = std::max(worst, std::abs(result[i * M + j] - expected) / (1.0 + std::abs(expected)));
    }
  cudaFree(words), cudaFree(regions), cudaFree(lengths_device), cudaFree(scores);
  std::printf("%s word_softmax=%d: worst relative error %.3g (tolerance %.1g)\n",
              dtype == ScalarType::kFloat32 ? "float32" : "bfloat16", word_softmax, worst, tolerance);
  return worst <= tolerance;
}

}  // namespace

int main() {
  bool ok = true;
  for (ScalarType dtype : {ScalarType::kFloat32, ScalarType::kBFloat16})
    for (bool word_softmax : {true, false}) ok = check(dtype, word_softmax) && ok;
  return ok ? 0 : 1;
}
