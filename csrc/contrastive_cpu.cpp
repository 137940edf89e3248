// Fused contrastive cross-entropy on CPU (SPEC section 3, last paragraph).
//
// logits[i, j] = scale * (<x_i, y_j> - margin * [j == i + offset]), with off-diagonal entries of
// one identity dropped (-inf, "exclude"), set to 0 ("zero"), or counted as extra positives
// ("positive"). No N x M matrix is ever stored: the passes walk (row block x column block) tiles
// of the logits, and every tile serves both directions at once. The forward keeps an online
// log-sum-exp per row and per column; the backward recomputes each tile once, turns it into
// d(logits) of both cross-entropies, and adds d(x) += dL . y and d(y) += dL^T . x. That is one
// tile product in the forward and three in the backward; separate row and column passes would
// take two and four.
//
// Tiles are visited in the group rotation of group_rotation.h, so each task owns the rows and
// columns it updates. The group count follows from N and M alone, never from the thread count,
// so every sum of the kernel's own is bitwise the same with any number of threads. (The tile
// products are MKL's, which may round differently under another thread setting unless
// MKL_CBWR=COMPATIBLE.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "group_rotation.h"
#include "vector_math.h"

namespace tgfr::cpu {
namespace {

using at::Tensor;

constexpr int64_t kBlockRows = 128;
constexpr int64_t kBlockCols = 256;
// Groups per side: parallel work for up to 64 threads, while a task's share of a step stays
// about one block or more on each side (sqrt(N * M) / kBlockRows groups).
constexpr int64_t kMaxGroups = 64;

enum class SameIdentity { kNone, kExclude, kZero, kPositive };

SameIdentity parse_same_identity(c10::string_view mode) {
  if (mode == "none") return SameIdentity::kNone;
  if (mode == "exclude") return SameIdentity::kExclude;
  if (mode == "zero") return SameIdentity::kZero;
  if (mode == "positive") return SameIdentity::kPositive;
  TORCH_CHECK_VALUE(false, "same_identity must be one of exclude, zero, positive, none; got ", std::string(mode));
}

// Rows of `a` against rows of `b`; row i's target is column i + offset.
template <typename acc_t>
struct Problem {
  Tensor a, b;              // (Na, D), (Nb, D), contiguous, accumulation dtype
  const int64_t* labels_a;  // nullptr without labels or in mode "none"
  const int64_t* labels_b;
  int64_t offset;
  acc_t scale, margin;
  SameIdentity mode;
};

int64_t group_count(int64_t na, int64_t nb) {
  const double side = std::sqrt(static_cast<double>(na) * static_cast<double>(nb)) / kBlockRows;
  return std::clamp<int64_t>(static_cast<int64_t>(side), 1, std::min({kMaxGroups, na, nb}));
}

// Calls tile(a0, rows, b0, cols, scratch) for every block of the (Na x Nb) logits, in the group
// rotation; `scratch` is a per-thread `Scratch`.
template <typename Scratch, typename TileFn>
void for_each_tile_rotated(int64_t na, int64_t nb, TileFn&& tile) {
  const int64_t parts = group_count(na, nb);
  const std::vector<int64_t> row_groups = even_split(na, parts), col_groups = even_split(nb, parts);
  for (int64_t step = 0; step < parts; ++step) {
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      Scratch scratch;
      for (int64_t k = begin; k < end; ++k) {
        const int64_t g = rotated_group(k, step, parts);
        for (int64_t a0 = row_groups[k]; a0 < row_groups[k + 1]; a0 += kBlockRows) {
          const int64_t rows = std::min(kBlockRows, row_groups[k + 1] - a0);
          for (int64_t b0 = col_groups[g]; b0 < col_groups[g + 1]; b0 += kBlockCols) {
            tile(a0, rows, b0, std::min(kBlockCols, col_groups[g + 1] - b0), scratch);
          }
        }
      }
    });
  }
}

// logits of rows [a0, a0 + rows) against columns [b0, b0 + cols), into `tile` (rows x cols).
template <typename acc_t>
void fill_logits(const Problem<acc_t>& p, int64_t a0, int64_t b0, Tensor& tile) {
  const int64_t rows = tile.size(0), cols = tile.size(1);
  at::mm_out(tile, p.a.narrow(0, a0, rows), p.b.narrow(0, b0, cols).t());
  acc_t* logits = tile.data_ptr<acc_t>();
  const acc_t scale = p.scale;
  const bool masked = p.labels_a != nullptr && p.mode != SameIdentity::kPositive;
  const acc_t replacement = p.mode == SameIdentity::kExclude ? -std::numeric_limits<acc_t>::infinity() : acc_t(0);
  for (int64_t r = 0; r < rows; ++r) {
    acc_t* row = logits + r * cols;
    const int64_t target = a0 + r + p.offset - b0;
    const bool has_target = target >= 0 && target < cols;
    const acc_t raw_target = has_target ? row[target] : acc_t(0);
    if (masked) {
      const int64_t label = p.labels_a[a0 + r];
      const int64_t* labels = p.labels_b + b0;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) row[c] = labels[c] == label ? replacement : scale * row[c];
    } else {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) row[c] *= scale;
    }
    if (has_target) row[target] = scale * (raw_target - p.margin);
  }
}

// Per-thread tile memory of the forward and backward passes.
template <typename acc_t>
struct TileScratch {
  std::vector<acc_t> logits = std::vector<acc_t>(kBlockRows * kBlockCols);
  std::vector<acc_t> column_top = std::vector<acc_t>(kBlockCols);
  std::vector<acc_t> column_sum = std::vector<acc_t>(kBlockCols);

  Tensor tile(int64_t rows, int64_t cols) {
    return at::from_blob(logits.data(), {rows, cols}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  }
};

// Online log-sum-exp of one direction (per row, or per column): running maximum, sum of
// exp(logit - maximum), and sum of the positive logits.
template <typename acc_t>
struct OnlineLogSumExp {
  std::vector<acc_t> top, sum, positive;
  explicit OnlineLogSumExp(int64_t n)
      : top(n, -std::numeric_limits<acc_t>::infinity()), sum(n, acc_t(0)), positive(n, acc_t(0)) {}
};

// Adds one row of logits to its running (top, sum). -inf entries add nothing; NaN and +inf
// entries make the sum NaN, as they should.
template <typename acc_t>
void add_row(const acc_t* row, int64_t cols, acc_t& top, acc_t& sum) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  const acc_t tile_top = max_of(row, cols);
  if (tile_top > top) {
    sum *= std::exp(top - tile_top);
    top = tile_top;
  }
  const acc_t shift = top;
  acc_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t c = 0; c < cols; ++c) total += row[c] == kNegInf ? acc_t(0) : vectorizable_exp(row[c] - shift);
  sum += total;
}

// Adds the columns of a (rows x cols) tile to their running (top, sum); `tile_top` and
// `tile_sum` are scratch. The tile's sum is formed apart and then added, so a column's sum is a
// chain of N / rows additions, not N (its rounding error grew like sqrt(N)).
template <typename acc_t>
void add_columns(const acc_t* logits, int64_t rows, int64_t cols, acc_t* top, acc_t* sum, acc_t* tile_top,
                 acc_t* tile_sum) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  column_max(logits, rows, cols, tile_top);
  for (int64_t c = 0; c < cols; ++c) {
    if (tile_top[c] > top[c]) {
      sum[c] *= std::exp(top[c] - tile_top[c]);
      top[c] = tile_top[c];
    }
  }
  std::fill(tile_sum, tile_sum + cols, acc_t(0));
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t* row = logits + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      tile_sum[c] += row[c] == kNegInf ? acc_t(0) : vectorizable_exp(row[c] - top[c]);
    }
  }
#pragma omp simd
  for (int64_t c = 0; c < cols; ++c) sum[c] += tile_sum[c];
}

// Adds every positive logit of the tile to its row's and its column's positive sum (either may
// be nullptr). The target is always a positive; in mode "positive" so is every entry whose
// row and column share an identity.
template <typename acc_t>
void add_positives(const Problem<acc_t>& p, const acc_t* logits, int64_t a0, int64_t rows, int64_t b0, int64_t cols,
                   acc_t* row_positive, acc_t* col_positive) {
  const bool by_label = p.mode == SameIdentity::kPositive && p.labels_a != nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t* row = logits + r * cols;
    const int64_t target = a0 + r + p.offset - b0;
    if (!by_label) {
      if (target < 0 || target >= cols) continue;
      if (row_positive != nullptr) row_positive[a0 + r] += row[target];
      if (col_positive != nullptr) col_positive[b0 + target] += row[target];
      continue;
    }
    const int64_t label = p.labels_a[a0 + r];
    const int64_t* labels = p.labels_b + b0;
    if (row_positive != nullptr) {
      acc_t total = 0;
#pragma omp simd reduction(+ : total)
      for (int64_t c = 0; c < cols; ++c) total += ((c == target) | (labels[c] == label)) ? row[c] : acc_t(0);
      row_positive[a0 + r] += total;
    }
    if (col_positive != nullptr) {
      acc_t* column = col_positive + b0;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) column[c] += ((c == target) | (labels[c] == label)) ? row[c] : acc_t(0);
    }
  }
}

// Number of positives of every row of a against b: its target plus, in mode "positive", every
// other column of its identity. Sorting keeps this O((Na + Nb) log Nb).
Tensor positive_counts(const Tensor& labels_a, const Tensor& labels_b, int64_t offset, int64_t na, SameIdentity mode,
                       const at::TensorOptions& options) {
  if (mode != SameIdentity::kPositive || !labels_a.defined()) return at::ones({na}, options);
  const Tensor sorted = std::get<0>(labels_b.sort());
  const Tensor same = at::searchsorted(sorted, labels_a, false, /*right=*/true) -
                      at::searchsorted(sorted, labels_a, false, /*right=*/false);
  const Tensor target_labels = labels_b.narrow(0, offset, na);
  return (same + target_labels.ne(labels_a)).to(options.dtype());
}

// Per-row (or per-column) coefficients of d(logits) for one direction of the backward:
// d(loss)/d(logit[i, j]) = grad[i] * (softmax[i, j] - positive[i, j] / count[i]).
template <typename acc_t>
struct DirectionGradient {
  const acc_t* grad = nullptr;
  const acc_t* lse = nullptr;
  const acc_t* inverse_count = nullptr;
};

// One row of a tile of logits -> d(loss)/d(logits), in place. Each direction subtracts its own
// positive share before it is weighted, so a target whose softmax is exactly 1 gets exactly 0.
// The entries `same_identity` makes constants (excluded, or zeroed in mode "zero") are found by
// their labels, not by a -inf value: a logit can also overflow to -inf, and its gradient must
// then come out as the reference's (NaN when the whole row or column is -inf).
template <typename acc_t, bool kRows, bool kCols, bool kLabelled>
void gradient_row(acc_t* row, int64_t cols, int64_t target, const int64_t* labels, int64_t label,
                  bool same_is_positive, acc_t row_grad, acc_t row_lse, acc_t row_inverse_count,
                  const acc_t* col_grad, const acc_t* col_lse, const acc_t* col_inverse_count) {
#pragma omp simd
  for (int64_t c = 0; c < cols; ++c) {
    const acc_t value = row[c];
    // Bitwise & and |: short-circuit operators would be branches, which keep the loop scalar.
    bool same = false;
    if constexpr (kLabelled) same = labels[c] == label;
    const bool positive = (c == target) | (same & same_is_positive);
    acc_t g = 0;
    if constexpr (kRows) {
      g += row_grad * (vectorizable_exp(value - row_lse) - (positive ? row_inverse_count : acc_t(0)));
    }
    if constexpr (kCols) {
      g += col_grad[c] * (vectorizable_exp(value - col_lse[c]) - (positive ? col_inverse_count[c] : acc_t(0)));
    }
    row[c] = (same & !positive) ? acc_t(0) : g;
  }
}

template <typename acc_t, bool kRows, bool kCols>
void logits_to_gradient(const Problem<acc_t>& p, acc_t* logits, int64_t a0, int64_t rows, int64_t b0, int64_t cols,
                        const DirectionGradient<acc_t>& by_row, const DirectionGradient<acc_t>& by_col) {
  const acc_t* col_grad = kCols ? by_col.grad + b0 : nullptr;
  const acc_t* col_lse = kCols ? by_col.lse + b0 : nullptr;
  const acc_t* col_inverse_count = kCols ? by_col.inverse_count + b0 : nullptr;
  const bool same_is_positive = p.mode == SameIdentity::kPositive;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = a0 + r;
    const int64_t target = i + p.offset - b0;
    const acc_t row_grad = kRows ? by_row.grad[i] : acc_t(0);
    const acc_t row_lse = kRows ? by_row.lse[i] : acc_t(0);
    const acc_t row_inverse_count = kRows ? by_row.inverse_count[i] : acc_t(0);
    if (p.labels_a != nullptr) {
      gradient_row<acc_t, kRows, kCols, true>(logits + r * cols, cols, target, p.labels_b + b0, p.labels_a[i],
                                              same_is_positive, row_grad, row_lse, row_inverse_count, col_grad,
                                              col_lse, col_inverse_count);
    } else {
      gradient_row<acc_t, kRows, kCols, false>(logits + r * cols, cols, target, nullptr, 0, same_is_positive,
                                               row_grad, row_lse, row_inverse_count, col_grad, col_lse,
                                               col_inverse_count);
    }
  }
}

const int64_t* labels_pointer(const std::optional<Tensor>& labels, SameIdentity mode) {
  if (!labels.has_value() || mode == SameIdentity::kNone) return nullptr;
  return labels->data_ptr<int64_t>();
}

void check_inputs(const Tensor& x, const Tensor& y, const std::optional<Tensor>& labels_x,
                  const std::optional<Tensor>& labels_y, int64_t offset, bool rows, bool columns) {
  TORCH_CHECK_VALUE(x.dim() == 2 && y.dim() == 2, "x and y must be (N, D) and (M, D), got shapes ", x.sizes(),
                    " and ", y.sizes());
  // Empty sides would reach a division by zero in the tiling (SIGFPE, not an exception).
  TORCH_CHECK_VALUE(x.size(0) >= 1, "x must have N >= 1 rows, got shape ", x.sizes());
  TORCH_CHECK_VALUE(y.size(0) >= 1, "y must have M >= 1 rows, got shape ", y.sizes());
  TORCH_CHECK_VALUE(x.size(1) >= 1, "x must have D >= 1 features, got shape ", x.sizes());
  TORCH_CHECK_VALUE(y.size(1) == x.size(1), "y must have the embedding size D=", x.size(1), " of x, got ", y.size(1));
  TORCH_CHECK_TYPE(x.scalar_type() == y.scalar_type(), "y must have the dtype of x (", x.scalar_type(), "), got ",
                   y.scalar_type());
  // Integers would be converted (and the gradients truncated back), complex numbers cut to their real parts.
  const auto dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                   "x and y must be float32, float64, float16 or bfloat16, got ", dtype);
  TORCH_CHECK_VALUE(labels_x.has_value() == labels_y.has_value(), "give both labels_x and labels_y, or neither");
  if (labels_x.has_value()) {
    TORCH_CHECK_TYPE(labels_x->scalar_type() == at::kLong && labels_y->scalar_type() == at::kLong,
                     "labels_x and labels_y must be int64, got ", labels_x->scalar_type(), " and ",
                     labels_y->scalar_type());
    TORCH_CHECK_VALUE(labels_x->dim() == 1 && labels_x->size(0) == x.size(0),
                      "labels_x must have shape (N,) = (", x.size(0), ",), one label per row of x, got shape ",
                      labels_x->sizes());
    TORCH_CHECK_VALUE(labels_y->dim() == 1 && labels_y->size(0) == y.size(0),
                      "labels_y must have shape (M,) = (", y.size(0), ",), one label per row of y, got shape ",
                      labels_y->sizes());
  }
  const int64_t n = x.size(0), m = y.size(0);
  TORCH_CHECK_VALUE(!rows || (offset >= 0 && offset + n <= m), "offset: every row i needs column i + offset, got ",
                    "offset ", offset, " with N=", n, ", M=", m);
  TORCH_CHECK_VALUE(!columns || (offset <= 0 && m - offset <= n),
                    "offset: every column j needs row j - offset, got offset ", offset, " with N=", n, ", M=", m);
}

// Inputs of all three ops, checked, detached (the tile products are internal, and worker threads
// do not inherit autograd guards) and converted once to the accumulation dtype.
struct Inputs {
  Tensor x, y;  // accumulation dtype, contiguous
  std::optional<Tensor> labels_x, labels_y;
  SameIdentity mode;

  Inputs(const Tensor& x_in, const Tensor& y_in, const std::optional<Tensor>& labels_x_in,
         const std::optional<Tensor>& labels_y_in, c10::string_view same_identity, int64_t offset, bool rows,
         bool columns)
      : labels_x(labels_x_in.has_value() ? std::optional<Tensor>(labels_x_in->contiguous()) : std::nullopt),
        labels_y(labels_y_in.has_value() ? std::optional<Tensor>(labels_y_in->contiguous()) : std::nullopt),
        mode(parse_same_identity(same_identity)) {
    check_inputs(x_in, y_in, labels_x, labels_y, offset, rows, columns);
    const auto acc = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    x = x_in.detach().to(acc).contiguous();
    y = y_in.detach().to(acc).contiguous();
  }

  template <typename acc_t>
  Problem<acc_t> problem(double scale, double margin, int64_t offset) const {
    // Checked in the accumulation type: a float64 scale past float32's range is inf in a float32 kernel.
    TORCH_CHECK_VALUE(std::isfinite(static_cast<acc_t>(scale)) && scale > 0,
                      "scale must be finite and positive in the kernel's ", sizeof(acc_t) == 8 ? "float64" : "float32",
                      ", got ", scale);
    TORCH_CHECK_VALUE(std::isfinite(static_cast<acc_t>(margin)), "margin must be finite in the kernel's ",
                      sizeof(acc_t) == 8 ? "float64" : "float32", ", got ", margin);
    return Problem<acc_t>{x, y, labels_pointer(labels_x, mode), labels_pointer(labels_y, mode), offset,
                          static_cast<acc_t>(scale), static_cast<acc_t>(margin), mode};
  }

  Tensor counts(bool of_rows, int64_t offset) const {
    const Tensor lx = labels_x.value_or(Tensor()), ly = labels_y.value_or(Tensor());
    return of_rows ? positive_counts(lx, ly, offset, x.size(0), mode, x.options())
                   : positive_counts(ly, lx, -offset, y.size(0), mode, x.options());
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> contrastive_forward_cpu(
    const Tensor& x_in, const Tensor& y_in, const std::optional<Tensor>& labels_x_in,
    const std::optional<Tensor>& labels_y_in, double scale, double margin, c10::string_view same_identity,
    int64_t offset, bool rows, bool columns) {
  const Inputs inputs(x_in, y_in, labels_x_in, labels_y_in, same_identity, offset, rows, columns);
  const int64_t na = inputs.x.size(0), nb = inputs.y.size(0);
  const auto options = inputs.x.options();
  Tensor row_loss = at::empty({rows ? na : 0}, options), row_lse = at::empty_like(row_loss);
  Tensor col_loss = at::empty({columns ? nb : 0}, options), col_lse = at::empty_like(col_loss);
  if (!rows && !columns) return {row_loss, col_loss, row_lse, col_lse};
  AT_DISPATCH_FLOATING_TYPES(inputs.x.scalar_type(), "contrastive_forward_cpu", [&] {
    const Problem<scalar_t> p = inputs.problem<scalar_t>(scale, margin, offset);
    OnlineLogSumExp<scalar_t> by_row(rows ? na : 0), by_col(columns ? nb : 0);
    for_each_tile_rotated<TileScratch<scalar_t>>(
        na, nb, [&](int64_t a0, int64_t num_rows, int64_t b0, int64_t num_cols, TileScratch<scalar_t>& scratch) {
          Tensor tile = scratch.tile(num_rows, num_cols);
          fill_logits(p, a0, b0, tile);
          const scalar_t* logits = scratch.logits.data();
          if (rows) {
            for (int64_t r = 0; r < num_rows; ++r) {
              add_row(logits + r * num_cols, num_cols, by_row.top[a0 + r], by_row.sum[a0 + r]);
            }
          }
          if (columns) {
            add_columns(logits, num_rows, num_cols, by_col.top.data() + b0, by_col.sum.data() + b0,
                        scratch.column_top.data(), scratch.column_sum.data());
          }
          add_positives(p, logits, a0, num_rows, b0, num_cols, rows ? by_row.positive.data() : nullptr,
                        columns ? by_col.positive.data() : nullptr);
        });
    const auto finish = [](const OnlineLogSumExp<scalar_t>& state, const Tensor& counts, Tensor& loss, Tensor& lse) {
      const scalar_t* count = counts.data_ptr<scalar_t>();
      scalar_t* loss_data = loss.data_ptr<scalar_t>();
      scalar_t* lse_data = lse.data_ptr<scalar_t>();
      for (int64_t i = 0; i < loss.numel(); ++i) {
        lse_data[i] = state.top[i] + std::log(state.sum[i]);
        loss_data[i] = lse_data[i] - state.positive[i] / count[i];
      }
    };
    if (rows) finish(by_row, inputs.counts(/*of_rows=*/true, offset), row_loss, row_lse);
    if (columns) finish(by_col, inputs.counts(/*of_rows=*/false, offset), col_loss, col_lse);
  });
  return {row_loss, col_loss, row_lse, col_lse};
}

template <typename acc_t, bool kRows, bool kCols>
void backward_tiles(const Problem<acc_t>& p, const DirectionGradient<acc_t>& by_row,
                    const DirectionGradient<acc_t>& by_col, Tensor& grad_x, Tensor& grad_y) {
  for_each_tile_rotated<TileScratch<acc_t>>(
      p.a.size(0), p.b.size(0),
      [&](int64_t a0, int64_t rows, int64_t b0, int64_t cols, TileScratch<acc_t>& scratch) {
        Tensor tile = scratch.tile(rows, cols);
        fill_logits(p, a0, b0, tile);
        logits_to_gradient<acc_t, kRows, kCols>(p, scratch.logits.data(), a0, rows, b0, cols, by_row, by_col);
        grad_x.narrow(0, a0, rows).addmm_(tile, p.b.narrow(0, b0, cols));
        grad_y.narrow(0, b0, cols).addmm_(tile.t(), p.a.narrow(0, a0, rows));
      });
}

std::tuple<Tensor, Tensor> contrastive_backward_cpu(
    const Tensor& grad_row_loss, const Tensor& grad_col_loss, const Tensor& x_in, const Tensor& y_in,
    const std::optional<Tensor>& labels_x_in, const std::optional<Tensor>& labels_y_in, const Tensor& row_lse,
    const Tensor& col_lse, double scale, double margin, c10::string_view same_identity, int64_t offset, bool rows,
    bool columns) {
  const Inputs inputs(x_in, y_in, labels_x_in, labels_y_in, same_identity, offset, rows, columns);
  const int64_t na = inputs.x.size(0), nb = inputs.y.size(0);
  Tensor grad_x = at::zeros_like(inputs.x), grad_y = at::zeros_like(inputs.y);
  AT_DISPATCH_FLOATING_TYPES(inputs.x.scalar_type(), "contrastive_backward_cpu", [&] {
    const Problem<scalar_t> p = inputs.problem<scalar_t>(scale, margin, offset);
    // Keeps the tensors behind each DirectionGradient's pointers alive.
    std::vector<Tensor> owners;
    const auto direction = [&](bool on, const Tensor& grad, const Tensor& lse, int64_t n, bool of_rows,
                               const char* name) {
      DirectionGradient<scalar_t> result;
      if (!on) return result;
      TORCH_CHECK_VALUE(grad.numel() == n && lse.numel() == n, name, " gradient and log-sum-exp must have ", n,
                        " entries, got ", grad.numel(), " and ", lse.numel());
      TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()) && at::isFloatingType(lse.scalar_type()), name,
                       " gradient and log-sum-exp must be floating point, got ", grad.scalar_type(), " and ",
                       lse.scalar_type());
      const Tensor g = grad.to(inputs.x.scalar_type()).contiguous();
      const Tensor l = lse.to(inputs.x.scalar_type()).contiguous();
      const Tensor inverse_count = inputs.counts(of_rows, offset).reciprocal();
      owners.insert(owners.end(), {g, l, inverse_count});
      result.grad = g.data_ptr<scalar_t>();
      result.lse = l.data_ptr<scalar_t>();
      result.inverse_count = inverse_count.data_ptr<scalar_t>();
      return result;
    };
    const auto by_row = direction(rows, grad_row_loss, row_lse, na, /*of_rows=*/true, "row");
    const auto by_col = direction(columns, grad_col_loss, col_lse, nb, /*of_rows=*/false, "column");
    if (rows && columns) backward_tiles<scalar_t, true, true>(p, by_row, by_col, grad_x, grad_y);
    else if (rows) backward_tiles<scalar_t, true, false>(p, by_row, by_col, grad_x, grad_y);
    else if (columns) backward_tiles<scalar_t, false, true>(p, by_row, by_col, grad_x, grad_y);
  });
  return {grad_x.mul_(scale).to(x_in.scalar_type()), grad_y.mul_(scale).to(y_in.scalar_type())};
}

// best <- max(best, max over c != target of row[c]), NaN when any of them is NaN (max_of skips
// NaN, so NaN is looked for on the side). The target entry is overwritten.
template <typename acc_t>
void fold_negatives_max(acc_t* row, int64_t cols, int64_t target, acc_t& best) {
  if (target >= 0 && target < cols) row[target] = -std::numeric_limits<acc_t>::infinity();
  int has_nan = 0;
#pragma omp simd reduction(| : has_nan)
  for (int64_t c = 0; c < cols; ++c) has_nan |= static_cast<int>(std::isnan(row[c]));
  best = has_nan || std::isnan(best) ? std::numeric_limits<acc_t>::quiet_NaN() : std::max(best, max_of(row, cols));
}

// Hardest negative of row i: max of the masked (unscaled) similarity over the columns that are no
// positive of it (neither i + offset nor, in mode "positive", of its identity); -inf when none.
Tensor contrastive_row_max_cpu(const Tensor& x_in, const Tensor& y_in, const std::optional<Tensor>& labels_x_in,
                               const std::optional<Tensor>& labels_y_in, c10::string_view same_identity,
                               int64_t offset) {
  const Inputs inputs(x_in, y_in, labels_x_in, labels_y_in, same_identity, offset, /*rows=*/true, /*columns=*/false);
  const int64_t na = inputs.x.size(0), nb = inputs.y.size(0);
  Tensor result = at::empty({na}, inputs.x.options());
  AT_DISPATCH_FLOATING_TYPES(inputs.x.scalar_type(), "contrastive_row_max_cpu", [&] {
    // scale 1 and margin 0: the tile holds the masked similarities themselves.
    Problem<scalar_t> p = inputs.problem<scalar_t>(1.0, 0.0, offset);
    // In mode "positive" the columns of the row's identity are positives, not negatives: they are
    // skipped, as in mode "exclude".
    if (p.mode == SameIdentity::kPositive) p.mode = SameIdentity::kExclude;
    scalar_t* out = result.data_ptr<scalar_t>();
    const int64_t blocks = (na + kBlockRows - 1) / kBlockRows;
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      TileScratch<scalar_t> scratch;
      for (int64_t block = begin; block < end; ++block) {
        const int64_t a0 = block * kBlockRows, rows = std::min(kBlockRows, na - a0);
        for (int64_t r = 0; r < rows; ++r) out[a0 + r] = -std::numeric_limits<scalar_t>::infinity();
        for (int64_t b0 = 0; b0 < nb; b0 += kBlockCols) {
          const int64_t cols = std::min(kBlockCols, nb - b0);
          Tensor tile = scratch.tile(rows, cols);
          fill_logits(p, a0, b0, tile);
          for (int64_t r = 0; r < rows; ++r) {
            fold_negatives_max(scratch.logits.data() + r * cols, cols, a0 + r + offset - b0, out[a0 + r]);
          }
        }
      }
    });
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(tgfr, CPU, m) {
  m.impl("contrastive_forward", &contrastive_forward_cpu);
  m.impl("contrastive_backward", &contrastive_backward_cpu);
  m.impl("contrastive_row_max", &contrastive_row_max_cpu);
}

}  // namespace tgfr::cpu
