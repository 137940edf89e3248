"""The registered Triton contrastive ops check their inputs' sizes themselves, under the Triton
interpreter on CPU tensors (run in a child process by `test_interpreter_suite`, as in
tests/triton_interpreter.py).

The ops can be called directly (as a compiled graph or a user may), past the front end's checks.
They took N, M and D from x and y and each row's target column i + offset unchecked: a y of
smaller D, short labels or an offset without a target were read past their ends (garbage losses
here, an illegal memory access on a GPU). The reference is the C++ op, which refuses each case.
"""

import math

import pytest
import torch

from derivative_transforms import DERIVATIVE_TRANSFORMS
from triton_interpreter import interpreted_only, parent_only, run_interpreted


@parent_only
def test_interpreter_suite():
    summary = run_interpreted(__file__)
    assert "skipped" not in summary, summary


# name: (N, M, D of y, labels_x, labels_y, same_identity, offset, rows, columns, the error, the argument
# the Triton op's message must name). x is (N, 8); a label entry is a count of zeros, a shape, or None.
BAD_INPUTS = {
    "y D": (4, 4, 4, None, None, "none", 0, True, True, ValueError, "y"),
    "x N=0": (0, 4, 8, None, None, "none", 0, True, False, ValueError, "x"),
    "y M=0": (4, 0, 8, None, None, "none", 0, True, False, ValueError, "y"),
    "labels_x short": (4, 4, 8, 1, 4, "exclude", 0, True, True, ValueError, "labels_x"),
    "labels_x 2-D": (4, 4, 8, (2, 2), 4, "exclude", 0, True, True, ValueError, "labels_x"),
    "labels_y short": (4, 6, 8, 4, 3, "exclude", 1, True, False, ValueError, "labels_y"),
    "labels_y alone": (4, 4, 8, None, 4, "exclude", 0, True, True, ValueError, "labels_x and labels_y"),
    "offset past M - N": (4, 4, 8, None, None, "none", 3, True, True, ValueError, "offset"),
    "rows offset past M - N": (4, 6, 8, None, None, "none", 3, True, False, ValueError, "offset"),
    "rows offset negative": (4, 6, 8, None, None, "none", -1, True, False, ValueError, "offset"),
    "columns offset positive": (6, 4, 8, None, None, "none", 1, False, True, ValueError, "direction 'columns'"),
    "unknown same_identity": (4, 4, 8, 4, 4, "mask", 0, True, True, ValueError, "same_identity"),
}


def _inputs(case):
    """(x, y, labels_x, labels_y, same_identity, offset, rows, columns), the error and the name."""
    num_rows, num_columns, dim_y, labels_x, labels_y, same_identity, offset, rows, columns, error, name = (
        BAD_INPUTS[case])
    generator = torch.Generator().manual_seed(5)
    x, y = torch.randn(num_rows, 8, generator=generator), torch.randn(num_columns, dim_y, generator=generator)
    labels = [None if shape is None else torch.zeros(shape, dtype=torch.int64) for shape in (labels_x, labels_y)]
    return (x, y, *labels, same_identity, offset, rows, columns), error, name


@interpreted_only
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_registered_forward_op_checks_sizes_itself(case):
    from tgfr.ops import contrastive_triton  # noqa: F401  (registers the ops)

    (x, y, labels_x, labels_y, same_identity, offset, rows, columns), error, name = _inputs(case)
    with pytest.raises(error):  # the reference: the C++ op refuses these inputs
        torch.ops.tgfr.contrastive_forward(x, y, labels_x, labels_y, 5.0, 0.1, same_identity, offset, rows, columns)
    with pytest.raises(error, match=f"^{name} "):
        torch.ops.tgfr.contrastive_forward_triton(x, y, labels_x, labels_y, 5.0, 0.1, same_identity, offset, rows,
                                                  columns, True)


# The backward's own arguments: one loss gradient and one log-sum-exp per row of x (rows) and of y
# (columns), as (N, M, rows, columns, length of grad_row_loss, of row_lse, of grad_col_loss, of col_lse,
# the argument named).
BAD_GRADIENTS = {
    "grad_row_loss short": (4, 4, True, True, 3, 4, 4, 4, "grad_row_loss"),
    "row_lse short": (4, 4, True, False, 4, 2, 0, 0, "row_lse"),
    "grad_col_loss short": (6, 4, False, True, 0, 0, 3, 4, "grad_col_loss"),
    "col_lse long": (4, 4, True, True, 4, 4, 4, 5, "col_lse"),
}


@interpreted_only
@pytest.mark.parametrize("case", [*BAD_INPUTS, *BAD_GRADIENTS])
def test_registered_backward_op_checks_sizes_itself(case):
    from tgfr.ops import contrastive_triton  # noqa: F401  (registers the ops)

    if case in BAD_GRADIENTS:
        num_rows, num_columns, rows, columns, *lengths, name = BAD_GRADIENTS[case]
        generator = torch.Generator().manual_seed(6)
        x, y = torch.randn(num_rows, 8, generator=generator), torch.randn(num_columns, 8, generator=generator)
        grad_row_loss, row_lse, grad_col_loss, col_lse = (torch.ones(length) for length in lengths)
        labels_x = labels_y = None
        same_identity, offset, error = "none", 0, ValueError
    else:
        (x, y, labels_x, labels_y, same_identity, offset, rows, columns), error, name = _inputs(case)
        grad_row_loss, row_lse = torch.ones(x.shape[0] if rows else 0), torch.ones(x.shape[0] if rows else 0)
        grad_col_loss, col_lse = torch.ones(y.shape[0] if columns else 0), torch.ones(y.shape[0] if columns else 0)
    arguments = (grad_row_loss, grad_col_loss, x, y, labels_x, labels_y, row_lse, col_lse, 5.0, 0.1, same_identity,
                 offset, rows, columns)
    with pytest.raises(error):  # the reference: the C++ op refuses these inputs
        torch.ops.tgfr.contrastive_backward(*arguments)
    with pytest.raises(error, match=f"^{name} "):
        torch.ops.tgfr.contrastive_backward_triton(*arguments, True)



# (scale, margin, the argument named): a NaN scale gave NaN losses, a negative one the losses of the negated
# logits, 1e39 is inf in the kernels' float32.
BAD_NUMBERS = {
    "scale 0": (0.0, 0.0, "scale"), "scale negative": (-1.0, 0.0, "scale"), "scale nan": (math.nan, 0.0, "scale"),
    "scale inf": (math.inf, 0.0, "scale"), "scale 1e39": (1e39, 0.0, "scale"), "margin nan": (5.0, math.nan, "margin"),
    "margin -inf": (5.0, -math.inf, "margin"), "margin 1e39": (5.0, 1e39, "margin"),
}


@interpreted_only
@pytest.mark.parametrize("case", list(BAD_NUMBERS))
def test_registered_ops_check_scale_and_margin(case):
    from tgfr.ops import contrastive_triton  # noqa: F401  (registers the ops)

    scale, margin, name = BAD_NUMBERS[case]
    generator = torch.Generator().manual_seed(7)
    x, y = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    settings = (scale, margin, "none", 0, True, True)
    with pytest.raises(ValueError):  # the reference: the C++ op refuses these numbers
        torch.ops.tgfr.contrastive_forward(x, y, None, None, *settings)
    with pytest.raises(ValueError, match=f"^{name} "):
        torch.ops.tgfr.contrastive_forward_triton(x, y, None, None, *settings, True)
    with pytest.raises(ValueError, match=f"^{name} "):
        torch.ops.tgfr.contrastive_backward_triton(torch.ones(4), torch.ones(4), x, y, None, None, torch.zeros(4),
                                                   torch.zeros(4), *settings, True)

@interpreted_only
def test_checks_take_symbolic_sizes():
    # torch.compile with dynamic shapes traces the op with symbolic sizes, and an offset from a dynamic
    # batch size (tgfr.distributed.row_offset) is a SymInt there, which the offset check once refused.
    from torch.fx.experimental.proxy_tensor import make_fx

    from tgfr.ops import contrastive_triton

    def check(x, y, labels_x, labels_y):
        offset = y.shape[0] - x.shape[0]
        labels_x, labels_y = contrastive_triton._check_op_inputs(x, y, labels_x, labels_y, 5.0, 0.1, "exclude", offset,
                                                                 True, False)
        return labels_x + labels_y[offset:]

    labels_x, labels_y = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 0, 1, 2])
    graph = make_fx(check, tracing_mode="symbolic")(torch.randn(3, 8), torch.randn(5, 8), labels_x, labels_y)
    torch.testing.assert_close(graph(torch.randn(2, 8), torch.randn(4, 8), torch.tensor([0, 1]),
                                     torch.tensor([5, 5, 1, 2])), torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="^y "):
        make_fx(check, tracing_mode="symbolic")(torch.randn(3, 8), torch.randn(5, 4), labels_x, labels_y)


@interpreted_only
@pytest.mark.parametrize("transform", ["forward_ad", "jvp", "grad"])
def test_forward_ad_and_func_transforms_raise(transform):
    """The Triton op's own autograd kernel does not refuse tangents (tgfr/ops/first_order.py): without the front
    end's refusal a forward-mode derivative through it was dropped, a tangent of None, without an error."""
    from tgfr.ops import contrastive_loss

    generator = torch.Generator().manual_seed(6)
    x, y = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    with pytest.raises(NotImplementedError, match="contrastive cross-entropy has fused reverse-mode gradients only"):
        DERIVATIVE_TRANSFORMS[transform](lambda a: contrastive_loss(a, y, backend="triton"), x)


@interpreted_only
@pytest.mark.parametrize("normalize", [True, False])
def test_registered_ops_refuse_float64(normalize):
    """Not among BAD_INPUTS: the C++ op takes float64. The Triton kernels compute in fp32: the forward op gave float64
    losses at fp32 precision (normalize=False) or linalg.vector_norm's error, which names no argument (True)."""
    from tgfr.ops import contrastive_triton  # noqa: F401  (registers the ops)

    generator = torch.Generator().manual_seed(8)
    x, y = (torch.randn(4, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    settings = (5.0, 0.1, "none", 0, True, True, normalize)
    message = "^x must be float32, bfloat16 or float16 for backend 'triton', got float64"
    with pytest.raises(TypeError, match=message):
        torch.ops.tgfr.contrastive_forward_triton(x, y, None, None, *settings)
    with pytest.raises(TypeError, match=message):
        torch.ops.tgfr.contrastive_backward_triton(torch.ones(4), torch.ones(4), x, y, None, None, torch.zeros(4),
                                                   torch.zeros(4), *settings)
