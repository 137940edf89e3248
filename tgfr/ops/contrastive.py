"""Fused contrastive cross-entropy with O(N + M) memory: front end, fake kernels and autograd.

The op works on two embedding matrices, never on a logits matrix:

    logits[i, j] = scale * (<x_i, y_j> - margin * [j == i + offset])

with x and y L2-normalized first by default (`normalize=True`, so logits = scale * cos as in
SPEC section 3; for the CPU kernel and the reference the normalization is plain PyTorch in the
accumulation dtype, O((N + M) D), and autograd goes through it; the Triton op normalizes inside,
with fp32 norms, so that 16-bit inputs keep 16-bit tile products).
Pass normalize=False for embeddings that are already normalized or for raw dot products.
Row i's target is column i + offset; `offset` is how a rank's local rows find their columns in
a gathered batch (tgfr.distributed). Same-identity off-diagonal entries follow `same_identity`
(SPEC section 3 table). The kernels (csrc/contrastive_cpu.cpp, tgfr/ops/contrastive_triton.py)
walk tiles with an online log-sum-exp and recompute the tiles in the backward.
"""

import numbers
import os

import torch
import torch.nn.functional as F

from tgfr import reference
from tgfr.ops import _library  # noqa: F401  (loads tgfr._C, which defines torch.ops.tgfr.*)
from tgfr.ops.autocast import autocast_inputs, promoted_under_autocast, without_autocast
from tgfr.ops.first_order import (
    refuse_double_backward,
    refuse_forward_ad_and_transforms,
    register_reverse_mode_autograd,
)
from tgfr.validation import (
    check_choice,
    check_finite_number,
    check_flag,
    check_nonempty,
    check_positive,
    check_same_device,
    check_size,
    check_tensor,
)

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
LABEL_DTYPES = (torch.int64, torch.int32)
SAME_IDENTITY_MODES = ("exclude", "zero", "positive", "none")
DIRECTIONS = ("rows", "columns", "both")
BACKENDS = ("auto", "reference", "cpu", "triton")


def _hyperparameter_maximum(dtype: torch.dtype) -> float:
    """Largest scale or margin the kernels can hold: a float32 one for every input dtype but
    float64 (a larger Python float becomes inf there, and the loss inf or NaN)."""
    return torch.finfo(reference.accumulation_dtype(dtype)).max


def _check_embeddings(x: torch.Tensor, y: torch.Tensor) -> None:
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("y", y, ndim=2, dtypes=FLOAT_DTYPES)
    if y.dtype != x.dtype:
        raise TypeError(f"y must have the dtype of x ({x.dtype}), got {y.dtype}")
    check_nonempty("x", x, 0)
    check_nonempty("x", x, 1)
    check_nonempty("y", y, 0)
    check_size("y", y, 1, x.shape[1], "the embedding size D of x")


def _check_labels(
    x: torch.Tensor, y: torch.Tensor, row_labels: torch.Tensor | None, column_labels: torch.Tensor | None,
    names: tuple[str, str] = ("row_labels", "column_labels"),
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Labels as int64; column_labels default to row_labels when x and y are one batch. `names`
    are the two labels' argument names for the messages (the registered ops call them labels_x
    and labels_y)."""
    row_name, column_name = names
    if row_labels is None:
        if column_labels is not None:
            raise ValueError(f"{column_name} were given without {row_name}")
        return None, None
    check_tensor(row_name, row_labels, ndim=1, dtypes=LABEL_DTYPES)
    check_size(row_name, row_labels, 0, x.shape[0], "one label per row of x")
    if column_labels is None:
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{column_name} must be given when x and y have different numbers of rows (N={x.shape[0]}, "
                f"M={y.shape[0]}): they default to {row_name}, which label the rows of x only"
            )
        column_labels = row_labels
    check_tensor(column_name, column_labels, ndim=1, dtypes=LABEL_DTYPES)
    check_size(column_name, column_labels, 0, y.shape[0], "one label per row of y")
    check_same_device(**{"x": x, "y": y, row_name: row_labels, column_name: column_labels})
    return row_labels.to(torch.int64).contiguous(), column_labels.to(torch.int64).contiguous()


def _check_offset(offset: object, num_rows: int, num_columns: int, direction: str) -> int:
    # A SymInt where torch.compile traces the registered Triton ops, which check with this too, with
    # dynamic shapes: an offset from a dynamic batch size (tgfr.distributed.row_offset) is one. A numpy
    # integer becomes an int, which the registered ops' schemas take (numpy's bool is no Integral).
    if isinstance(offset, bool) or not isinstance(offset, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if not isinstance(offset, torch.SymInt):
        offset = int(offset)
    # An offset cannot help when the sizes themselves rule every offset out: say so, not "offset".
    if direction == "both" and num_rows != num_columns:
        raise ValueError(
            f"direction 'both' needs x and y with the same number of rows (every row and every column "
            f"has its target), got N={num_rows}, M={num_columns}; use direction 'rows' (N <= M) or "
            f"'columns' (N >= M)"
        )
    if direction == "rows" and num_rows > num_columns:
        raise ValueError(
            f"x must not have more rows than y (N={num_rows} > M={num_columns}): row i's target is "
            f"column i + offset of y"
        )
    if direction == "columns" and num_columns > num_rows:
        raise ValueError(
            f"y must not have more rows than x (M={num_columns} > N={num_rows}) for direction 'columns': "
            f"column j's target is row j - offset of x"
        )
    if direction in ("rows", "both") and not 0 <= offset <= num_columns - num_rows:
        raise ValueError(
            f"offset must lie in [0, M - N] = [0, {num_columns - num_rows}] so that row i's target "
            f"column i + offset exists (N={num_rows} rows of x, M={num_columns} rows of y), got {offset}"
        )
    if direction in ("columns", "both") and not num_columns - num_rows <= offset <= 0:
        raise ValueError(
            f"direction {direction!r} needs a target row j - offset for every column j: offset in "
            f"[M - N, 0] = [{num_columns - num_rows}, 0] (N={num_rows}, M={num_columns}), got {offset}"
        )
    return offset


def _normalized(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, D) rows L2-normalized in the accumulation dtype: normalized in bf16 they would be
    rounded to bf16 (a loss error of about scale * 2^-9) before the fp32 kernel ever saw them.
    Autograd casts the gradient back to the input dtype."""
    return F.normalize(embeddings.to(reference.accumulation_dtype(embeddings.dtype)), dim=1)


def _resolve_backend(backend: str, x: torch.Tensor) -> str:
    from tgfr.ops.backends import available_backends

    check_choice("backend", backend, BACKENDS)
    device = x.device
    if backend == "auto":
        if device.type == "cpu":
            return "cpu"
        # The Triton kernel computes in fp32; float64 (gradcheck) keeps its precision in the reference.
        return "triton" if "triton" in available_backends() and x.dtype != torch.float64 else "reference"
    if backend not in available_backends():
        raise ValueError(f"backend {backend!r} is not available here; available: {available_backends()}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {device}")
    if backend == "triton":
        _check_triton_dtype(x)
    return backend


def _check_triton_dtype(x: torch.Tensor) -> None:
    """Refuses a float64 x (N, D) (y has its dtype): the Triton kernels compute in fp32, and the losses would come
    back float64 but not that precise. The registered Triton ops check it too: they can be called directly."""
    if x.dtype == torch.float64:
        raise TypeError(
            "x must be float32, bfloat16 or float16 for backend 'triton', got float64 "
            "(use backend='cpu' or 'reference' for float64)"
        )


def contrastive_cross_entropy(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float = 10.0,
    margin: float = 0.0,
    row_labels: torch.Tensor | None = None,
    column_labels: torch.Tensor | None = None,
    same_identity: str = "none",
    direction: str = "both",
    offset: int = 0,
    normalize: bool = True,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row and per-column contrastive cross-entropy, fused (no N x M matrix).

    Args:
        x: (N, D) queries (rows), float32/bfloat16/float16, or float64 (for gradcheck).
        y: (M, D) keys (columns), same dtype and device.
        scale: logit scale s (logits = s * cos); at most float32's maximum unless x is float64.
        margin: subtracted from the similarity of each row's target before scaling; of magnitude
            at most float32's maximum unless x is float64.
        row_labels: optional (N,) identity labels of x; column_labels (M,) default to them.
        same_identity: "exclude", "zero", "positive" or "none" (SPEC section 3). Labels have no
            effect with "none", and a masking mode without labels has nothing to mask (the
            losses of tgfr.losses pass their mode whether or not labels come).
        direction: "rows" (each x_i against all y), "columns" (each y_j against all x) or "both".
        offset: row i's target is column i + offset (column j's is row j - offset).
        normalize: L2-normalize x and y first (in float32 for 16-bit inputs).
        backend: "auto", "reference", "cpu" or "triton".

    Returns:
        (row_loss (N,), column_loss (M,)), float32 (float64 for float64 inputs); a direction
        that is off gives an empty (0,) tensor. Differentiable in x and y.

    Under torch.autocast on CUDA, x and y are taken in the autocast dtype (bf16 or fp16), as a
    matmul's inputs are (tgfr/ops/autocast.py); gradients return in their own dtypes. Backend
    "reference", the float32 baseline, runs with autocast off on every device, and there takes a mix of
    float32 and 16-bit inputs in float32.
    """
    x, y = (autocast_inputs if backend != "reference" else promoted_under_autocast)(x, y)
    _check_embeddings(x, y)
    check_same_device(x=x, y=y)
    check_choice("direction", direction, DIRECTIONS)
    offset = _check_offset(offset, x.shape[0], y.shape[0], direction)
    row_labels, column_labels = _check_labels(x, y, row_labels, column_labels)
    check_choice("same_identity", same_identity, SAME_IDENTITY_MODES)
    maximum = _hyperparameter_maximum(x.dtype)
    scale, margin = check_positive("scale", scale, maximum), check_finite_number("margin", margin, maximum)
    normalize = check_flag("normalize", normalize)
    backend = _resolve_backend(backend, x)
    if backend != "reference":
        refuse_forward_ad_and_transforms("the fused contrastive cross-entropy", x, y)
    rows, columns = direction in ("rows", "both"), direction in ("columns", "both")
    if backend == "triton":
        from tgfr.ops import contrastive_triton

        # Normalizes inside, so that 16-bit inputs keep 16-bit products (contrastive_triton's docstring).
        row_loss, column_loss, _, _ = contrastive_triton.contrastive_forward(
            x.contiguous(), y.contiguous(), row_labels, column_labels, scale, margin, same_identity, offset, rows,
            columns, normalize,
        )
        return row_loss, column_loss
    if normalize:
        x, y = _normalized(x), _normalized(y)
    x, y = x.contiguous(), y.contiguous()
    if backend == "reference":
        # The float32 baseline under CPU autocast too, whose bf16 matmuls would round what it computes (as in
        # contrastive_row_max).
        with without_autocast(x.device.type):
            return reference.contrastive_cross_entropy(
                x, y, scale, margin, row_labels, column_labels, same_identity, direction, offset
            )
    row_loss, column_loss, _, _ = torch.ops.tgfr.contrastive_forward(
        x, y, row_labels, column_labels, scale, margin, same_identity, offset, rows, columns
    )
    return row_loss, column_loss


def contrastive_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float = 10.0,
    margin: float = 0.0,
    row_labels: torch.Tensor | None = None,
    column_labels: torch.Tensor | None = None,
    same_identity: str = "none",
    direction: str = "both",
    offset: int = 0,
    normalize: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Scalar contrastive loss: mean row cross-entropy plus mean column cross-entropy (SPEC
    section 3, "loss0 + loss1"); only one of them for direction "rows" or "columns". Arguments
    as in `contrastive_cross_entropy`."""
    row_loss, column_loss = contrastive_cross_entropy(
        x, y, scale, margin, row_labels, column_labels, same_identity, direction, offset, normalize, backend
    )
    total = row_loss.mean() if row_loss.numel() else None
    if column_loss.numel():
        total = column_loss.mean() if total is None else total + column_loss.mean()
    return total


def contrastive_row_max(
    x: torch.Tensor,
    y: torch.Tensor,
    row_labels: torch.Tensor | None = None,
    column_labels: torch.Tensor | None = None,
    same_identity: str = "none",
    offset: int = 0,
    normalize: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Hardest negative of each row: max over j != i + offset of the masked similarity, without
    an N x M matrix. Off-diagonal entries of the row's identity are skipped in modes "exclude"
    and "positive" (where they are positives, not negatives) and count as 0 in mode "zero".
    x (N, D), y (M, D) -> (N,) float32 (float64 for float64 inputs), -inf for a row with no
    negative. Not differentiable (CoReFace uses it on detached values). Under autocast on CUDA a mix of
    float32 and 16-bit inputs is taken in float32."""
    x, y = promoted_under_autocast(x, y)
    _check_embeddings(x, y)
    check_same_device(x=x, y=y)
    offset = _check_offset(offset, x.shape[0], y.shape[0], "rows")
    row_labels, column_labels = _check_labels(x, y, row_labels, column_labels)
    check_choice("same_identity", same_identity, SAME_IDENTITY_MODES)
    normalize = check_flag("normalize", normalize)
    backend = _resolve_backend(backend, x)
    # no_grad below stops reverse mode only: the reference's matmul would carry a forward-mode tangent.
    x, y = x.detach(), y.detach()
    # Without autocast: the reference's and the Triton backend's similarities are matmuls, which autocast
    # would take in bf16 (the maxima off by about 1e-3, CoReFace's margin with them), unlike the CPU kernel's.
    with torch.no_grad(), without_autocast(x.device.type):
        if normalize:
            x, y = _normalized(x), _normalized(y)
        if backend == "reference":
            return reference.contrastive_row_max(x, y, row_labels, column_labels, same_identity, offset)
        if backend == "triton":
            from tgfr.ops import contrastive_triton

            return contrastive_triton.contrastive_row_max(x, y, row_labels, column_labels, same_identity, offset)
        return torch.ops.tgfr.contrastive_row_max(x.contiguous(), y.contiguous(), row_labels, column_labels,
                                                  same_identity, offset)


def _check_op_inputs_on_one_device(**tensors: torch.Tensor | None) -> None:
    """The fake kernels are the ops' Meta kernels too: a direct call with one input on meta among CPU ones runs
    them, and without this check they returned uninitialized CPU memory. Absent (None) labels take no part."""
    check_same_device(**{name: tensor for name, tensor in tensors.items() if tensor is not None})


@torch.library.register_fake("tgfr::contrastive_forward")
def _contrastive_forward_fake(x, y, labels_x, labels_y, scale, margin, same_identity, offset, rows, columns):
    _check_op_inputs_on_one_device(x=x, y=y, labels_x=labels_x, labels_y=labels_y)
    dtype = reference.accumulation_dtype(x.dtype)
    row_loss = x.new_empty((x.shape[0] if rows else 0,), dtype=dtype)
    column_loss = x.new_empty((y.shape[0] if columns else 0,), dtype=dtype)
    return row_loss, column_loss, torch.empty_like(row_loss), torch.empty_like(column_loss)


@torch.library.register_fake("tgfr::contrastive_backward")
def _contrastive_backward_fake(grad_row_loss, grad_col_loss, x, y, labels_x, labels_y, row_lse, col_lse, *args):
    _check_op_inputs_on_one_device(grad_row_loss=grad_row_loss, grad_col_loss=grad_col_loss, x=x, y=y,
                                   labels_x=labels_x, labels_y=labels_y, row_lse=row_lse, col_lse=col_lse)
    # new_empty, not empty_like: the kernel's gradients are contiguous whatever the strides of x and y.
    return x.new_empty(x.shape), y.new_empty(y.shape)


@torch.library.register_fake("tgfr::contrastive_row_max")
def _contrastive_row_max_fake(x, y, labels_x, labels_y, same_identity, offset):
    _check_op_inputs_on_one_device(x=x, y=y, labels_x=labels_x, labels_y=labels_y)
    return x.new_empty((x.shape[0],), dtype=reference.accumulation_dtype(x.dtype))


def setup_context(ctx, inputs, output):
    """Saves what the recomputing backward needs: the inputs and the O(N + M) log-sum-exps."""
    x, y, labels_x, labels_y, scale, margin, same_identity, offset, rows, columns = inputs
    _, _, row_lse, column_lse = output
    ctx.save_for_backward(x, y, labels_x, labels_y, row_lse, column_lse)
    ctx.hyperparameters = (scale, margin, same_identity, offset, rows, columns)
    ctx.mark_non_differentiable(row_lse, column_lse)


def _grad_or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad.contiguous()


def _backward(ctx, grad_row_loss, grad_column_loss, _grad_row_lse, _grad_column_lse):
    x, y, labels_x, labels_y, row_lse, column_lse = ctx.saved_tensors
    grad_x, grad_y = torch.ops.tgfr.contrastive_backward(
        _grad_or_zeros(grad_row_loss, row_lse),
        _grad_or_zeros(grad_column_loss, column_lse),
        x, y, labels_x, labels_y, row_lse, column_lse, *ctx.hyperparameters,
    )
    return grad_x, grad_y, None, None, None, None, None, None, None, None


register_reverse_mode_autograd("tgfr::contrastive_forward", _backward, setup_context,
                               "the fused contrastive cross-entropy")

refuse_double_backward("tgfr::contrastive_backward", "contrastive_loss")
