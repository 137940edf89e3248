// Fused word-region similarity on the CPU (SPEC.md section 2).
//
// Layout of the work: the valid words of all captions are packed into one (sum(lengths) x D)
// matrix, so a block of consecutive captions is a contiguous block of rows and padded words
// cost nothing. Each task takes a block of captions (~kRowsPerBlock packed rows) against one
// image at a time: the products with the image's regions are two GEMMs ((rows x D) . (D x R)
// and (rows x R) . (R x D)) on tiles that stay in cache, done by the BLAS behind at::mm
// (single-threaded inside at::parallel_for), and the two softmaxes and the cosines run in
// between on the (rows x R) tile. Nothing of size N*M*T*R or N*M*T*D is ever allocated.
// bf16 inputs take bf16 products with fp32 accumulation on CPUs with bf16 matrix units
// (bf16_products.h), as the GPU kernels do; fp32, float64 and the other CPUs take fp32 (float64)
// products.
//
// The backward recomputes each pair. d(words) of a caption sums over images and d(regions) of
// an image over captions; to accumulate both without races or per-thread copies, captions and
// images are split into P groups each (P threads) and visited in the rotation of
// group_rotation.h, so no two threads ever write the same rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "bf16_products.h"
#include "group_rotation.h"
#include "vector_math.h"

namespace tgfr::cpu {
namespace {

constexpr int64_t kRowsPerBlock = 192;
constexpr double kCosineEps = 1e-8;

struct Hyperparameters {
  double gamma1;
  double gamma2;
  bool word_softmax;
};

at::ScalarType accumulation_type(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

template <typename acc_t>
at::Tensor matrix(acc_t* data, int64_t rows, int64_t cols) {
  return at::from_blob(data, {rows, cols}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

template <typename acc_t>
at::Tensor matrix(const acc_t* data, int64_t rows, int64_t cols) {
  return matrix(const_cast<acc_t*>(data), rows, cols);
}

// The captions' valid words, packed: caption i owns rows [offsets[i], offsets[i + 1]).
struct PackedWords {
  at::Tensor rows;  // (sum(lengths), D) in the accumulation type
  std::vector<int64_t> offsets;
};

void check_lengths(const at::Tensor& lengths, int64_t num_words) {
  TORCH_CHECK_VALUE(lengths.scalar_type() == at::kLong, "lengths must be int64, got ", lengths.scalar_type());
  const int64_t* length = lengths.data_ptr<int64_t>();
  for (int64_t i = 0; i < lengths.size(0); ++i) {
    TORCH_CHECK_VALUE(length[i] >= 1 && length[i] <= num_words, "lengths must lie in [1, T=", num_words,
                      "], got lengths[", i, "] = ", length[i]);
  }
}

void check_inputs(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions) {
  TORCH_CHECK_VALUE(words.dim() == 3, "words must be (N, T, D), got shape ", words.sizes());
  TORCH_CHECK_VALUE(lengths.dim() == 1, "lengths must be (N,), got shape ", lengths.sizes());
  TORCH_CHECK_VALUE(regions.dim() == 3, "regions must be (M, R, D), got shape ", regions.sizes());
  TORCH_CHECK_VALUE(words.size(2) == regions.size(2), "regions must have D=", words.size(2), ", got ",
                    regions.size(2));
  TORCH_CHECK_VALUE(lengths.size(0) == words.size(0), "lengths must have N=", words.size(0), " entries");
  TORCH_CHECK_VALUE(words.size(0) >= 1, "words must have N >= 1 captions, got shape ", words.sizes());
  TORCH_CHECK_VALUE(words.size(1) >= 1, "words must have T >= 1 words per caption, got shape ", words.sizes());
  TORCH_CHECK_VALUE(regions.size(0) >= 1, "regions must have M >= 1 images, got shape ", regions.sizes());
  TORCH_CHECK_VALUE(regions.size(1) >= 1, "regions must have R >= 1 regions per image, got shape ", regions.sizes());
  TORCH_CHECK_VALUE(words.size(2) >= 1, "words and regions must have D >= 1 features, got shape ", words.sizes());
  TORCH_CHECK_TYPE(words.scalar_type() == regions.scalar_type(), "words and regions must share a dtype");
  // Integers would be converted (and the gradients truncated back), complex numbers cut to their real parts.
  const auto dtype = words.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                   "words and regions must be float32, float64, float16 or bfloat16, got ", dtype);
  check_lengths(lengths, words.size(1));
}

// Row index (i * T + t) in the flattened (N * T, D) words of every packed row.
at::Tensor packed_row_index(const PackedWords& packed, int64_t num_words) {
  const int64_t num_captions = static_cast<int64_t>(packed.offsets.size()) - 1;
  at::Tensor index = at::empty({packed.offsets.back()}, at::kLong);
  int64_t* out = index.data_ptr<int64_t>();
  for (int64_t i = 0; i < num_captions; ++i) {
    for (int64_t row = packed.offsets[i]; row < packed.offsets[i + 1]; ++row) *out++ = i * num_words + row - packed.offsets[i];
  }
  return index;
}

PackedWords pack_words(const at::Tensor& words, const at::Tensor& lengths) {
  const int64_t num_captions = words.size(0), num_words = words.size(1), dim = words.size(2);
  const int64_t* length = lengths.data_ptr<int64_t>();
  PackedWords packed;
  packed.offsets.resize(num_captions + 1, 0);
  for (int64_t i = 0; i < num_captions; ++i) packed.offsets[i + 1] = packed.offsets[i] + length[i];
  packed.rows = words.reshape({num_captions * num_words, dim})
                    .index_select(0, packed_row_index(packed, num_words))
                    .to(accumulation_type(words.scalar_type()))
                    .contiguous();
  return packed;
}

// Consecutive captions grouped so that each group has about `target_rows` packed rows;
// returns the first caption of every group and, last, the number of captions.
std::vector<int64_t> caption_blocks(const std::vector<int64_t>& offsets, int64_t first, int64_t last,
                                    int64_t target_rows) {
  std::vector<int64_t> starts{first};
  for (int64_t i = first; i < last; ++i) {
    if (offsets[i + 1] - offsets[starts.back()] > target_rows && i > starts.back()) starts.push_back(i);
  }
  starts.push_back(last);
  return starts;
}

// What the bf16 products of a call share: the packed words in bf16 and every image packed as a
// right operand, both ways round, straight from the bf16 regions (no fp32 copy of them is made).
struct Bf16Operands {
  std::vector<BFloat16> words;                 // (sum(lengths), even(D)), zeros past D
  int64_t words_stride = 0;                    // even(D)
  std::vector<PackedRight> images;             // per image: V (R x D)
  std::vector<PackedRight> transposed_images;  // per image: V^T (D x R)

  Bf16Operands(const at::Tensor& packed_rows, const at::Tensor& regions) {
    const int64_t rows = packed_rows.size(0), dim = packed_rows.size(1);
    const int64_t num_images = regions.size(0), num_regions = regions.size(1);
    words_stride = even(dim);
    words.resize(rows * words_stride);
    copy_to_bf16(packed_rows.data_ptr<float>(), rows, dim, dim, false, words.data(), words_stride);
    images.resize(num_images);
    transposed_images.resize(num_images);
    const BFloat16* image_data = regions.data_ptr<BFloat16>();
    at::parallel_for(0, num_images, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const BFloat16* image = image_data + j * num_regions * dim;
        images[j].pack(image, num_regions, dim, dim, /*transposed=*/false);
        transposed_images[j].pack(image, dim, num_regions, dim, /*transposed=*/true);
      }
    });
  }
};

// The products of one block of captions against image j: fp32 (float64) through at::mm on the
// images converted to acc_t, or, given bf16 operands, bf16 through the micro-kernel
// (bf16_products.h).
template <typename acc_t>
class PairProducts {
 public:
  // images: (M, R, D) in acc_t, contiguous; null with bf16 operands, which hold their own.
  PairProducts(const Bf16Operands* bf16, const acc_t* images, int64_t num_regions, int64_t dim)
      : bf16_(bf16), images_(images), num_regions_(num_regions), dim_(dim) {}

  // out (rows x R) = left (rows x D) . V_j^T; left_bf16: the same rows already in bf16, if any.
  void times_transposed_image(const acc_t* left, const BFloat16* left_bf16, int64_t rows, int64_t j, acc_t* out) {
    if constexpr (std::is_same_v<acc_t, float>) {
      if (bf16_ != nullptr) {
        const PackedRight& image_t = bf16_->transposed_images[j];
        if (left_bf16 != nullptr) {
          products_.multiply(left_bf16, rows, image_t, out, num_regions_, false);
        } else {
          products_.multiply(left, rows, dim_, dim_, false, image_t, out, num_regions_, false);
        }
        return;
      }
    }
    at::Tensor out_matrix = matrix(out, rows, num_regions_);
    at::mm_out(out_matrix, matrix(left, rows, dim_), image(j).t());
  }

  // out (rows x D) = left (rows x R) . V_j, or += with accumulate.
  void times_image(const acc_t* left, int64_t rows, int64_t j, acc_t* out, bool accumulate) {
    if constexpr (std::is_same_v<acc_t, float>) {
      if (bf16_ != nullptr) {
        products_.multiply(left, rows, num_regions_, num_regions_, false, bf16_->images[j], out, dim_, accumulate);
        return;
      }
    }
    at::Tensor out_matrix = matrix(out, rows, dim_);
    const at::Tensor left_matrix = matrix(left, rows, num_regions_), image_matrix = image(j);
    if (accumulate) {
      out_matrix.addmm_(left_matrix, image_matrix);
    } else {
      at::mm_out(out_matrix, left_matrix, image_matrix);
    }
  }

  // out (R x D) += left^T (R x rows) . right (rows x D).
  void add_transposed_times(const acc_t* left, const acc_t* right, int64_t rows, acc_t* out) {
    if constexpr (std::is_same_v<acc_t, float>) {
      if (bf16_ != nullptr) {
        products_.multiply(left, num_regions_, rows, num_regions_, /*left_transposed=*/true, right, dim_, dim_,
                           /*right_transposed=*/false, out, dim_, /*accumulate=*/true);
        return;
      }
    }
    matrix(out, num_regions_, dim_).addmm_(matrix(left, rows, num_regions_).t(), matrix(right, rows, dim_));
  }

 private:
  at::Tensor image(int64_t j) const { return matrix(images_ + j * num_regions_ * dim_, num_regions_, dim_); }

  const Bf16Operands* bf16_;
  const acc_t* images_;
  int64_t num_regions_, dim_;
  Bf16Products products_;
};

// Per-thread scratch for one block of captions against one image.
template <typename acc_t>
struct PairTiles {
  std::vector<acc_t> word_attention;    // (rows, R): a after the optional word softmax
  std::vector<acc_t> region_attention;  // (rows, R): alpha
  std::vector<acc_t> grad_attention;    // (rows, R): d(alpha), then d(a), then d(s)
  std::vector<acc_t> context;           // (rows, D): c, then d(c)
  std::vector<acc_t> column_buffer;     // (R)
  std::vector<acc_t> cosines;           // (rows)
  std::vector<acc_t> context_norms;     // (rows)
  PairProducts<acc_t> products;

  PairTiles(int64_t max_rows, int64_t num_regions, int64_t dim, bool backward, const Bf16Operands* bf16,
            const acc_t* images)
      : word_attention(max_rows * num_regions),
        region_attention(max_rows * num_regions),
        grad_attention(backward ? max_rows * num_regions : 0),
        context(max_rows * dim),
        column_buffer(num_regions),
        cosines(max_rows),
        context_norms(max_rows),
        products(bf16, images, num_regions, dim) {}
};

// Forward of one block of captions [first, last) against one image: fills tiles.word_attention,
// tiles.region_attention, tiles.context, tiles.cosines, tiles.context_norms.
template <typename acc_t>
void forward_block(const PackedWords& packed, const acc_t* word_norms, int64_t first, int64_t last,
                   int64_t image_index, int64_t num_regions, int64_t dim, const Hyperparameters& hyper,
                   const Bf16Operands* bf16, PairTiles<acc_t>& tiles) {
  const int64_t row0 = packed.offsets[first];
  const int64_t rows = packed.offsets[last] - row0;
  const acc_t* block_words = packed.rows.data_ptr<acc_t>() + row0 * dim;

  acc_t* a = tiles.word_attention.data();
  const BFloat16* block_words_bf16 = bf16 != nullptr ? bf16->words.data() + row0 * bf16->words_stride : nullptr;
  tiles.products.times_transposed_image(block_words, block_words_bf16, rows, image_index, a);
  acc_t* alpha = tiles.region_attention.data();
  acc_t* inverse_sums = tiles.column_buffer.data();
  for (int64_t i = first; i < last; ++i) {
    const int64_t begin = packed.offsets[i] - row0, end = packed.offsets[i + 1] - row0;
    if (hyper.word_softmax) exp_columns(a + begin * num_regions, end - begin, num_regions, inverse_sums);
    for (int64_t row = begin; row < end; ++row) {
      softmax_row_into(a + row * num_regions, alpha + row * num_regions, num_regions, acc_t(hyper.gamma1),
                       hyper.word_softmax ? inverse_sums : nullptr);
    }
  }

  acc_t* context = tiles.context.data();
  tiles.products.times_image(alpha, rows, image_index, context, /*accumulate=*/false);
  for (int64_t row = 0; row < rows; ++row) {
    const acc_t* c = context + row * dim;
    const acc_t context_norm = std::sqrt(dot(c, c, dim));
    const acc_t denominator = std::max(context_norm * word_norms[row0 + row], acc_t(kCosineEps));
    tiles.context_norms[row] = context_norm;
    tiles.cosines[row] = dot(c, block_words + row * dim, dim) / denominator;
  }
}

// score = log sum_t exp(gamma2 * cos_t) over one caption's rows of tiles.cosines, kept as
// gamma2 * top + log_sum with top = max_t cos_t, so that softmax_t = exp(gamma2 * (cos_t - top) -
// log_sum). gamma2 scales the differences, not the cosines: with a contracted (FMA) gamma2 * cos_t
// - max, exp would see the rounding error of the max, gamma2 * |cos| * 2^-24, which is not small
// for a large gamma2.
template <typename acc_t>
struct CaptionSoftmax {
  acc_t top, log_sum, gamma2;

  CaptionSoftmax(const acc_t* cosines, int64_t rows, acc_t gamma2) : gamma2(gamma2) {
    top = -std::numeric_limits<acc_t>::infinity();
    for (int64_t t = 0; t < rows; ++t) top = std::max(top, cosines[t]);
    acc_t sum = 0;
    for (int64_t t = 0; t < rows; ++t) sum += std::exp(gamma2 * (cosines[t] - top));
    log_sum = std::log(sum);
  }

  acc_t score() const { return gamma2 * top + log_sum; }
  acc_t probability(acc_t cosine) const { return std::exp(gamma2 * (cosine - top) - log_sum); }
};

// The bf16 operands of a call, when its inputs are bf16 and the CPU has bf16 products.
std::unique_ptr<Bf16Operands> bf16_operands(const PackedWords& packed, const at::Tensor& regions) {
  if (regions.scalar_type() != at::kBFloat16 || !bf16_products_enabled()) return nullptr;
  return std::make_unique<Bf16Operands>(packed.rows, regions);
}

// The images converted to the accumulation type for the fp32 (float64) products; undefined when
// bf16 operands were packed instead.
at::Tensor converted_images(const at::Tensor& regions, const PackedWords& packed, const Bf16Operands* bf16) {
  return bf16 != nullptr ? at::Tensor() : regions.to(packed.rows.scalar_type()).contiguous();
}

template <typename acc_t>
const acc_t* data_or_null(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.data_ptr<acc_t>() : nullptr;
}

template <typename acc_t>
at::Tensor scores_forward(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions,
                          const Hyperparameters& hyper) {
  const int64_t num_captions = words.size(0), num_images = regions.size(0);
  const int64_t num_regions = regions.size(1), dim = regions.size(2);
  const PackedWords packed = pack_words(words, lengths);
  const at::Tensor word_norms = packed.rows.norm(2, {1});
  const std::unique_ptr<Bf16Operands> bf16 = bf16_operands(packed, regions);
  const at::Tensor images = converted_images(regions, packed, bf16.get());
  at::Tensor scores = at::empty({num_captions, num_images}, packed.rows.options());

  const std::vector<int64_t> blocks = caption_blocks(packed.offsets, 0, num_captions, kRowsPerBlock);
  const int64_t num_blocks = static_cast<int64_t>(blocks.size()) - 1;
  int64_t max_rows = 0;
  for (int64_t b = 0; b < num_blocks; ++b) max_rows = std::max(max_rows, packed.offsets[blocks[b + 1]] - packed.offsets[blocks[b]]);

  const acc_t* norm_data = word_norms.data_ptr<acc_t>();
  acc_t* score_data = scores.data_ptr<acc_t>();
  at::parallel_for(0, num_blocks * num_images, 1, [&](int64_t begin, int64_t end) {
    PairTiles<acc_t> tiles(max_rows, num_regions, dim, /*backward=*/false, bf16.get(), data_or_null<acc_t>(images));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_images, j = task % num_images;
      const int64_t first = blocks[b], last = blocks[b + 1];
      forward_block(packed, norm_data, first, last, j, num_regions, dim, hyper, bf16.get(), tiles);
      for (int64_t i = first; i < last; ++i) {
        const int64_t local = packed.offsets[i] - packed.offsets[first];
        score_data[i * num_images + j] =
            CaptionSoftmax<acc_t>(tiles.cosines.data() + local, packed.offsets[i + 1] - packed.offsets[i],
                                  acc_t(hyper.gamma2)).score();
      }
    }
  });
  return scores;
}

// Backward of one block of captions against one image, accumulating into the block's rows of
// grad_rows (packed like the words) and into grad_image (R x D).
template <typename acc_t>
void backward_block(const PackedWords& packed, const acc_t* word_norms, int64_t first, int64_t last,
                    int64_t image_index, acc_t* grad_image, const acc_t* grad_score_column,
                    int64_t num_images, int64_t num_regions, int64_t dim, const Hyperparameters& hyper,
                    const Bf16Operands* bf16, acc_t* grad_rows, PairTiles<acc_t>& tiles) {
  forward_block(packed, word_norms, first, last, image_index, num_regions, dim, hyper, bf16, tiles);
  const int64_t row0 = packed.offsets[first];
  const int64_t rows = packed.offsets[last] - row0;
  const acc_t* block_words = packed.rows.data_ptr<acc_t>() + row0 * dim;
  acc_t* block_grad = grad_rows + row0 * dim;
  const acc_t gamma2 = acc_t(hyper.gamma2);

  // d(cos_t) = G * gamma2 * softmax_t(gamma2 * cos); then d(c_t) = a_t w_t + b_t c_t and the
  // direct d(w_t) = a_t c_t + e_t w_t, from cos = <c, w> / max(|c| |w|, eps).
  acc_t* context = tiles.context.data();
  for (int64_t i = first; i < last; ++i) {
    const int64_t local = packed.offsets[i] - row0;
    const int64_t length = packed.offsets[i + 1] - packed.offsets[i];
    const acc_t* cosines = tiles.cosines.data() + local;
    const acc_t grad_score = grad_score_column[i * num_images];
    const CaptionSoftmax<acc_t> softmax(cosines, length, gamma2);
    for (int64_t t = 0; t < length; ++t) {
      const int64_t row = local + t;
      const acc_t grad_cos = grad_score * gamma2 * softmax.probability(cosines[t]);
      const acc_t word_norm = word_norms[row0 + row], context_norm = tiles.context_norms[row];
      const acc_t product = context_norm * word_norm;
      acc_t a, b, e;
      if (product > acc_t(kCosineEps)) {
        a = grad_cos / product;
        b = -grad_cos * cosines[t] / (context_norm * context_norm);
        e = -grad_cos * cosines[t] / (word_norm * word_norm);
      } else {
        a = grad_cos / acc_t(kCosineEps);
        b = 0;
        e = 0;
      }
      acc_t* c = context + row * dim;
      const acc_t* w = block_words + row * dim;
      acc_t* grad_w = block_grad + row * dim;
      axpy(a, c, grad_w, dim);
      axpy(e, w, grad_w, dim);
#pragma omp simd
      for (int64_t k = 0; k < dim; ++k) c[k] = a * w[k] + b * c[k];
    }
  }

  acc_t* grad = tiles.grad_attention.data();
  tiles.products.times_transposed_image(context, nullptr, rows, image_index, grad);
  tiles.products.add_transposed_times(tiles.region_attention.data(), context, rows, grad_image);

  // Softmax over regions of gamma1 * a: d(a) = gamma1 * alpha * (d(alpha) - <alpha, d(alpha)>).
  const acc_t* alpha = tiles.region_attention.data();
  const acc_t gamma1 = acc_t(hyper.gamma1);
  for (int64_t row = 0; row < rows; ++row) {
    const acc_t* alpha_row = alpha + row * num_regions;
    acc_t* grad_row = grad + row * num_regions;
    const acc_t inner = dot(alpha_row, static_cast<const acc_t*>(grad_row), num_regions);
#pragma omp simd
    for (int64_t r = 0; r < num_regions; ++r) grad_row[r] = gamma1 * alpha_row[r] * (grad_row[r] - inner);
  }
  // Softmax over the caption's words: d(s) = a * (d(a) - sum_t a * d(a)), per region.
  if (hyper.word_softmax) {
    const acc_t* a = tiles.word_attention.data();
    acc_t* column_sum = tiles.column_buffer.data();
    for (int64_t i = first; i < last; ++i) {
      const int64_t begin = packed.offsets[i] - row0, end = packed.offsets[i + 1] - row0;
      std::fill(column_sum, column_sum + num_regions, acc_t(0));
      for (int64_t row = begin; row < end; ++row) {
        const acc_t* a_row = a + row * num_regions;
        const acc_t* grad_row = grad + row * num_regions;
#pragma omp simd
        for (int64_t r = 0; r < num_regions; ++r) column_sum[r] += a_row[r] * grad_row[r];
      }
      for (int64_t row = begin; row < end; ++row) {
        const acc_t* a_row = a + row * num_regions;
        acc_t* grad_row = grad + row * num_regions;
#pragma omp simd
        for (int64_t r = 0; r < num_regions; ++r) grad_row[r] = a_row[r] * (grad_row[r] - column_sum[r]);
      }
    }
  }
  tiles.products.times_image(grad, rows, image_index, block_grad, /*accumulate=*/true);
  tiles.products.add_transposed_times(grad, block_words, rows, grad_image);
}

// Caption groups with about equal numbers of packed rows.
std::vector<int64_t> row_balanced_split(const std::vector<int64_t>& offsets, int64_t parts) {
  const int64_t num_captions = static_cast<int64_t>(offsets.size()) - 1;
  std::vector<int64_t> bounds(parts + 1, num_captions);
  bounds[0] = 0;
  int64_t i = 0;
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = offsets.back() * p / parts;
    while (i < num_captions && offsets[i] < target) ++i;
    bounds[p] = std::max(i, bounds[p - 1]);
  }
  return bounds;
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> scores_backward(const at::Tensor& grad_scores, const at::Tensor& words,
                                                   const at::Tensor& lengths, const at::Tensor& regions,
                                                   const Hyperparameters& hyper) {
  const int64_t num_captions = words.size(0), num_words = words.size(1), num_images = regions.size(0);
  const int64_t num_regions = regions.size(1), dim = regions.size(2);
  const PackedWords packed = pack_words(words, lengths);
  const at::Tensor word_norms = packed.rows.norm(2, {1});
  const at::Tensor grad = grad_scores.to(packed.rows.scalar_type()).contiguous();
  const std::unique_ptr<Bf16Operands> bf16 = bf16_operands(packed, regions);
  const at::Tensor images = converted_images(regions, packed, bf16.get());
  at::Tensor grad_rows = at::zeros_like(packed.rows);
  at::Tensor grad_images = at::zeros(regions.sizes(), packed.rows.options());

  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), std::min(num_captions, num_images)));
  const std::vector<int64_t> caption_groups = row_balanced_split(packed.offsets, parts);
  const std::vector<int64_t> image_groups = even_split(num_images, parts);
  int64_t max_rows = 0;
  std::vector<std::vector<int64_t>> group_blocks(parts);
  for (int64_t g = 0; g < parts; ++g) {
    group_blocks[g] = caption_blocks(packed.offsets, caption_groups[g], caption_groups[g + 1], kRowsPerBlock);
    for (size_t b = 0; b + 1 < group_blocks[g].size(); ++b) {
      max_rows = std::max(max_rows, packed.offsets[group_blocks[g][b + 1]] - packed.offsets[group_blocks[g][b]]);
    }
  }

  const acc_t* norm_data = word_norms.data_ptr<acc_t>();
  const acc_t* grad_data = grad.data_ptr<acc_t>();
  acc_t* grad_rows_data = grad_rows.data_ptr<acc_t>();
  acc_t* grad_image_data = grad_images.data_ptr<acc_t>();
  for (int64_t step = 0; step < parts; ++step) {
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      PairTiles<acc_t> tiles(max_rows, num_regions, dim, /*backward=*/true, bf16.get(), data_or_null<acc_t>(images));
      for (int64_t k = begin; k < end; ++k) {
        const std::vector<int64_t>& blocks = group_blocks[k];
        const int64_t image_group = rotated_group(k, step, parts);
        for (int64_t j = image_groups[image_group]; j < image_groups[image_group + 1]; ++j) {
          for (size_t b = 0; b + 1 < blocks.size(); ++b) {
            if (blocks[b] == blocks[b + 1]) continue;
            backward_block(packed, norm_data, blocks[b], blocks[b + 1], j, grad_image_data + j * num_regions * dim,
                           grad_data + j, num_images, num_regions, dim, hyper, bf16.get(), grad_rows_data, tiles);
          }
        }
      }
    });
  }

  at::Tensor grad_words = at::zeros({num_captions * num_words, dim}, words.options());
  grad_words.index_copy_(0, packed_row_index(packed, num_words), grad_rows.to(words.scalar_type()));
  grad_words = grad_words.view({num_captions, num_words, dim});
  return {grad_words, grad_images.to(regions.scalar_type())};
}

template <typename acc_t>
at::Tensor paired_attention(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions,
                            const Hyperparameters& hyper) {
  const int64_t num_captions = words.size(0), num_words = words.size(1);
  const int64_t num_regions = regions.size(1), dim = regions.size(2);
  const PackedWords packed = pack_words(words, lengths);
  const at::Tensor word_norms = packed.rows.norm(2, {1});
  const std::unique_ptr<Bf16Operands> bf16 = bf16_operands(packed, regions);
  const at::Tensor images = converted_images(regions, packed, bf16.get());
  at::Tensor attention = at::zeros({num_captions, num_words, num_regions}, packed.rows.options());
  int64_t max_rows = 0;
  for (int64_t i = 0; i < num_captions; ++i) max_rows = std::max(max_rows, packed.offsets[i + 1] - packed.offsets[i]);

  acc_t* attention_data = attention.data_ptr<acc_t>();
  at::parallel_for(0, num_captions, 1, [&](int64_t begin, int64_t end) {
    PairTiles<acc_t> tiles(max_rows, num_regions, dim, /*backward=*/false, bf16.get(), data_or_null<acc_t>(images));
    for (int64_t i = begin; i < end; ++i) {
      forward_block(packed, word_norms.data_ptr<acc_t>(), i, i + 1, i, num_regions, dim, hyper, bf16.get(), tiles);
      const int64_t rows = packed.offsets[i + 1] - packed.offsets[i];
      std::copy(tiles.region_attention.begin(), tiles.region_attention.begin() + rows * num_regions,
                attention_data + i * num_words * num_regions);
    }
  });
  return attention;
}

// Checked in the accumulation type: an infinite gamma makes every score NaN (inf - inf in the log-sum-exps),
// and a float64 gamma past float32's range is inf in a float32 kernel.
void check_hyperparameters(const Hyperparameters& hyper, at::ScalarType accumulation) {
  const bool in_range = accumulation == at::kDouble
                            ? std::isfinite(hyper.gamma1) && std::isfinite(hyper.gamma2)
                            : std::isfinite(static_cast<float>(hyper.gamma1)) &&
                                  std::isfinite(static_cast<float>(hyper.gamma2));
  TORCH_CHECK_VALUE(hyper.gamma1 > 0 && hyper.gamma2 > 0 && in_range, "gamma1 and gamma2 must be finite and positive ",
                    "in the kernel's ", accumulation == at::kDouble ? "float64" : "float32", ", got ", hyper.gamma1,
                    " and ", hyper.gamma2);
}

at::Tensor word_region_scores(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions,
                              double gamma1, double gamma2, bool word_softmax) {
  const Hyperparameters hyper{gamma1, gamma2, word_softmax};
  const at::Tensor w = words.contiguous(), l = lengths.contiguous(), v = regions.contiguous();
  check_inputs(w, l, v);
  check_hyperparameters(hyper, accumulation_type(w.scalar_type()));
  if (accumulation_type(w.scalar_type()) == at::kDouble) return scores_forward<double>(w, l, v, hyper);
  return scores_forward<float>(w, l, v, hyper);
}

std::tuple<at::Tensor, at::Tensor> word_region_scores_backward(const at::Tensor& grad_scores, const at::Tensor& words,
                                                               const at::Tensor& lengths, const at::Tensor& regions,
                                                               double gamma1, double gamma2, bool word_softmax) {
  const Hyperparameters hyper{gamma1, gamma2, word_softmax};
  const at::Tensor w = words.contiguous(), l = lengths.contiguous(), v = regions.contiguous();
  check_inputs(w, l, v);
  check_hyperparameters(hyper, accumulation_type(w.scalar_type()));
  TORCH_CHECK_VALUE(grad_scores.dim() == 2 && grad_scores.size(0) == w.size(0) && grad_scores.size(1) == v.size(0),
                    "grad_scores must have shape (N, M) = (", w.size(0), ", ", v.size(0), ")");
  TORCH_CHECK_TYPE(at::isFloatingType(grad_scores.scalar_type()), "grad_scores must be floating point, got ",
                   grad_scores.scalar_type());
  if (accumulation_type(w.scalar_type()) == at::kDouble) return scores_backward<double>(grad_scores, w, l, v, hyper);
  return scores_backward<float>(grad_scores, w, l, v, hyper);
}

at::Tensor word_region_attention(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions,
                                 double gamma1, bool word_softmax) {
  const Hyperparameters hyper{gamma1, 1.0, word_softmax};
  const at::Tensor w = words.contiguous(), l = lengths.contiguous(), v = regions.contiguous();
  check_inputs(w, l, v);
  check_hyperparameters(hyper, accumulation_type(w.scalar_type()));
  TORCH_CHECK_VALUE(v.size(0) == w.size(0), "word_region_attention pairs caption i with image i: regions must have N=",
                    w.size(0), " images, got ", v.size(0));
  if (accumulation_type(w.scalar_type()) == at::kDouble) return paired_attention<double>(w, l, v, hyper);
  return paired_attention<float>(w, l, v, hyper);
}

}  // namespace

TORCH_LIBRARY_IMPL(tgfr, CPU, m) {
  m.impl("word_region_scores", &word_region_scores);
  m.impl("word_region_scores_backward", &word_region_scores_backward);
  m.impl("word_region_attention", &word_region_attention);
}

}  // namespace tgfr::cpu
