// Word-region similarity on CUDA (SPEC.md section 2): plain C++ launcher API, no torch headers.
//
// scores[i, j] = log sum_{t < lengths[i]} exp(gamma2 * cos(c_ijt, w_it)),
// c_ijt = sum_r alpha_ijtr v_jr, alpha = softmax_r(gamma1 * a), a = (softmax over valid t of) <w_it, v_jr>.
//
// All launchers are asynchronous on `stream` and return the launch error (cudaSuccess when the
// kernel was queued). Inputs have a contiguous last (feature) dimension; the other strides are in
// elements. Accumulation is fp32 whatever the input type.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tgfr::kernels {

enum class ScalarType { kFloat32, kBFloat16, kFloat16 };

struct WordRegionProblem {
  ScalarType dtype;
  const void* words;        // (num_captions, num_words, dim)
  int64_t words_stride_caption;
  int64_t words_stride_word;
  const int64_t* lengths;   // (num_captions,), each in [1, num_words]
  const void* regions;      // (num_images, num_regions, dim)
  int64_t regions_stride_image;
  int64_t regions_stride_region;
  int64_t num_captions;
  int64_t num_images;
  int64_t num_words;
  int64_t num_regions;
  int64_t dim;
  float gamma1;
  float gamma2;
  bool word_softmax;
};

// scores: (num_captions, num_images) fp32, row stride scores_stride_caption, last dim contiguous.
cudaError_t word_region_scores_forward(const WordRegionProblem& problem, float* scores,
                                       int64_t scores_stride_caption, cudaStream_t stream);

// Gradients of sum(grad_scores * scores). grad_words (num_captions, num_words, dim) and
// grad_regions (num_images, num_regions, dim) are fp32, contiguous and zero-filled by the caller;
// the kernel adds into them with atomics (summation order varies from run to run).
cudaError_t word_region_scores_backward(const WordRegionProblem& problem, const float* grad_scores,
                                        int64_t grad_scores_stride_caption, float* grad_words,
                                        float* grad_regions, cudaStream_t stream);

// alpha of the pairs (i, i) (needs num_images == num_captions): (num_captions, num_words,
// num_regions) fp32 contiguous, zeros at padded words.
cudaError_t word_region_attention(const WordRegionProblem& problem, float* alpha, cudaStream_t stream);

// Largest batches one launch takes (grid limits: a block per caption on the grid's x axis, a block
// per group of 4 images on its y axis, at most 65535); launchers fail with cudaErrorInvalidValue
// past them. Offsets into the tensors are 64-bit, so these are the only size limits.
inline constexpr int64_t kMaxCaptions = (int64_t{1} << 31) - 1;
inline constexpr int64_t kMaxImages = int64_t{65535} * 4;

// Dynamic shared memory one thread block needs (bytes); launchers fail with
// cudaErrorInvalidConfiguration when it exceeds the device's opt-in limit.
size_t word_region_shared_memory_bytes(const WordRegionProblem& problem, bool backward);

}  // namespace tgfr::kernels
