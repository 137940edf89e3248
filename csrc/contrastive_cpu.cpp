// Fused contrastive cross-entropy on CPU (SPEC section 3, last paragraph).
//
// logits[i, j] = scale * (<x_i, y_j> - margin * [j == i + offset]), with off-diagonal entries of
// one identity dropped (-inf, "exclude"), set to 0 ("zero"), or counted as extra positives
// ("positive"). No N x M matrix is ever stored: every pass walks (rows x columns) tiles, keeping
// only per-row statistics, and the backward recomputes the tiles.
//
// Every pass is written for "rows of a against columns of b". The column direction of (x, y) is
// the row direction of (y, x) with -offset, since the masks and the diagonal are symmetric, so
// one routine serves both, and each pass is parallel over its own row blocks (no shared writes).
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

namespace tgfr {
namespace {

using at::Tensor;

constexpr int64_t kBlockRows = 128;
constexpr int64_t kBlockCols = 256;

enum class SameIdentity { kNone, kExclude, kZero, kPositive };

SameIdentity parse_same_identity(c10::string_view mode) {
  if (mode == "none") return SameIdentity::kNone;
  if (mode == "exclude") return SameIdentity::kExclude;
  if (mode == "zero") return SameIdentity::kZero;
  if (mode == "positive") return SameIdentity::kPositive;
  TORCH_CHECK(false, "same_identity must be one of exclude, zero, positive, none; got ", std::string(mode));
}

enum class Pair { kOther, kDiagonal, kSameIdentity };

// Rows of `a` against columns of `b`; row i's own positive is column i + offset.
struct Side {
  Tensor a, b;                     // (Na, D), (Nb, D), contiguous
  const int64_t* labels_a;         // nullptr without labels (or in mode "none")
  const int64_t* labels_b;
  int64_t offset;

  Pair pair(int64_t i, int64_t j) const {
    if (j - i == offset) return Pair::kDiagonal;
    if (labels_a != nullptr && labels_a[i] == labels_b[j]) return Pair::kSameIdentity;
    return Pair::kOther;
  }
  Side swapped() const { return Side{b, a, labels_b, labels_a, -offset}; }
};

template <typename acc_t>
struct Config {
  acc_t scale, margin;
  SameIdentity mode;
};

// logits of rows [a0, a0 + na) against columns [b0, b0 + nb) into `tile` (na x nb, acc dtype).
template <typename acc_t>
void fill_logits(const Side& side, const Config<acc_t>& config, const Tensor& a_block, int64_t a0,
                 int64_t b0, Tensor& tile) {
  const int64_t na = tile.size(0), nb = tile.size(1);
  at::mm_out(tile, a_block, side.b.narrow(0, b0, nb).to(a_block.scalar_type()).t());
  acc_t* logits = tile.data_ptr<acc_t>();
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  for (int64_t r = 0; r < na; ++r) {
    for (int64_t c = 0; c < nb; ++c) {
      acc_t& value = logits[r * nb + c];
      switch (side.pair(a0 + r, b0 + c)) {
        case Pair::kDiagonal: value = config.scale * (value - config.margin); break;
        case Pair::kSameIdentity:
          if (config.mode == SameIdentity::kExclude) value = kNegInf;
          else if (config.mode == SameIdentity::kZero) value = 0;
          else value *= config.scale;
          break;
        case Pair::kOther: value *= config.scale; break;
      }
    }
  }
}

// Number of positives of every row of `side`: its diagonal plus, in mode "positive", every
// off-diagonal column of its identity. Sorting keeps this O((Na + Nb) log Nb).
Tensor positive_counts(const Side& side, const Tensor& labels_a, const Tensor& labels_b, SameIdentity mode,
                       at::ScalarType dtype) {
  const int64_t na = side.a.size(0);
  if (mode != SameIdentity::kPositive || side.labels_a == nullptr) {
    return at::ones({na}, side.a.options().dtype(dtype));
  }
  const Tensor sorted = std::get<0>(labels_b.sort());
  const Tensor same = at::searchsorted(sorted, labels_a, false, /*right=*/true) -
                      at::searchsorted(sorted, labels_a, false, /*right=*/false);
  const Tensor diagonal_labels = labels_b.narrow(0, side.offset, na);
  return (same + diagonal_labels.ne(labels_a)).to(dtype);
}

Tensor row_block(const Side& side, int64_t a0, int64_t na, at::ScalarType acc) {
  return side.a.narrow(0, a0, na).to(acc).contiguous();
}

// Per-row log-sum-exp and cross-entropy (lse minus the mean positive logit).
template <typename acc_t>
void forward_rows(const Side& side, const Config<acc_t>& config, const Tensor& counts, acc_t* loss, acc_t* lse) {
  const int64_t na = side.a.size(0), nb = side.b.size(0);
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  const acc_t* count = counts.data_ptr<acc_t>();
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  const int64_t blocks = (na + kBlockRows - 1) / kBlockRows;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    Tensor buffer = at::empty({kBlockRows * kBlockCols}, side.a.options().dtype(acc));
    std::vector<acc_t> row_max(kBlockRows), row_sum(kBlockRows), positive_sum(kBlockRows);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t a0 = block * kBlockRows, rows = std::min(kBlockRows, na - a0);
      const Tensor a_block = row_block(side, a0, rows, acc);
      std::fill(row_max.begin(), row_max.end(), kNegInf);
      std::fill(row_sum.begin(), row_sum.end(), acc_t(0));
      std::fill(positive_sum.begin(), positive_sum.end(), acc_t(0));
      for (int64_t b0 = 0; b0 < nb; b0 += kBlockCols) {
        const int64_t cols = std::min(kBlockCols, nb - b0);
        Tensor tile = buffer.narrow(0, 0, rows * cols).view({rows, cols});
        fill_logits(side, config, a_block, a0, b0, tile);
        const acc_t* logits = tile.data_ptr<acc_t>();
        for (int64_t r = 0; r < rows; ++r) {
          const acc_t* row = logits + r * cols;
          acc_t tile_max = kNegInf;
          for (int64_t c = 0; c < cols; ++c) tile_max = row[c] > tile_max ? row[c] : tile_max;
          if (tile_max > row_max[r]) {
            row_sum[r] *= std::exp(row_max[r] - tile_max);
            row_max[r] = tile_max;
          }
          acc_t sum = 0;
          // -inf entries add nothing; NaN and +inf entries make the sum NaN, as they should.
          for (int64_t c = 0; c < cols; ++c) sum += row[c] == kNegInf ? acc_t(0) : std::exp(row[c] - row_max[r]);
          row_sum[r] += sum;
          for (int64_t c = 0; c < cols; ++c) {
            const Pair pair = side.pair(a0 + r, b0 + c);
            if (pair == Pair::kDiagonal || (pair == Pair::kSameIdentity && config.mode == SameIdentity::kPositive)) {
              positive_sum[r] += row[c];
            }
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        lse[a0 + r] = row_max[r] + std::log(row_sum[r]);
        loss[a0 + r] = lse[a0 + r] - positive_sum[r] / count[a0 + r];
      }
    }
  });
}

// Gradient of sum_i grad_a[i] * loss_rows[i] + sum_j grad_b[j] * loss_cols[j] with respect to
// the rows of `side.a`. grad_a / grad_b are undefined when that direction is not computed.
template <typename acc_t>
Tensor backward_rows(const Side& side, const Config<acc_t>& config, const Tensor& grad_a, const Tensor& lse_a,
                     const Tensor& counts_a, const Tensor& grad_b, const Tensor& lse_b, const Tensor& counts_b) {
  const int64_t na = side.a.size(0), nb = side.b.size(0);
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  const bool rows_on = grad_a.defined(), cols_on = grad_b.defined();
  const acc_t* ga = rows_on ? grad_a.data_ptr<acc_t>() : nullptr;
  const acc_t* la = rows_on ? lse_a.data_ptr<acc_t>() : nullptr;
  const acc_t* ca = rows_on ? counts_a.data_ptr<acc_t>() : nullptr;
  const acc_t* gb = cols_on ? grad_b.data_ptr<acc_t>() : nullptr;
  const acc_t* lb = cols_on ? lse_b.data_ptr<acc_t>() : nullptr;
  const acc_t* cb = cols_on ? counts_b.data_ptr<acc_t>() : nullptr;
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  Tensor grad = at::empty_like(side.a);
  const int64_t blocks = (na + kBlockRows - 1) / kBlockRows;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    Tensor buffer = at::empty({kBlockRows * kBlockCols}, side.a.options().dtype(acc));
    for (int64_t block = begin; block < end; ++block) {
      const int64_t a0 = block * kBlockRows, rows = std::min(kBlockRows, na - a0);
      const Tensor a_block = row_block(side, a0, rows, acc);
      Tensor grad_block = at::zeros({rows, side.a.size(1)}, a_block.options());
      for (int64_t b0 = 0; b0 < nb; b0 += kBlockCols) {
        const int64_t cols = std::min(kBlockCols, nb - b0);
        Tensor tile = buffer.narrow(0, 0, rows * cols).view({rows, cols});
        fill_logits(side, config, a_block, a0, b0, tile);
        acc_t* logits = tile.data_ptr<acc_t>();
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = a0 + r;
          for (int64_t c = 0; c < cols; ++c) {
            const int64_t j = b0 + c;
            acc_t& value = logits[r * cols + c];
            const Pair pair = side.pair(i, j);
            // Excluded (-inf) and zeroed entries are constants: no gradient reaches them.
            if (value == kNegInf || (pair == Pair::kSameIdentity && config.mode == SameIdentity::kZero)) {
              value = 0;
              continue;
            }
            const bool positive =
                pair == Pair::kDiagonal || (pair == Pair::kSameIdentity && config.mode == SameIdentity::kPositive);
            acc_t g = 0;
            if (rows_on) g += ga[i] * (std::exp(value - la[i]) - (positive ? acc_t(1) / ca[i] : acc_t(0)));
            if (cols_on) g += gb[j] * (std::exp(value - lb[j]) - (positive ? acc_t(1) / cb[j] : acc_t(0)));
            value = g;
          }
        }
        grad_block.addmm_(tile, side.b.narrow(0, b0, cols).to(acc));
      }
      grad.narrow(0, a0, rows).copy_(grad_block.mul_(config.scale));
    }
  });
  return grad;
}

const int64_t* labels_pointer(const std::optional<Tensor>& labels, SameIdentity mode) {
  if (!labels.has_value() || mode == SameIdentity::kNone) return nullptr;
  return labels->data_ptr<int64_t>();
}

void check_inputs(const Tensor& x, const Tensor& y, const std::optional<Tensor>& labels_x,
                  const std::optional<Tensor>& labels_y, int64_t offset, bool rows, bool columns) {
  TORCH_CHECK_VALUE(x.dim() == 2 && y.dim() == 2, "x and y must be (N, D) and (M, D), got shapes ", x.sizes(),
                    " and ", y.sizes());
  TORCH_CHECK_VALUE(y.size(1) == x.size(1), "y must have the embedding size D=", x.size(1), " of x, got ", y.size(1));
  TORCH_CHECK_TYPE(x.scalar_type() == y.scalar_type(), "y must have the dtype of x (", x.scalar_type(), "), got ",
                   y.scalar_type());
  TORCH_CHECK_VALUE(labels_x.has_value() == labels_y.has_value(), "give both labels_x and labels_y, or neither");
  if (labels_x.has_value()) {
    TORCH_CHECK_TYPE(labels_x->scalar_type() == at::kLong && labels_y->scalar_type() == at::kLong,
                     "labels_x and labels_y must be int64, got ", labels_x->scalar_type(), " and ",
                     labels_y->scalar_type());
    TORCH_CHECK_VALUE(labels_x->numel() == x.size(0) && labels_y->numel() == y.size(0),
                      "labels_x and labels_y must have one label per row of x (", x.size(0), ") and of y (",
                      y.size(0), "), got ", labels_x->numel(), " and ", labels_y->numel());
  }
  const int64_t n = x.size(0), m = y.size(0);
  TORCH_CHECK_VALUE(!rows || (offset >= 0 && offset + n <= m), "offset: every row i needs column i + offset, got ",
                    "offset ", offset, " with N=", n, ", M=", m);
  TORCH_CHECK_VALUE(!columns || (offset <= 0 && m - offset <= n),
                    "offset: every column j needs row j - offset, got offset ", offset, " with N=", n, ", M=", m);
}

Side make_side(const Tensor& x, const Tensor& y, const std::optional<Tensor>& labels_x,
               const std::optional<Tensor>& labels_y, SameIdentity mode, int64_t offset) {
  return Side{x, y, labels_pointer(labels_x, mode), labels_pointer(labels_y, mode), offset};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> contrastive_forward_cpu(
    const Tensor& x_in, const Tensor& y_in, const std::optional<Tensor>& labels_x_in,
    const std::optional<Tensor>& labels_y_in, double scale, double margin, c10::string_view same_identity,
    int64_t offset, bool rows, bool columns) {
  // Detached: the tile products are internal, and worker threads do not inherit autograd guards.
  const Tensor x = x_in.detach().contiguous(), y = y_in.detach().contiguous();
  const auto labels_x = labels_x_in.has_value() ? std::optional<Tensor>(labels_x_in->contiguous()) : std::nullopt;
  const auto labels_y = labels_y_in.has_value() ? std::optional<Tensor>(labels_y_in->contiguous()) : std::nullopt;
  check_inputs(x, y, labels_x, labels_y, offset, rows, columns);
  const SameIdentity mode = parse_same_identity(same_identity);
  const Side side = make_side(x, y, labels_x, labels_y, mode, offset);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto options = x.options().dtype(acc);
  Tensor row_loss = at::empty({rows ? x.size(0) : 0}, options), row_lse = at::empty_like(row_loss);
  Tensor col_loss = at::empty({columns ? y.size(0) : 0}, options), col_lse = at::empty_like(col_loss);
  AT_DISPATCH_FLOATING_TYPES(acc, "contrastive_forward_cpu", [&] {
    const Config<scalar_t> config{static_cast<scalar_t>(scale), static_cast<scalar_t>(margin), mode};
    if (rows) {
      const Tensor counts = positive_counts(side, labels_x.value_or(Tensor()), labels_y.value_or(Tensor()), mode, acc);
      forward_rows<scalar_t>(side, config, counts, row_loss.data_ptr<scalar_t>(), row_lse.data_ptr<scalar_t>());
    }
    if (columns) {
      const Side flipped = side.swapped();
      const Tensor counts = positive_counts(flipped, labels_y.value_or(Tensor()), labels_x.value_or(Tensor()), mode, acc);
      forward_rows<scalar_t>(flipped, config, counts, col_loss.data_ptr<scalar_t>(), col_lse.data_ptr<scalar_t>());
    }
  });
  return {row_loss, col_loss, row_lse, col_lse};
}

std::tuple<Tensor, Tensor> contrastive_backward_cpu(
    const Tensor& grad_row_loss, const Tensor& grad_col_loss, const Tensor& x_in, const Tensor& y_in,
    const std::optional<Tensor>& labels_x_in, const std::optional<Tensor>& labels_y_in, const Tensor& row_lse,
    const Tensor& col_lse, double scale, double margin, c10::string_view same_identity, int64_t offset, bool rows,
    bool columns) {
  // Detached: the tile products are internal, and worker threads do not inherit autograd guards.
  const Tensor x = x_in.detach().contiguous(), y = y_in.detach().contiguous();
  const auto labels_x = labels_x_in.has_value() ? std::optional<Tensor>(labels_x_in->contiguous()) : std::nullopt;
  const auto labels_y = labels_y_in.has_value() ? std::optional<Tensor>(labels_y_in->contiguous()) : std::nullopt;
  check_inputs(x, y, labels_x, labels_y, offset, rows, columns);
  const SameIdentity mode = parse_same_identity(same_identity);
  const Side side = make_side(x, y, labels_x, labels_y, mode, offset);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor lx = labels_x.value_or(Tensor()), ly = labels_y.value_or(Tensor());
  Tensor grad_x, grad_y;
  AT_DISPATCH_FLOATING_TYPES(acc, "contrastive_backward_cpu", [&] {
    const Config<scalar_t> config{static_cast<scalar_t>(scale), static_cast<scalar_t>(margin), mode};
    Tensor g_rows, g_cols, counts_rows, counts_cols;
    if (rows) {
      TORCH_CHECK(grad_row_loss.numel() == x.size(0) && row_lse.numel() == x.size(0), "row gradient size");
      g_rows = grad_row_loss.to(acc).contiguous();
      counts_rows = positive_counts(side, lx, ly, mode, acc);
    }
    if (columns) {
      TORCH_CHECK(grad_col_loss.numel() == y.size(0) && col_lse.numel() == y.size(0), "column gradient size");
      g_cols = grad_col_loss.to(acc).contiguous();
      counts_cols = positive_counts(side.swapped(), ly, lx, mode, acc);
    }
    const Tensor lse_rows = row_lse.to(acc).contiguous(), lse_cols = col_lse.to(acc).contiguous();
    grad_x = backward_rows<scalar_t>(side, config, g_rows, lse_rows, counts_rows, g_cols, lse_cols, counts_cols);
    grad_y = backward_rows<scalar_t>(side.swapped(), config, g_cols, lse_cols, counts_cols, g_rows, lse_rows,
                                     counts_rows);
  });
  return {grad_x, grad_y};
}

// max over j != i + offset of the masked (unscaled) similarity of row i; -inf when none.
Tensor contrastive_row_max_cpu(const Tensor& x_in, const Tensor& y_in, const std::optional<Tensor>& labels_x_in,
                               const std::optional<Tensor>& labels_y_in, c10::string_view same_identity,
                               int64_t offset) {
  // Detached: the tile products are internal, and worker threads do not inherit autograd guards.
  const Tensor x = x_in.detach().contiguous(), y = y_in.detach().contiguous();
  const auto labels_x = labels_x_in.has_value() ? std::optional<Tensor>(labels_x_in->contiguous()) : std::nullopt;
  const auto labels_y = labels_y_in.has_value() ? std::optional<Tensor>(labels_y_in->contiguous()) : std::nullopt;
  check_inputs(x, y, labels_x, labels_y, offset, true, false);
  const SameIdentity mode = parse_same_identity(same_identity);
  const Side side = make_side(x, y, labels_x, labels_y, mode, offset);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t na = x.size(0), nb = y.size(0);
  Tensor result = at::empty({na}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "contrastive_row_max_cpu", [&] {
    // scale 1 and margin 0: the tile holds the masked similarities themselves.
    const Config<scalar_t> config{scalar_t(1), scalar_t(0), mode};
    scalar_t* out = result.data_ptr<scalar_t>();
    constexpr scalar_t kNegInf = -std::numeric_limits<scalar_t>::infinity();
    const int64_t blocks = (na + kBlockRows - 1) / kBlockRows;
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      Tensor buffer = at::empty({kBlockRows * kBlockCols}, x.options().dtype(acc));
      for (int64_t block = begin; block < end; ++block) {
        const int64_t a0 = block * kBlockRows, rows = std::min(kBlockRows, na - a0);
        const Tensor a_block = row_block(side, a0, rows, acc);
        for (int64_t r = 0; r < rows; ++r) out[a0 + r] = kNegInf;
        for (int64_t b0 = 0; b0 < nb; b0 += kBlockCols) {
          const int64_t cols = std::min(kBlockCols, nb - b0);
          Tensor tile = buffer.narrow(0, 0, rows * cols).view({rows, cols});
          fill_logits(side, config, a_block, a0, b0, tile);
          const scalar_t* values = tile.data_ptr<scalar_t>();
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t c = 0; c < cols; ++c) {
              const scalar_t v = values[r * cols + c];
              if (b0 + c - (a0 + r) != offset && (v > out[a0 + r] || std::isnan(v))) out[a0 + r] = v;
            }
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

}  // namespace tgfr
