// Element-wise and reduction loops of the fused CPU kernels, written so that GCC vectorizes them
// (-O3 -march=native -fopenmp -fno-trapping-math, setup.py): branch-free bodies and `omp simd`
// reductions, which allow the reassociation that plain -O3 forbids for floating point.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace tgfr::cpu {

// exp with ~2 ulp error on float (Cephes' expf polynomial); std::exp does not vectorize without
// -ffast-math, which would also break NaN propagation. NaN in gives NaN out. Below -87.3, where
// 2^n would leave the normal floats, the result is exactly 0 (subnormals flushed): a floor of
// ~1e-38 there instead sat in every softmax tail, and the backward multiplies those tails by
// gamma1 or the contrastive scale (up to float32's maximum), which turned it into errors of
// order 1. The select compiles to a blend, so the loops stay vectorized.
inline float vectorizable_exp(float x) {
  const bool underflows = x < -87.3f;  // false for NaN, which must reach the result
  x = std::max(x, -87.3f);  // x first: std::max/min return their first argument for NaN
  x = std::min(x, 88.3f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflows ? 0.0f : y * scale;
}

// float64 accumulation (used for gradcheck) keeps the exact libm exp.
inline double vectorizable_exp(double x) { return std::exp(x); }

template <typename acc_t>
inline acc_t dot(const acc_t* a, const acc_t* b, int64_t size) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < size; ++k) sum += a[k] * b[k];
  return sum;
}

template <typename acc_t>
inline acc_t max_of(const acc_t* x, int64_t size) {
  acc_t best = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : best)
  for (int64_t k = 0; k < size; ++k) best = std::max(best, x[k]);
  return best;
}

// y += scale * x
template <typename acc_t>
inline void axpy(acc_t scale, const acc_t* x, acc_t* y, int64_t size) {
#pragma omp simd
  for (int64_t k = 0; k < size; ++k) y[k] += scale * x[k];
}

// dst <- softmax(sharpness * src) along one row. With `src_scale`, src is first multiplied in
// place by it element-wise (finishing a column softmax in the same pass). NaN anywhere in the
// row gives a NaN row.
template <typename acc_t>
inline void softmax_row_into(acc_t* src, acc_t* dst, int64_t size, acc_t sharpness, const acc_t* src_scale) {
  acc_t top = -std::numeric_limits<acc_t>::infinity();
  if (src_scale != nullptr) {
#pragma omp simd reduction(max : top)
    for (int64_t k = 0; k < size; ++k) {
      src[k] *= src_scale[k];
      top = std::max(top, src[k]);
    }
  } else {
    top = max_of(src, size);
  }
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < size; ++k) {
    const acc_t e = vectorizable_exp(sharpness * (src[k] - top));
    dst[k] = e;
    sum += e;
  }
  const acc_t inverse = acc_t(1) / sum;
#pragma omp simd
  for (int64_t k = 0; k < size; ++k) dst[k] *= inverse;
}

// top[k] <- max over the rows of column k of a (rows x cols) row-major block (NaN skipped, as in
// max_of; -inf for no rows).
template <typename acc_t>
inline void column_max(const acc_t* block, int64_t rows, int64_t cols, acc_t* top) {
  std::fill(top, top + cols, -std::numeric_limits<acc_t>::infinity());
  for (int64_t row = 0; row < rows; ++row) {
    const acc_t* x = block + row * cols;
#pragma omp simd
    for (int64_t k = 0; k < cols; ++k) top[k] = std::max(top[k], x[k]);
  }
}

// First half of a softmax over the rows of each column of a (rows x cols) row-major block: in
// place, x <- exp(x - column max), and inverse_sums[k] <- 1 / sum of column k. Multiplying row
// by row with inverse_sums (softmax_row_into does it) finishes the softmax.
template <typename acc_t>
inline void exp_columns(acc_t* block, int64_t rows, int64_t cols, acc_t* inverse_sums) {
  acc_t* top = inverse_sums;  // holds the column maxima until the sums replace them
  column_max(block, rows, cols, top);
  for (int64_t row = 0; row < rows; ++row) {
    acc_t* x = block + row * cols;
#pragma omp simd
    for (int64_t k = 0; k < cols; ++k) x[k] = vectorizable_exp(x[k] - top[k]);
  }
  std::copy(block, block + cols, inverse_sums);
  for (int64_t row = 1; row < rows; ++row) {
    const acc_t* x = block + row * cols;
#pragma omp simd
    for (int64_t k = 0; k < cols; ++k) inverse_sums[k] += x[k];
  }
#pragma omp simd
  for (int64_t k = 0; k < cols; ++k) inverse_sums[k] = acc_t(1) / inverse_sums[k];
}

}  // namespace tgfr::cpu
