// bf16 x bf16 -> fp32 matrix products on the CPU's matrix units (AMX; AVX512-BF16 where oneDNN
// supports it) through ATen's oneDNN micro-kernel, at::native::cpublas::brgemm, for the word-region
// kernel's bf16 inputs. As on the GPU, the operands are bf16 (the inputs exactly; probabilities
// and gradients rounded to bf16) and every product accumulates in fp32. (The contrastive kernel's
// 128 x 256 x D tiles are too small to pay for converting and packing operands: measured slower.)
//
// The micro-kernel takes the right operand B (K x N) packed: in blocks of kColumnBlock columns,
// and with K padded to even, since bf16 pairs of rows are interleaved (VNNI). The left operand A
// is row-major bf16 with the same padded K (zeros past the true K).
#pragma once

#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace tgfr::cpu {

using at::BFloat16;

inline constexpr int64_t kColumnBlock = 64;

inline int64_t even(int64_t size) { return (size + 1) / 2 * 2; }

// Whether the CPU and ATen's oneDNN support these products (tgfr._C.cpu_bf16_products says so to Python).
inline bool bf16_products_supported() {
  static const bool supported = at::native::cpublas::could_pack(at::kBFloat16);
  return supported;
}

// bf16 inputs take these products where supported, unless TGFR_CPU_BF16_PRODUCTS=0 asks for the
// fp32 products (the kernels then convert bf16 inputs to fp32 and multiply in fp32, as on CPUs
// without bf16 matrix units).
inline bool bf16_products_enabled() {
  const char* setting = std::getenv("TGFR_CPU_BF16_PRODUCTS");
  if (setting != nullptr && std::strcmp(setting, "0") == 0) return false;
  return bf16_products_supported();
}

// float -> bf16 bits, rounded to nearest even as c10::BFloat16's conversion, NaN kept NaN, but
// branch-free, so that the copy loops below vectorize (c10's has a branch per element, and the
// copies would then cost more than the products they feed).
inline uint16_t bf16_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return value != value ? uint16_t(0x7FC0) : static_cast<uint16_t>(rounded);
}

inline uint16_t bf16_bits(BFloat16 value) { return value.x; }

// rows x cols of `source` (float or bf16; row stride source_stride; transposed: element (r, c) is
// source[c * source_stride + r]) into bf16 `target` with row stride target_stride, zeroing
// columns cols .. target_stride.
template <typename source_t>
void copy_to_bf16(const source_t* source, int64_t rows, int64_t cols, int64_t source_stride, bool transposed,
                  BFloat16* target, int64_t target_stride) {
  uint16_t* out = reinterpret_cast<uint16_t*>(target);  // BFloat16 is its 16 bits
  if (transposed) {  // read the source's rows contiguously, write the target's columns
    for (int64_t c = 0; c < cols; ++c) {
      const source_t* in = source + c * source_stride;
#pragma omp simd
      for (int64_t r = 0; r < rows; ++r) out[r * target_stride + c] = bf16_bits(in[r]);
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      const source_t* in = source + r * source_stride;
      uint16_t* row = out + r * target_stride;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) row[c] = bf16_bits(in[c]);
    }
  }
  for (int64_t r = 0; r < rows; ++r) std::fill(out + r * target_stride + cols, out + (r + 1) * target_stride, 0);
}

// A right operand B (K x N), packed once and used by many products.
class PackedRight {
 public:
  // B from `source` as copy_to_bf16 reads it (rows = K, cols = N). Reuses its buffers.
  template <typename source_t>
  void pack(const source_t* source, int64_t k, int64_t n, int64_t source_stride, bool transposed) {
    k_ = even(k);
    n_ = n;
    const int64_t blocks = (n + kColumnBlock - 1) / kColumnBlock;
    const int64_t padded_columns = blocks * kColumnBlock;
    // One staging buffer per thread, not per operand: the images packed once per call would
    // otherwise each keep a second copy of themselves.
    thread_local std::vector<BFloat16> staging;
    staging.resize(k_ * padded_columns);
    copy_to_bf16(source, k, n, source_stride, transposed, staging.data(), padded_columns);
    std::fill(staging.begin() + k * padded_columns, staging.end(), BFloat16(0.0f));
    packed_.resize(blocks * k_ * kColumnBlock);
    for (int64_t block = 0; block < blocks; ++block) {
      at::native::cpublas::pack(k_, kColumnBlock, padded_columns, kColumnBlock, at::kBFloat16, at::kBFloat16,
                                staging.data() + block * kColumnBlock, packed_.data() + block * k_ * kColumnBlock);
    }
  }

  // c (m x N, row stride ldc) = a (m x K, bf16, row stride lda) . B, or += with accumulate.
  void multiply(const BFloat16* a, int64_t m, int64_t lda, float* c, int64_t ldc, bool accumulate) const {
    for (int64_t block = 0; block * kColumnBlock < n_; ++block) {
      const int64_t columns = std::min(kColumnBlock, n_ - block * kColumnBlock);
      at::native::cpublas::brgemm(m, columns, k_, lda, kColumnBlock, ldc, accumulate, a,
                                  packed_.data() + block * k_ * kColumnBlock, c + block * kColumnBlock,
                                  /*is_vnni=*/true);
    }
  }

  int64_t padded_k() const { return k_; }

 private:
  int64_t k_ = 0, n_ = 0;
  std::vector<BFloat16> packed_;
};

// One thread's products: bf16 copies of left operands, a right operand packed on the fly, and
// the release of the matrix units' configuration, which the micro-kernel holds until then.
class Bf16Products {
 public:
  Bf16Products() = default;
  Bf16Products(const Bf16Products&) = delete;
  Bf16Products& operator=(const Bf16Products&) = delete;
  ~Bf16Products() {
    if (used_) at::native::cpublas::brgemm_release(/*is_vnni=*/true);
  }

  // out (m x n, row stride ldc) = left (m x k) . right (k x n), or += with accumulate; each
  // operand given as copy_to_bf16 reads it. Packing the right operand costs k x n copies against
  // the product's m x k x n multiply-adds.
  void multiply(const float* left, int64_t m, int64_t k, int64_t left_stride, bool left_transposed,
                const float* right, int64_t n, int64_t right_stride, bool right_transposed, float* out, int64_t ldc,
                bool accumulate) {
    right_.pack(right, k, n, right_stride, right_transposed);
    multiply(left, m, k, left_stride, left_transposed, right_, out, ldc, accumulate);
  }

  // The same with a right operand (k x n) packed beforehand.
  void multiply(const float* left, int64_t m, int64_t k, int64_t left_stride, bool left_transposed,
                const PackedRight& right, float* out, int64_t ldc, bool accumulate) {
    left_.resize(m * even(k));
    copy_to_bf16(left, m, k, left_stride, left_transposed, left_.data(), even(k));
    right.multiply(left_.data(), m, even(k), out, ldc, accumulate);
    used_ = true;
  }

  // With a left operand already in bf16, rows of even(k) elements.
  void multiply(const BFloat16* left, int64_t m, const PackedRight& right, float* out, int64_t ldc, bool accumulate) {
    right.multiply(left, m, right.padded_k(), out, ldc, accumulate);
    used_ = true;
  }

 private:
  std::vector<BFloat16> left_;
  PackedRight right_;
  bool used_ = false;
};

}  // namespace tgfr::cpu
