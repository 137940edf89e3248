// CUDA kernels of the word-region similarity; see word_region.cuh for the API.
//
// One thread block takes one caption and a group of kImagesPerBlock images. Per pair, everything
// lives in shared memory: the caption's words (T_pad x D_pad), the raw T_pad x R_pad products, the
// softmax statistics and the T_pad x D_pad context. The image's regions stream through shared
// memory kChunk rows at a time (twice in the forward: for the products and for the context).
// Products of 16-bit inputs use tensor cores through wmma (m16n16k16, fp32 accumulators); fp32
// inputs use a SIMT loop with the same interface (exact fp32, no tf32).
//
// Backward by recomputation: the forward of the pair is repeated, then a third pass over the
// region chunks forms d(alpha), d(a) and the products of the gradients. d(words) of the caption is
// accumulated in shared memory over the block's images and added to global memory once;
// d(regions) of each chunk is added with fp32 atomics (the R x D tile of an image cannot stay
// on chip across captions; see tgfr/ops/word_region_triton.py for the same choice in Triton).
#include "word_region.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "tgfr's word-region kernels need sm_80 or newer (bf16 tensor cores)"
#endif

namespace tgfr::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 16;   // wmma tile edge; T, R (chunk) and D are padded to multiples of it
constexpr int kChunk = 16;  // regions per streamed chunk
constexpr int kImagesPerBlock = 4;
constexpr float kCosEps = 1e-8f;
constexpr size_t kAlign = 128;

__host__ __device__ inline int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ inline T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16(x);
  } else {
    return __float2half(x);
  }
}

__device__ inline float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ inline float warp_max(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Offsets (bytes) of the shared-memory buffers of one block; computed identically on host and device.
struct Layout {
  int t_pad, r_pad, d_pad;
  size_t words, chunk, logits, col_max, col_sum, row_max, row_sum, word_norm, cos, delta, probs,
      context;
  // Backward only.
  size_t grad_context_in, grad_alpha, grad_dots_in, grad_words, grad_chunk;
  size_t bytes;
};

__host__ inline Layout make_layout(const WordRegionProblem& p, bool backward) {
  const size_t element = p.dtype == ScalarType::kFloat32 ? 4 : 2;
  Layout l{};
  l.t_pad = static_cast<int>(round_up(p.num_words, kTile));
  l.r_pad = static_cast<int>(round_up(p.num_regions, kChunk));
  l.d_pad = static_cast<int>(round_up(p.dim, kTile));
  size_t offset = 0;
  auto take = [&offset](size_t bytes) {
    const size_t start = offset;
    offset = round_up(static_cast<int64_t>(offset + bytes), kAlign);
    return start;
  };
  const size_t t = l.t_pad, r = l.r_pad, d = l.d_pad;
  l.words = take(t * d * element);
  l.chunk = take(kChunk * d * element);
  l.logits = take(t * r * 4);
  l.col_max = take(r * 4);
  l.col_sum = take(r * 4);
  l.row_max = take(t * 4);
  l.row_sum = take(t * 4);
  l.word_norm = take(t * 4);
  l.cos = take(t * 4);
  l.delta = take(t * 4);
  l.probs = take(t * kChunk * element);
  l.context = take(t * d * 4);
  if (backward) {
    l.grad_context_in = take(t * d * element);
    l.grad_alpha = take(t * kChunk * 4);
    l.grad_dots_in = take(t * kChunk * element);
    l.grad_words = take(t * d * 4);
    l.grad_chunk = take(kChunk * d * 4);
  }
  l.bytes = offset;
  return l;
}

// c (m x n, fp32, row-major, ldc) = [c +] A (m x k) B (k x n), all in shared memory, m, n, k
// multiples of 16. A is read row-major from `a` (a[i * lda + kk]) or, when kTransposeA, as the
// transpose of a row-major array (a[kk * lda + i]); likewise B (b[kk * ldb + j] or b[j * ldb + kk]).
// Each warp owns whole 16x16 output tiles, so no synchronization is needed inside.
template <typename T, bool kTransposeA, bool kTransposeB>
__device__ void shared_gemm(const T* a, int lda, const T* b, int ldb, float* c, int ldc, int m, int n,
                            int k, bool accumulate) {
  const int warp = threadIdx.x / 32;
  if constexpr (std::is_same_v<T, float>) {
    for (int index = threadIdx.x; index < m * n; index += kThreads) {
      const int i = index / n, j = index % n;
      float sum = accumulate ? c[i * ldc + j] : 0.0f;
      for (int kk = 0; kk < k; ++kk) {
        const float x = kTransposeA ? a[kk * lda + i] : a[i * lda + kk];
        const float y = kTransposeB ? b[j * ldb + kk] : b[kk * ldb + j];
        sum = fmaf(x, y, sum);
      }
      c[i * ldc + j] = sum;
    }
  } else {
    namespace wmma = nvcuda::wmma;
    using LayoutA = std::conditional_t<kTransposeA, wmma::col_major, wmma::row_major>;
    using LayoutB = std::conditional_t<kTransposeB, wmma::col_major, wmma::row_major>;
    wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, T, LayoutA> fragment_a;
    wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, T, LayoutB> fragment_b;
    wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> fragment_c;
    const int tiles_n = n / kTile;
    for (int tile = warp; tile < (m / kTile) * tiles_n; tile += kWarps) {
      const int i0 = tile / tiles_n * kTile, j0 = tile % tiles_n * kTile;
      float* c_tile = c + i0 * ldc + j0;
      if (accumulate) {
        wmma::load_matrix_sync(fragment_c, c_tile, ldc, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(fragment_c, 0.0f);
      }
      for (int k0 = 0; k0 < k; k0 += kTile) {
        wmma::load_matrix_sync(fragment_a, kTransposeA ? a + k0 * lda + i0 : a + i0 * lda + k0, lda);
        wmma::load_matrix_sync(fragment_b, kTransposeB ? b + j0 * ldb + k0 : b + k0 * ldb + j0, ldb);
        wmma::mma_sync(fragment_c, fragment_a, fragment_b, fragment_c);
      }
      wmma::store_matrix_sync(c_tile, fragment_c, ldc, wmma::mem_row_major);
    }
  }
}

// The word softmax of one (caption, image) pair: the largest cosine and log sum_t exp(gamma2 (cos[t] - top_cos)).
struct WordSoftmax {
  float top_cos, log_total;
};

// Shared-memory view of one block's buffers, and the per-pair steps of the forward.
template <typename T>
struct Pair {
  const WordRegionProblem& p;
  const Layout& l;
  char* base;
  int length;  // valid words of the block's caption

  __device__ T* words() const { return reinterpret_cast<T*>(base + l.words); }
  __device__ T* chunk() const { return reinterpret_cast<T*>(base + l.chunk); }
  __device__ T* probs() const { return reinterpret_cast<T*>(base + l.probs); }
  __device__ float* f32(size_t offset) const { return reinterpret_cast<float*>(base + offset); }

  // Copies rows [start, start + kChunk) of image `image`'s regions into chunk(), zeros past R and D.
  __device__ void load_chunk(int64_t image, int start) const {
    const T* source = static_cast<const T*>(p.regions) + image * p.regions_stride_image;
    T* target = chunk();
    for (int index = threadIdx.x; index < kChunk * l.d_pad; index += kThreads) {
      const int row = index / l.d_pad, column = index % l.d_pad;
      const int region = start + row;
      target[index] = (region < p.num_regions && column < p.dim)
                          ? source[region * p.regions_stride_region + column]
                          : from_float<T>(0.0f);
    }
  }

  // Loads the caption's words (zeros at padded words and columns) and their norms.
  __device__ void load_words(int64_t caption) const {
    const T* source = static_cast<const T*>(p.words) + caption * p.words_stride_caption;
    T* target = words();
    for (int index = threadIdx.x; index < l.t_pad * l.d_pad; index += kThreads) {
      const int word = index / l.d_pad, column = index % l.d_pad;
      target[index] = (word < length && column < p.dim) ? source[word * p.words_stride_word + column]
                                                        : from_float<T>(0.0f);
    }
    __syncthreads();
    float* norms = f32(l.word_norm);
    for (int word = threadIdx.x / 32; word < l.t_pad; word += kWarps) {
      float sum = 0.0f;
      for (int column = threadIdx.x % 32; column < l.d_pad; column += 32) {
        const float x = to_float(target[word * l.d_pad + column]);
        sum += x * x;
      }
      sum = warp_sum(sum);
      if (threadIdx.x % 32 == 0) norms[word] = sqrtf(sum);
    }
  }

  // a[t, r]: the raw product, or its softmax over the valid words when word_softmax.
  __device__ float attn(int word, int region) const {
    const float dot = f32(l.logits)[word * l.r_pad + region];
    if (!p.word_softmax) return dot;
    if (word >= length) return 0.0f;
    return __expf(dot - f32(l.col_max)[region]) / f32(l.col_sum)[region];
  }

  // alpha[t, r] = softmax over regions < R of gamma1 * a[t, r]; 0 at padded regions.
  __device__ float alpha(int word, int region) const {
    if (region >= p.num_regions) return 0.0f;
    return __expf(p.gamma1 * attn(word, region) - f32(l.row_max)[word]) / f32(l.row_sum)[word];
  }

  // Raw products, both softmax statistics and the context of every word against `image`.
  __device__ void attend(int64_t image) const {
    for (int start = 0; start < l.r_pad; start += kChunk) {
      load_chunk(image, start);
      __syncthreads();
      shared_gemm<T, false, true>(words(), l.d_pad, chunk(), l.d_pad, f32(l.logits) + start, l.r_pad,
                                  l.t_pad, kChunk, l.d_pad, false);
      __syncthreads();
    }
    if (p.word_softmax) {
      for (int region = threadIdx.x; region < l.r_pad; region += kThreads) {
        float top = -INFINITY;
        for (int word = 0; word < length; ++word) top = fmaxf(top, f32(l.logits)[word * l.r_pad + region]);
        float total = 0.0f;
        for (int word = 0; word < length; ++word) total += __expf(f32(l.logits)[word * l.r_pad + region] - top);
        f32(l.col_max)[region] = top;
        f32(l.col_sum)[region] = total;
      }
      __syncthreads();
    }
    for (int word = threadIdx.x / 32; word < l.t_pad; word += kWarps) {
      float top = -INFINITY;
      for (int region = threadIdx.x % 32; region < p.num_regions; region += 32)
        top = fmaxf(top, p.gamma1 * attn(word, region));
      top = warp_max(top);
      float total = 0.0f;
      for (int region = threadIdx.x % 32; region < p.num_regions; region += 32)
        total += __expf(p.gamma1 * attn(word, region) - top);
      total = warp_sum(total);
      if (threadIdx.x % 32 == 0) {
        f32(l.row_max)[word] = top;
        f32(l.row_sum)[word] = total;
      }
    }
    __syncthreads();
    for (int start = 0; start < l.r_pad; start += kChunk) {
      load_chunk(image, start);
      load_probs(start);
      __syncthreads();
      shared_gemm<T, false, false>(probs(), kChunk, chunk(), l.d_pad, f32(l.context), l.d_pad, l.t_pad,
                                   l.d_pad, kChunk, start > 0);
      __syncthreads();
    }
  }

  // probs() = alpha of the regions [start, start + kChunk), in the input type.
  __device__ void load_probs(int start) const {
    for (int index = threadIdx.x; index < l.t_pad * kChunk; index += kThreads) {
      probs()[index] = from_float<T>(alpha(index / kChunk, start + index % kChunk));
    }
  }

  // cos[t] of every word with its context; returns to all threads log sum_{t < length} exp(gamma2 cos[t])
  // as gamma2 * top_cos + log_total. The backward's weights exp(gamma2 (cos[t] - top_cos) - log_total) take
  // the difference of the cosines before gamma2 scales it, as the CPU and Triton kernels do: rounding
  // gamma2 cos[t] and the score apart gave them a relative error that grows as gamma2 * 2^-24.
  __device__ WordSoftmax word_softmax() const {
    float* cos = f32(l.cos);
    for (int word = threadIdx.x / 32; word < l.t_pad; word += kWarps) {
      float dot = 0.0f, squares = 0.0f;
      for (int column = threadIdx.x % 32; column < l.d_pad; column += 32) {
        const float c = f32(l.context)[word * l.d_pad + column];
        dot += c * to_float(words()[word * l.d_pad + column]);
        squares += c * c;
      }
      dot = warp_sum(dot);
      squares = warp_sum(squares);
      if (threadIdx.x % 32 == 0) cos[word] = dot / fmaxf(sqrtf(squares) * f32(l.word_norm)[word], kCosEps);
    }
    __syncthreads();
    float top_cos = -INFINITY;
    for (int word = 0; word < length; ++word) top_cos = fmaxf(top_cos, cos[word]);
    float total = 0.0f;
    for (int word = 0; word < length; ++word) total += __expf(p.gamma2 * (cos[word] - top_cos));
    return {top_cos, __logf(total)};
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(WordRegionProblem p, Layout l, float* scores,
                                                           int64_t scores_stride) {
  extern __shared__ __align__(kAlign) char shared[];
  const int64_t caption = blockIdx.x;
  const Pair<T> pair{p, l, shared, static_cast<int>(p.lengths[caption])};
  pair.load_words(caption);
  for (int offset = 0; offset < kImagesPerBlock; ++offset) {
    const int64_t image = static_cast<int64_t>(blockIdx.y) * kImagesPerBlock + offset;
    if (image >= p.num_images) break;
    __syncthreads();
    pair.attend(image);
    const WordSoftmax softmax = pair.word_softmax();
    if (threadIdx.x == 0) scores[caption * scores_stride + image] = p.gamma2 * softmax.top_cos + softmax.log_total;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_kernel(WordRegionProblem p, Layout l, const float* grad_scores,
                                                            int64_t grad_stride, float* grad_words,
                                                            float* grad_regions) {
  extern __shared__ __align__(kAlign) char shared[];
  const int64_t caption = blockIdx.x;
  const Pair<T> pair{p, l, shared, static_cast<int>(p.lengths[caption])};
  T* grad_context_in = reinterpret_cast<T*>(shared + l.grad_context_in);
  T* grad_dots_in = reinterpret_cast<T*>(shared + l.grad_dots_in);
  float* grad_alpha = pair.f32(l.grad_alpha);
  float* grad_words_tile = pair.f32(l.grad_words);
  float* grad_chunk = pair.f32(l.grad_chunk);
  float* context = pair.f32(l.context);
  float* delta = pair.f32(l.delta);
  pair.load_words(caption);
  for (int index = threadIdx.x; index < l.t_pad * l.d_pad; index += kThreads) grad_words_tile[index] = 0.0f;
  for (int offset = 0; offset < kImagesPerBlock; ++offset) {
    const int64_t image = static_cast<int64_t>(blockIdx.y) * kImagesPerBlock + offset;
    if (image >= p.num_images) break;
    __syncthreads();
    pair.attend(image);
    const WordSoftmax softmax = pair.word_softmax();
    const float grad_score = grad_scores[caption * grad_stride + image];
    // Gradient of each word's context (overwrites the context) and the direct d(words) term.
    for (int word = threadIdx.x / 32; word < l.t_pad; word += kWarps) {
      const float cos = pair.f32(l.cos)[word];
      const float grad_cos =
          word < pair.length
              ? grad_score * p.gamma2 * __expf(p.gamma2 * (cos - softmax.top_cos) - softmax.log_total)
              : 0.0f;
      float squares = 0.0f;
      for (int column = threadIdx.x % 32; column < l.d_pad; column += 32) {
        const float c = context[word * l.d_pad + column];
        squares += c * c;
      }
      const float context_norm = sqrtf(warp_sum(squares));
      const float word_norm = pair.f32(l.word_norm)[word];
      const float norms = context_norm * word_norm;
      const bool unclamped = norms > kCosEps;
      const float scale = grad_cos / (unclamped ? norms : kCosEps);
      const float context_term = unclamped ? grad_cos * cos / (context_norm * context_norm) : 0.0f;
      const float word_term = unclamped ? grad_cos * cos / (word_norm * word_norm) : 0.0f;
      float dot = 0.0f;
      for (int column = threadIdx.x % 32; column < l.d_pad; column += 32) {
        const int index = word * l.d_pad + column;
        const float c = context[index];
        const float w = to_float(pair.words()[index]);
        const float grad_c = scale * w - context_term * c;
        grad_words_tile[index] += scale * c - word_term * w;
        dot += grad_c * c;
        context[index] = grad_c;
        grad_context_in[index] = from_float<T>(grad_c);
      }
      dot = warp_sum(dot);
      if (threadIdx.x % 32 == 0) delta[word] = dot;  // sum_r alpha_tr dalpha_tr
    }
    __syncthreads();
    for (int start = 0; start < l.r_pad; start += kChunk) {
      pair.load_chunk(image, start);
      pair.load_probs(start);
      __syncthreads();
      shared_gemm<T, false, true>(grad_context_in, l.d_pad, pair.chunk(), l.d_pad, grad_alpha, kChunk,
                                  l.t_pad, kChunk, l.d_pad, false);
      __syncthreads();
      // d(a) = gamma1 alpha (d(alpha) - delta), kept in grad_alpha.
      for (int index = threadIdx.x; index < l.t_pad * kChunk; index += kThreads) {
        const int word = index / kChunk;
        grad_alpha[index] = p.gamma1 * pair.alpha(word, start + index % kChunk) * (grad_alpha[index] - delta[word]);
      }
      __syncthreads();
      // d(raw products): through the softmax over the caption's words (one column per thread).
      for (int column = threadIdx.x; column < kChunk; column += kThreads) {
        const int region = start + column;
        float weighted = 0.0f;
        if (p.word_softmax) {
          for (int word = 0; word < pair.length; ++word)
            weighted += pair.attn(word, region) * grad_alpha[word * kChunk + column];
        }
        for (int word = 0; word < l.t_pad; ++word) {
          const float grad_attn = grad_alpha[word * kChunk + column];
          const float grad_dot = p.word_softmax ? pair.attn(word, region) * (grad_attn - weighted) : grad_attn;
          grad_dots_in[word * kChunk + column] = from_float<T>(grad_dot);
        }
      }
      __syncthreads();
      shared_gemm<T, false, false>(grad_dots_in, kChunk, pair.chunk(), l.d_pad, grad_words_tile, l.d_pad,
                                   l.t_pad, l.d_pad, kChunk, true);
      shared_gemm<T, true, false>(pair.probs(), kChunk, grad_context_in, l.d_pad, grad_chunk, l.d_pad,
                                  kChunk, l.d_pad, l.t_pad, false);
      __syncthreads();
      shared_gemm<T, true, false>(grad_dots_in, kChunk, pair.words(), l.d_pad, grad_chunk, l.d_pad, kChunk,
                                  l.d_pad, l.t_pad, true);
      __syncthreads();
      float* target = grad_regions + (image * p.num_regions + start) * p.dim;
      for (int index = threadIdx.x; index < kChunk * l.d_pad; index += kThreads) {
        const int row = index / l.d_pad, column = index % l.d_pad;
        if (start + row < p.num_regions && column < p.dim) atomicAdd(target + row * p.dim + column, grad_chunk[index]);
      }
      __syncthreads();
    }
  }
  __syncthreads();
  float* target = grad_words + caption * p.num_words * p.dim;
  for (int index = threadIdx.x; index < l.t_pad * l.d_pad; index += kThreads) {
    const int word = index / l.d_pad, column = index % l.d_pad;
    if (word < pair.length && column < p.dim) atomicAdd(target + word * p.dim + column, grad_words_tile[index]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_kernel(WordRegionProblem p, Layout l, float* alpha) {
  extern __shared__ __align__(kAlign) char shared[];
  const int64_t caption = blockIdx.x;
  const Pair<T> pair{p, l, shared, static_cast<int>(p.lengths[caption])};
  pair.load_words(caption);
  __syncthreads();
  pair.attend(caption);
  float* target = alpha + caption * p.num_words * p.num_regions;
  for (int64_t index = threadIdx.x; index < p.num_words * p.num_regions; index += kThreads) {
    const int word = static_cast<int>(index / p.num_regions), region = static_cast<int>(index % p.num_regions);
    target[index] = word < pair.length ? pair.alpha(word, region) : 0.0f;
  }
}

// Sets the kernel's dynamic shared memory and launches it; `launch` queues the kernel itself.
template <typename Kernel, typename Launch>
cudaError_t launch_with_shared_memory(Kernel kernel, size_t bytes, Launch launch) {
  int device = 0, limit = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) error = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (error != cudaSuccess) return error;
  if (bytes > static_cast<size_t>(limit)) return cudaErrorInvalidConfiguration;
  error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (error != cudaSuccess) return error;
  launch();
  return cudaGetLastError();
}

template <template <typename> class Body>
cudaError_t dispatch(ScalarType dtype, const Body<float>& as_float, const Body<__nv_bfloat16>& as_bfloat16,
                     const Body<__half>& as_half) {
  switch (dtype) {
    case ScalarType::kFloat32: return as_float();
    case ScalarType::kBFloat16: return as_bfloat16();
    case ScalarType::kFloat16: return as_half();
  }
  return cudaErrorInvalidValue;
}

dim3 pair_grid(const WordRegionProblem& p) {
  return dim3(static_cast<unsigned>(p.num_captions),
              static_cast<unsigned>((p.num_images + kImagesPerBlock - 1) / kImagesPerBlock));
}

static_assert(kMaxImages == int64_t{65535} * kImagesPerBlock, "kMaxImages (word_region.cuh) follows kImagesPerBlock");

// `pairs`: the launch's grid has image groups (forward, backward), not one block per caption only.
bool valid(const WordRegionProblem& p, bool pairs) {
  return p.num_captions > 0 && p.num_images > 0 && p.num_words > 0 && p.num_regions > 0 && p.dim > 0 &&
         p.num_captions <= kMaxCaptions && (!pairs || p.num_images <= kMaxImages);
}

template <typename T>
struct Forward {
  const WordRegionProblem* p;
  float* scores;
  int64_t stride;
  cudaStream_t stream;
  cudaError_t operator()() const {
    const Layout l = make_layout(*p, false);
    return launch_with_shared_memory(forward_kernel<T>, l.bytes, [&] {
      forward_kernel<T><<<pair_grid(*p), kThreads, l.bytes, stream>>>(*p, l, scores, stride);
    });
  }
};

template <typename T>
struct Backward {
  const WordRegionProblem* p;
  const float* grad_scores;
  int64_t stride;
  float* grad_words;
  float* grad_regions;
  cudaStream_t stream;
  cudaError_t operator()() const {
    const Layout l = make_layout(*p, true);
    return launch_with_shared_memory(backward_kernel<T>, l.bytes, [&] {
      backward_kernel<T><<<pair_grid(*p), kThreads, l.bytes, stream>>>(*p, l, grad_scores, stride, grad_words,
                                                                        grad_regions);
    });
  }
};

template <typename T>
struct Attention {
  const WordRegionProblem* p;
  float* alpha;
  cudaStream_t stream;
  cudaError_t operator()() const {
    const Layout l = make_layout(*p, false);
    return launch_with_shared_memory(attention_kernel<T>, l.bytes, [&] {
      attention_kernel<T><<<static_cast<unsigned>(p->num_captions), kThreads, l.bytes, stream>>>(*p, l, alpha);
    });
  }
};

}  // namespace

size_t word_region_shared_memory_bytes(const WordRegionProblem& problem, bool backward) {
  return make_layout(problem, backward).bytes;
}

cudaError_t word_region_scores_forward(const WordRegionProblem& problem, float* scores,
                                       int64_t scores_stride_caption, cudaStream_t stream) {
  if (!valid(problem, true)) return cudaErrorInvalidValue;
  return dispatch<Forward>(problem.dtype, {&problem, scores, scores_stride_caption, stream},
                           {&problem, scores, scores_stride_caption, stream},
                           {&problem, scores, scores_stride_caption, stream});
}

cudaError_t word_region_scores_backward(const WordRegionProblem& problem, const float* grad_scores,
                                        int64_t grad_scores_stride_caption, float* grad_words,
                                        float* grad_regions, cudaStream_t stream) {
  if (!valid(problem, true)) return cudaErrorInvalidValue;
  return dispatch<Backward>(
      problem.dtype, {&problem, grad_scores, grad_scores_stride_caption, grad_words, grad_regions, stream},
      {&problem, grad_scores, grad_scores_stride_caption, grad_words, grad_regions, stream},
      {&problem, grad_scores, grad_scores_stride_caption, grad_words, grad_regions, stream});
}

cudaError_t word_region_attention(const WordRegionProblem& problem, float* alpha, cudaStream_t stream) {
  if (!valid(problem, false) || problem.num_images != problem.num_captions) return cudaErrorInvalidValue;
  return dispatch<Attention>(problem.dtype, {&problem, alpha, stream}, {&problem, alpha, stream},
                             {&problem, alpha, stream});
}

}  // namespace tgfr::kernels
