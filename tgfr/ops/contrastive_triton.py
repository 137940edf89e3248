"""Triton kernels of the fused contrastive cross-entropy (CUDA tensors; CPU under TRITON_INTERPRET=1).

One "row pass" kernel for the forward (online log-sum-exp of each row of a against all of b)
and one for the backward (recomputed tiles, dA += G @ B), each used twice, the column direction
being the row direction of (y, x) with -offset. Each program owns a block of rows, so nothing
is written twice and no atomics are needed; the price is that the columns' pass recomputes the
tiles (six tile products per forward+backward, where csrc/contrastive_cpu.cpp, whose tasks own
both a row and a column group, shares each tile between the directions and takes four). Which
costs less on a GPU, the recomputation or column atomics, is unmeasured. D is held in one tile
(BLOCK_D = next power of two of D), which suits embedding sizes up to a few hundred.

With `normalize`, the op takes x and y as they are and L2-normalizes inside: the tile products
multiply the raw rows in the input dtype (bf16/fp16 on tensor cores) and scale each product by
the fp32 inverse norms of its row and column, so the cosines come out as precise as fp32
normalization gives them, at the speed of 16-bit products. Normalized vectors rounded to 16 bits
would cost the logits about scale * 2^-9; normalized in fp32 and multiplied in fp32, the products
leave the tensor cores. The backward kernel forms d(loss)/d(unit rows) from the unit columns rounded
to the input dtype (as a 16-bit matmul of unit vectors would take them), and the gradient of
the normalization follows in fp32 (`_normalization_backward`). In fp16 the gradient tile enters
its product scaled row by row to its largest entry: its entries span more than fp16's range
(softmax tails next to loss-scaled targets), where bf16 has fp32's.

Row offsets (row * D) are 64-bit where they start a block: they pass 2^31 once N * D does
(N = 4194305 at D = 512), a batch that fits a GPU. Offsets within a block stay int32.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from tgfr import reference
from tgfr.ops.contrastive import (
    SAME_IDENTITY_MODES,
    _check_embeddings,
    _check_labels,
    _check_offset,
    _check_triton_dtype,
    _hyperparameter_maximum,
)
from tgfr.ops.contrastive import _contrastive_forward_fake as cpu_forward_fake
from tgfr.ops.first_order import refuse_double_backward
from tgfr.ops.triton_precision import dot_input_precision
from tgfr.validation import (
    check_choice,
    check_finite_number,
    check_positive,
    check_same_device,
    check_size,
    check_tensor,
)

_MODES = {"none": 0, "exclude": 1, "zero": 2, "positive": 3}
BLOCK_ROWS, BLOCK_COLS = 32, 32


@triton.jit
def _block_rows(ptr, start, dims, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pointers to rows start .. start + BLOCK of a (rows, dims) matrix: 64-bit at the block's
    first row, int32 within the block. tl.cast, not .to: the interpreter gives loop indices as
    Python ints."""
    block_ptr = ptr + tl.cast(start, tl.int64) * dims
    return block_ptr + tl.arange(0, BLOCK)[:, None] * dims + tl.arange(0, BLOCK_D)[None, :]


@triton.jit
def _logits_tile(a, b_ptr, labels_a, labels_b_ptr, inverse_norm_a, inverse_norm_b_ptr, rows, start, cols, num_b,
                 dims, offset, scale, margin, MODE: tl.constexpr, HAS_LABELS: tl.constexpr, NORMALIZE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Logits of rows (a) against columns cols = start + arange(BLOCK_N) of b, with the masks;
    also the columns' tile of b and (NORMALIZE) their inverse norms (1.0 otherwise)."""
    b = tl.load(_block_rows(b_ptr, start, dims, BLOCK_N, BLOCK_D),
                mask=(cols[:, None] < num_b) & (tl.arange(0, BLOCK_D)[None, :] < dims), other=0.0)
    similarity = tl.dot(a, tl.trans(b), input_precision=INPUT_PRECISION).to(tl.float32)
    inverse_norm_b = tl.full((BLOCK_N,), 1.0, tl.float32)
    if NORMALIZE:
        inverse_norm_b = tl.load(inverse_norm_b_ptr + cols, mask=cols < num_b, other=0.0)
        similarity = similarity * inverse_norm_a[:, None] * inverse_norm_b[None, :]
    diagonal = cols[None, :] - rows[:, None] == offset
    same = diagonal & False
    if HAS_LABELS:
        labels_b = tl.load(labels_b_ptr + cols, mask=cols < num_b, other=-1)
        same = (labels_a[:, None] == labels_b[None, :]) & ~diagonal
    logits = scale * (similarity - tl.where(diagonal, margin, 0.0))
    if MODE == 2:
        logits = tl.where(same, 0.0, logits)
    valid = cols[None, :] < num_b
    if MODE == 1:
        valid = valid & ~same
    logits = tl.where(valid, logits, float("-inf"))
    positive = diagonal | (same & (MODE == 3))
    return logits, positive, same, b, inverse_norm_b


@triton.jit
def _row_block(a_ptr, labels_a_ptr, inverse_norm_a_ptr, num_a, dims, HAS_LABELS: tl.constexpr,
               NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The program's rows: indices, validity, tile of a, labels and inverse norms."""
    first = tl.program_id(0) * BLOCK_M
    rows = first + tl.arange(0, BLOCK_M)
    row_ok = rows < num_a
    a = tl.load(_block_rows(a_ptr, first, dims, BLOCK_M, BLOCK_D),
                mask=row_ok[:, None] & (tl.arange(0, BLOCK_D)[None, :] < dims), other=0.0)
    labels_a = tl.load(labels_a_ptr + rows, mask=row_ok, other=-2) if HAS_LABELS else rows
    inverse_norm_a = tl.full((BLOCK_M,), 1.0, tl.float32)
    if NORMALIZE:
        inverse_norm_a = tl.load(inverse_norm_a_ptr + rows, mask=row_ok, other=0.0)
    return first, rows, row_ok, a, labels_a, inverse_norm_a


@triton.jit
def _forward_rows_kernel(a_ptr, b_ptr, labels_a_ptr, labels_b_ptr, inverse_norm_a_ptr, inverse_norm_b_ptr,
                         counts_ptr, loss_ptr, lse_ptr, num_a, num_b, dims, offset, scale, margin,
                         MODE: tl.constexpr, HAS_LABELS: tl.constexpr, NORMALIZE: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         INPUT_PRECISION: tl.constexpr):
    # Names, not `_`, for the unused results: the GPU compiler refuses a loop-carried variable whose type
    # changes, and `_` would be an int here and a tile in the loop (the interpreter does not check this).
    first, rows, row_ok, a, labels_a, inverse_norm_a = _row_block(
        a_ptr, labels_a_ptr, inverse_norm_a_ptr, num_a, dims, HAS_LABELS, NORMALIZE, BLOCK_M, BLOCK_D)
    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BLOCK_M,), tl.float32)
    positive_sum = tl.zeros((BLOCK_M,), tl.float32)
    for start in range(0, num_b, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        logits, positive, same, b, inverse_norm_b = _logits_tile(
            a, b_ptr, labels_a, labels_b_ptr, inverse_norm_a, inverse_norm_b_ptr, rows, start, cols, num_b, dims,
            offset, scale, margin, MODE, HAS_LABELS, NORMALIZE, BLOCK_N, BLOCK_D, INPUT_PRECISION)
        new_max = tl.maximum(row_max, tl.max(logits, axis=1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        row_sum = row_sum * tl.exp(row_max - safe_max) + tl.sum(tl.exp(logits - safe_max[:, None]), axis=1)
        row_max = new_max
        positive_sum += tl.sum(tl.where(positive, logits, 0.0), axis=1)
    lse = row_max + tl.log(row_sum)
    counts = tl.load(counts_ptr + rows, mask=row_ok, other=1.0)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(loss_ptr + rows, lse - positive_sum / counts, mask=row_ok)


@triton.jit
def _backward_rows_kernel(a_ptr, b_ptr, labels_a_ptr, labels_b_ptr, inverse_norm_a_ptr, inverse_norm_b_ptr,
                          grad_a_ptr, lse_a_ptr, counts_a_ptr, grad_b_ptr, lse_b_ptr, counts_b_ptr, out_ptr,
                          num_a, num_b, dims, offset, scale, margin, MODE: tl.constexpr, HAS_LABELS: tl.constexpr,
                          NORMALIZE: tl.constexpr, ROWS_ON: tl.constexpr, COLS_ON: tl.constexpr,
                          SCALE_ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """out = d(loss)/d(a), or with NORMALIZE d(loss)/d(a's unit rows). SCALE_ROWS (fp16 inputs):
    the gradient tile enters its product row-scaled to its range."""
    first, rows, row_ok, a, labels_a, inverse_norm_a = _row_block(
        a_ptr, labels_a_ptr, inverse_norm_a_ptr, num_a, dims, HAS_LABELS, NORMALIZE, BLOCK_M, BLOCK_D)
    d_range = tl.arange(0, BLOCK_D)
    grad = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    if ROWS_ON:
        ga = tl.load(grad_a_ptr + rows, mask=row_ok, other=0.0)
        la = tl.load(lse_a_ptr + rows, mask=row_ok, other=0.0)
        ca = tl.load(counts_a_ptr + rows, mask=row_ok, other=1.0)
    for start in range(0, num_b, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < num_b
        logits, positive, same, b, inverse_norm_b = _logits_tile(
            a, b_ptr, labels_a, labels_b_ptr, inverse_norm_a, inverse_norm_b_ptr, rows, start, cols, num_b, dims,
            offset, scale, margin, MODE, HAS_LABELS, NORMALIZE, BLOCK_N, BLOCK_D, INPUT_PRECISION)
        g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        if ROWS_ON:
            g += ga[:, None] * (tl.exp(logits - la[:, None]) - tl.where(positive, 1.0 / ca[:, None], 0.0))
        if COLS_ON:
            gb = tl.load(grad_b_ptr + cols, mask=col_ok, other=0.0)
            lb = tl.load(lse_b_ptr + cols, mask=col_ok, other=0.0)
            cb = tl.load(counts_b_ptr + cols, mask=col_ok, other=1.0)
            g += gb[None, :] * (tl.exp(logits - lb[None, :]) - tl.where(positive, 1.0 / cb[None, :], 0.0))
        # Excluded, zeroed and out-of-range entries are constants: no gradient.
        constant = (logits == float("-inf")) | (same & (MODE == 2)) | ~row_ok[:, None] | ~col_ok[None, :]
        g = tl.where(constant, 0.0, g)
        if NORMALIZE:
            # The unit columns, rounded to the input dtype like a 16-bit matmul's operand. Not their
            # inverse norms folded into g: up to 1 / eps, they would overflow fp16.
            b = (b.to(tl.float32) * inverse_norm_b[:, None]).to(b.dtype)
        if SCALE_ROWS:
            # fp16 (6e-8 .. 65504) cannot hold g, whose entries run from softmax tails to loss-scaled
            # targets: each row is divided by its largest entry for the product, and multiplied back.
            peak = tl.max(tl.abs(g), axis=1)
            peak = tl.where(peak > 0.0, peak, 1.0)
            grad += tl.dot((g / peak[:, None]).to(b.dtype), b, input_precision=INPUT_PRECISION) * peak[:, None]
        else:
            grad += tl.dot(g.to(b.dtype), b, input_precision=INPUT_PRECISION).to(tl.float32)
    tl.store(_block_rows(out_ptr, first, dims, BLOCK_M, BLOCK_D), (scale * grad).to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (d_range[None, :] < dims))


def _positive_counts(labels_a, labels_b, offset, same_identity, num_a, like):
    """Positives of every row: its diagonal plus, in mode "positive", columns of its identity."""
    if same_identity != "positive" or labels_a is None:
        return torch.ones(num_a, dtype=like.dtype, device=like.device)
    ordered = labels_b.sort().values
    same = torch.searchsorted(ordered, labels_a, right=True) - torch.searchsorted(ordered, labels_a)
    return (same + labels_b[offset:offset + num_a].ne(labels_a)).to(like.dtype)


def _check_op_inputs(x: torch.Tensor, y: torch.Tensor, labels_x: torch.Tensor | None, labels_y: torch.Tensor | None,
                     scale: float, margin: float, same_identity: str, offset: int, rows: bool, columns: bool
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The registered ops' own checks of x (N, D), y (M, D), labels_x (N,) and labels_y (M,) (both or
    neither), scale and margin, with the front end's checks (tgfr.ops.contrastive): the ops can be
    called directly (as a compiled graph or a user may), past the front end, and the kernels take N, M
    and D from x and y and every target column i + offset as there, so a smaller D of y, short labels
    or an offset without a target would have them read past a tensor, and a NaN or negative scale
    would give NaN or negated losses. Metadata and Python numbers only: it holds while torch.compile
    traces. Returns the labels as int64 (or None)."""
    _check_embeddings(x, y)
    _check_triton_dtype(x)
    check_same_device(x=x, y=y)
    if (labels_x is None) != (labels_y is None):
        given = "labels_x" if labels_y is None else "labels_y"
        raise ValueError(f"labels_x and labels_y must be given both or neither, got only {given}")
    labels_x, labels_y = _check_labels(x, y, labels_x, labels_y, names=("labels_x", "labels_y"))
    check_choice("same_identity", same_identity, SAME_IDENTITY_MODES)
    if rows or columns:
        _check_offset(offset, x.shape[0], y.shape[0], "both" if rows and columns else "rows" if rows else "columns")
    maximum = _hyperparameter_maximum(x.dtype)
    check_positive("scale", scale, maximum)
    check_finite_number("margin", margin, maximum)
    return labels_x, labels_y


def _check_direction_gradients(grad_row_loss: torch.Tensor, grad_col_loss: torch.Tensor, row_lse: torch.Tensor,
                               col_lse: torch.Tensor, num_rows: int, num_columns: int, rows: bool,
                               columns: bool) -> None:
    """The backward kernels read one loss gradient and one log-sum-exp per row of x (N) for `rows`
    and per row of y (M) for `columns`: each of those must be (N,) or (M,)."""
    for on, count, what, named in (
        (rows, num_rows, "one per row of x", {"grad_row_loss": grad_row_loss, "row_lse": row_lse}),
        (columns, num_columns, "one per row of y", {"grad_col_loss": grad_col_loss, "col_lse": col_lse}),
    ):
        for name, tensor in named.items() if on else ():
            check_tensor(name, tensor, ndim=1)
            check_size(name, tensor, 0, count, what)


def _contiguous(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The kernels index rows as row * D and labels as label_ptr + row: the public front end passes
    contiguous tensors, a direct call of the registered op may not."""
    return [None if tensor is None else tensor.contiguous() for tensor in tensors]


_NORMALIZE_EPS = 1e-12  # F.normalize's: rows are divided by max(norm, eps)


def _row_norms(embeddings: torch.Tensor) -> torch.Tensor:
    """(N,) fp32 L2 norms of the rows of (N, D) embeddings."""
    return torch.linalg.vector_norm(embeddings, dim=1, dtype=torch.float32)


def _inverse_norms(embeddings: torch.Tensor, normalize: bool) -> torch.Tensor | None:
    """(N,) fp32 1 / max(norm, eps), the factor that makes each row a unit row; None without
    normalize."""
    return _row_norms(embeddings).clamp_min(_NORMALIZE_EPS).reciprocal() if normalize else None


def _normalization_backward(embeddings: torch.Tensor, grad_units: torch.Tensor) -> torch.Tensor:
    """Gradient of the loss in the (N, D) embeddings from its gradient in their unit rows
    (fp32, (N, D)), in fp32 and rounded once to the embeddings' dtype: the unit rows' gradient
    less its radial part, over the norm. Rows clamped at eps were divided by the constant eps,
    so nothing is removed there (as in F.normalize's backward)."""
    norms = _row_norms(embeddings)
    inverse = norms.clamp_min(_NORMALIZE_EPS).reciprocal()[:, None]
    units = embeddings.float() * inverse
    radial = units * (units * grad_units).sum(dim=1, keepdim=True)
    tangential = torch.where((norms >= _NORMALIZE_EPS)[:, None], grad_units - radial, grad_units)
    return (inverse * tangential).to(embeddings.dtype)


def _launch_forward(a, b, labels_a, labels_b, inverse_norm_a, inverse_norm_b, scale, margin, same_identity, offset):
    num_a, dims = a.shape
    accumulation = reference.accumulation_dtype(a.dtype)
    loss = torch.empty(num_a, dtype=accumulation, device=a.device)
    lse = torch.empty_like(loss)
    counts = _positive_counts(labels_a, labels_b, offset, same_identity, num_a, loss)
    has_labels = labels_a is not None and same_identity != "none"
    normalize = inverse_norm_a is not None
    dummy_labels = torch.zeros(1, dtype=torch.int64, device=a.device)
    dummy = torch.ones(1, dtype=accumulation, device=a.device)
    wrap_triton(_forward_rows_kernel)[(triton.cdiv(num_a, BLOCK_ROWS),)](
        a, b, labels_a if has_labels else dummy_labels, labels_b if has_labels else dummy_labels,
        inverse_norm_a if normalize else dummy, inverse_norm_b if normalize else dummy, counts, loss, lse,
        num_a, b.shape[0], dims, offset, scale, margin, MODE=_MODES[same_identity], HAS_LABELS=has_labels,
        NORMALIZE=normalize, BLOCK_M=BLOCK_ROWS, BLOCK_N=BLOCK_COLS, BLOCK_D=max(16, triton.next_power_of_2(dims)),
        INPUT_PRECISION=dot_input_precision(a.dtype))
    return loss, lse


@triton_op("tgfr::contrastive_forward_triton", mutates_args=())
def contrastive_forward(x: torch.Tensor, y: torch.Tensor, labels_x: torch.Tensor | None,
                        labels_y: torch.Tensor | None, scale: float, margin: float, same_identity: str,
                        offset: int, rows: bool, columns: bool, normalize: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton twin of torch.ops.tgfr.contrastive_forward (same arguments and outputs), which
    with `normalize` L2-normalizes x and y itself (see the module docstring)."""
    labels_x, labels_y = _check_op_inputs(x, y, labels_x, labels_y, scale, margin, same_identity, offset, rows,
                                          columns)
    x, y, labels_x, labels_y = _contiguous(x, y, labels_x, labels_y)
    empty = x.new_empty(0, dtype=reference.accumulation_dtype(x.dtype))
    row_loss, row_lse = empty, empty.clone()
    column_loss, column_lse = empty.clone(), empty.clone()
    inverse_norm_x, inverse_norm_y = _inverse_norms(x, normalize), _inverse_norms(y, normalize)
    common = (scale, margin, same_identity)
    if rows:
        row_loss, row_lse = _launch_forward(x, y, labels_x, labels_y, inverse_norm_x, inverse_norm_y, *common, offset)
    if columns:
        column_loss, column_lse = _launch_forward(y, x, labels_y, labels_x, inverse_norm_y, inverse_norm_x, *common,
                                                  -offset)
    return row_loss, column_loss, row_lse, column_lse


def _launch_backward(a, b, labels_a, labels_b, inverse_norm_a, inverse_norm_b, grad_a, lse_a, grad_b, lse_b, scale,
                     margin, same_identity, offset, rows_on, columns_on):
    num_a, dims = a.shape
    has_labels = labels_a is not None and same_identity != "none"
    normalize = inverse_norm_a is not None
    dummy = torch.zeros(1, dtype=lse_a.dtype if rows_on else lse_b.dtype, device=a.device)
    dummy_labels = torch.zeros(1, dtype=torch.int64, device=a.device)
    counts_a = _positive_counts(labels_a, labels_b, offset, same_identity, num_a, dummy) if rows_on else dummy
    counts_b = _positive_counts(labels_b, labels_a, -offset, same_identity, b.shape[0], dummy) if columns_on else dummy
    # With normalize, the gradient of the unit rows, in fp32 for _normalization_backward.
    out = torch.empty(a.shape, dtype=dummy.dtype, device=a.device) if normalize else torch.empty_like(a)
    wrap_triton(_backward_rows_kernel)[(triton.cdiv(num_a, BLOCK_ROWS),)](
        a, b, labels_a if has_labels else dummy_labels, labels_b if has_labels else dummy_labels,
        inverse_norm_a if normalize else dummy, inverse_norm_b if normalize else dummy,
        grad_a if rows_on else dummy, lse_a if rows_on else dummy, counts_a,
        grad_b if columns_on else dummy, lse_b if columns_on else dummy, counts_b, out,
        num_a, b.shape[0], dims, offset, scale, margin, MODE=_MODES[same_identity], HAS_LABELS=has_labels,
        NORMALIZE=normalize, ROWS_ON=rows_on, COLS_ON=columns_on, SCALE_ROWS=a.dtype == torch.float16,
        BLOCK_M=BLOCK_ROWS, BLOCK_N=BLOCK_COLS,
        BLOCK_D=max(16, triton.next_power_of_2(dims)), INPUT_PRECISION=dot_input_precision(a.dtype))
    return _normalization_backward(a, out) if normalize else out


@triton_op("tgfr::contrastive_backward_triton", mutates_args=())
def contrastive_backward(grad_row_loss: torch.Tensor, grad_col_loss: torch.Tensor, x: torch.Tensor,
                         y: torch.Tensor, labels_x: torch.Tensor | None, labels_y: torch.Tensor | None,
                         row_lse: torch.Tensor, col_lse: torch.Tensor, scale: float, margin: float,
                         same_identity: str, offset: int, rows: bool, columns: bool, normalize: bool
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of torch.ops.tgfr.contrastive_backward, plus `normalize` (as in the forward)."""
    labels_x, labels_y = _check_op_inputs(x, y, labels_x, labels_y, scale, margin, same_identity, offset, rows,
                                          columns)
    _check_direction_gradients(grad_row_loss, grad_col_loss, row_lse, col_lse, x.shape[0], y.shape[0], rows, columns)
    grad_row_loss, grad_col_loss, x, y, labels_x, labels_y, row_lse, col_lse = _contiguous(
        grad_row_loss, grad_col_loss, x, y, labels_x, labels_y, row_lse, col_lse)
    inverse_norm_x, inverse_norm_y = _inverse_norms(x, normalize), _inverse_norms(y, normalize)
    common = (scale, margin, same_identity)
    grad_x = _launch_backward(x, y, labels_x, labels_y, inverse_norm_x, inverse_norm_y, grad_row_loss, row_lse,
                              grad_col_loss, col_lse, *common, offset, rows, columns)
    grad_y = _launch_backward(y, x, labels_y, labels_x, inverse_norm_y, inverse_norm_x, grad_col_loss, col_lse,
                              grad_row_loss, row_lse, *common, -offset, columns, rows)
    return grad_x, grad_y


def contrastive_row_max(x, y, labels_x, labels_y, same_identity, offset):
    """Hardest negatives for CUDA tensors, from row blocks of the full similarity (forward only,
    O(block * M) memory)."""
    maxima = []
    for start in range(0, x.shape[0], 4096):
        block = x[start:start + 4096]
        labels = None if labels_x is None else labels_x[start:start + 4096]
        maxima.append(reference.contrastive_row_max(block, y, labels, labels_y, same_identity, offset + start))
    return torch.cat(maxima)


# Explicit fake kernels: the ones triton_op derives by tracing the launches do not work when the
# kernels are interpreted (TRITON_INTERPRET=1) rather than compiled.
@contrastive_forward.register_fake
def _contrastive_forward_fake(x, y, labels_x, labels_y, scale, margin, same_identity, offset, rows, columns,
                              normalize):
    return cpu_forward_fake(x, y, labels_x, labels_y, scale, margin, same_identity, offset, rows, columns)


@contrastive_backward.register_fake
def _contrastive_backward_fake(grad_row_loss, grad_col_loss, x, y, *args):
    return x.new_empty(x.shape), y.new_empty(y.shape)  # contiguous, as the op's


def _setup_context(ctx, inputs, output):
    x, y, labels_x, labels_y, scale, margin, same_identity, offset, rows, columns, normalize = inputs
    ctx.save_for_backward(x, y, labels_x, labels_y, output[2], output[3])
    ctx.hyperparameters = (scale, margin, same_identity, offset, rows, columns, normalize)
    ctx.mark_non_differentiable(output[2], output[3])


def _backward(ctx, grad_row_loss, grad_column_loss, _grad_row_lse, _grad_column_lse):
    x, y, labels_x, labels_y, row_lse, column_lse = ctx.saved_tensors
    grad_row_loss = torch.zeros_like(row_lse) if grad_row_loss is None else grad_row_loss.contiguous()
    grad_column_loss = torch.zeros_like(column_lse) if grad_column_loss is None else grad_column_loss.contiguous()
    grad_x, grad_y = contrastive_backward(grad_row_loss, grad_column_loss, x, y, labels_x, labels_y, row_lse,
                                          column_lse, *ctx.hyperparameters)
    return grad_x, grad_y, None, None, None, None, None, None, None, None, None


contrastive_forward.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward("tgfr::contrastive_backward_triton", "contrastive_loss (backend 'triton')")
