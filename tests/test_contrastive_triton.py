"""Triton kernels of the contrastive op against the full-matrix reference: under the Triton
interpreter on CPU (in a subprocess, since TRITON_INTERPRET must be set before triton compiles
anything), and on CUDA tensors when a GPU is there."""

import os
import subprocess
import sys

import pytest
import torch

CHECK = """
import itertools, torch
from tgfr.ops import contrastive_cross_entropy, contrastive_row_max
torch.manual_seed(0)
device = "{device}"
# Columns with N > M and a negative offset: the columns' launches take -offset (their rows are y's).
for mode, direction in itertools.product(("exclude", "zero", "positive", "none"), ("rows", "columns", "both")):
    n, m, offset = {{"rows": (20, 45, 11), "columns": (45, 20, -11), "both": (37, 37, 0)}}[direction]
    x = torch.randn(n, 20, device=device, requires_grad=True)
    y = torch.randn(m, 20, device=device, requires_grad=True)
    labels = torch.randint(0, 6, (n,), device=device)
    column_labels = torch.randint(0, 6, (m,), device=device)
    kw = dict(scale=5.0, margin=0.2, row_labels=labels, column_labels=column_labels, same_identity=mode,
              direction=direction, offset=offset)
    got = contrastive_cross_entropy(x, y, backend="triton", **kw)
    expected = contrastive_cross_entropy(x, y, backend="reference", **kw)
    weights = [torch.randn(t.shape, device=device) for t in expected]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, got)), (x, y))
    grads_expected = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, expected)), (x, y))
    for a, b in zip(grads, grads_expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
# The fused backward has no derivative: differentiating its gradients again must fail, not drop it.
grads = torch.autograd.grad(contrastive_cross_entropy(x, y, backend="triton", **kw)[0].sum(), (x, y),
                            create_graph=True)
try:
    torch.autograd.grad(sum(g.square().sum() for g in grads), (x, y))
except RuntimeError as error:
    assert "first-order gradients only" in str(error), error
else:
    raise AssertionError("double backward through the Triton backward did not raise")
print("ok")
"""


def test_triton_kernels_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", CHECK.format(device="cpu")], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


# 16-bit inputs are normalized with fp32 norms (normalized in bf16, the unit vectors were rounded
# to bf16: losses off by about 0.15 at scale 64) while the tile products keep the input dtype
# (normalized in fp32 and multiplied in fp32, they left the tensor cores); a zero row and a row
# under F.normalize's eps get its gradient; rows of tiny norm under a loss scale keep finite
# gradients in the input dtype; and the hardest negative of mode "positive" skips the
# row's identity (the positives). All against float64 formulas written here. The interpreter
# runs it in float16 (Triton 3.9's interpreter mishandles bfloat16), CUDA in both.
CHECK_16BIT_AND_ROW_MAX = """
import torch, torch.nn.functional as F
from tgfr.ops import contrastive_cross_entropy, contrastive_row_max, contrastive_triton
device, dtype = "{device}", getattr(torch, "{dtype}")
kernel_dtypes = []
launch = contrastive_triton.wrap_triton
def recording_wrap_triton(kernel):
    launcher = launch(kernel)
    class Recorder:
        def __getitem__(self, grid):
            def run(a, b, *args, **kwargs):
                kernel_dtypes.append((a.dtype, b.dtype))
                return launcher[grid](a, b, *args, **kwargs)
            return run
    return Recorder()
contrastive_triton.wrap_triton = recording_wrap_triton
generator = torch.Generator().manual_seed(5)
x = torch.randn(40, 32, generator=generator).to(dtype)
y = (x.float() + 3.0 * torch.randn(40, 32, generator=generator)).to(dtype)
x, y = x.to(device).requires_grad_(), y.to(device).requires_grad_()
x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
logits = 64.0 * F.normalize(x64, dim=1) @ F.normalize(y64, dim=1).T
expected = (logits.logsumexp(1) - logits.diagonal(), logits.logsumexp(0) - logits.diagonal())
got = contrastive_cross_entropy(x, y, 64.0, backend="triton")
for a, b in zip(got, expected):
    torch.testing.assert_close(a.double(), b.detach(), rtol=0, atol=1e-4)
weights = torch.randn(2, 40, generator=generator, dtype=torch.float64).to(device)
grads = torch.autograd.grad(sum((t * w.float()).sum() for t, w in zip(got, weights)), (x, y))
grads_expected = torch.autograd.grad(sum((t * w).sum() for t, w in zip(expected, weights)), (x64, y64))
# The backward's gradient tile is rounded to the input dtype for its product, as in a 16-bit
# matmul: errors of the dtype's resolution relative to the largest gradient entry.
for a, b in zip(grads, grads_expected):
    assert a.dtype == dtype
    assert ((a.double() - b).abs() <= 2.0**-8 * b.abs() + torch.finfo(dtype).eps * b.abs().max()).all()
assert kernel_dtypes and set(kernel_dtypes) == {{(dtype, dtype)}}, kernel_dtypes
# Rows 0 and 1 have norms 0 and 1e-13, under eps = 1e-12: divided by eps, not by their norm.
small = torch.randn(6, 8, generator=generator)
small[0], small[1] = 0.0, torch.tensor([1e-13] + [0.0] * 7)
small = small.to(device).requires_grad_()
other = torch.randn(6, 8, generator=generator).to(device)
small64 = small.detach().double().requires_grad_()
logits = 3.0 * F.normalize(small64, dim=1) @ F.normalize(other.double(), dim=1).T
expected = logits.logsumexp(1) - logits.diagonal()
got = contrastive_cross_entropy(small, other, 3.0, direction="rows", backend="triton")[0]
torch.testing.assert_close(got.double(), expected.detach(), rtol=0, atol=1e-5)
grad, = torch.autograd.grad(got.sum(), small)
grad_expected, = torch.autograd.grad(expected.sum(), small64)
assert grad_expected[:2].abs().max() > 1e11
torch.testing.assert_close(grad.double(), grad_expected, rtol=1e-4, atol=1e-5)
# In the input dtype: a zero row and rows of norm 1e-3 in x (inverse norms up to 1 / eps) under a
# loss scale of 1024. d(y) stays finite and right (the inverse norms folded into the fp16 gradient
# tile overflowed it: d(y) was NaN); so does every entry of d(x) that the dtype can hold (the
# zero row's is 1e12 times larger, and others pass fp16's 65504: inf, as from the CPU kernel).
small = torch.randn(64, 32, generator=generator)
small = 1e-3 * small / small.norm(dim=1, keepdim=True)
small[5] = 0.0
small = small.to(dtype).to(device).requires_grad_()
other = torch.randn(64, 32, generator=generator).to(dtype).to(device).requires_grad_()
small64, other64 = small.detach().double().requires_grad_(), other.detach().double().requires_grad_()
logits = 64.0 * F.normalize(small64, dim=1) @ F.normalize(other64, dim=1).T
expected = 1024.0 * sum((logits.logsumexp(dim) - logits.diagonal()).mean() for dim in (1, 0))
got = 1024.0 * sum(t.mean() for t in contrastive_cross_entropy(small, other, 64.0, backend="triton"))
grads = torch.autograd.grad(got, (small, other))
grads_expected = torch.autograd.grad(expected, (small64, other64))
# Errors of the dtype's resolution relative to each row's largest entry, as in a 16-bit matmul.
representable = grads_expected[0].abs() < torch.finfo(dtype).max / 2
assert representable.sum() > 100
for a, b, kept in ((grads[0], grads_expected[0], representable), (grads[1], grads_expected[1], None)):
    kept = torch.ones_like(b, dtype=torch.bool) if kept is None else kept
    tolerance = 2.0**-8 * b.abs() + torch.finfo(dtype).eps * b.abs().amax(dim=1, keepdim=True)
    assert a[kept].isfinite().all()
    assert ((a.double() - b).abs() <= tolerance)[kept].all()
row_labels, column_labels = torch.randint(0, 6, (20,)).to(device), torch.randint(0, 6, (45,)).to(device)
a, b = torch.randn(20, 8).to(device), torch.randn(45, 8).to(device)
similarity = F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T
positive = (torch.arange(45, device=device)[None, :] == torch.arange(20, device=device)[:, None] + 11) | (
    row_labels[:, None] == column_labels[None, :])
got = contrastive_row_max(a, b, row_labels, column_labels, same_identity="positive", offset=11, backend="triton")
expected = similarity.masked_fill(positive, float("-inf")).amax(dim=1)
torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-6)
# Past the first block of 4096 rows, with rows near their targets (as in training, where a row whose target
# column were taken for another would find its own positive its hardest negative): each block's rows keep their
# global offset.
b = torch.randn(4300, 16, generator=generator).to(device)
a = b[60:4260] + 0.1 * torch.randn(4200, 16, generator=generator).to(device)
row_labels, column_labels = (torch.randint(0, 50, (size,), generator=generator).to(device) for size in (4200, 4300))
arguments = dict(same_identity="positive", offset=60)
got = contrastive_row_max(a, b, row_labels, column_labels, backend="triton", **arguments)
torch.testing.assert_close(got, contrastive_row_max(a, b, row_labels, column_labels, backend="reference", **arguments),
                           rtol=0, atol=1e-6)
print("ok")
"""


def test_16bit_normalization_and_positive_row_max_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", CHECK_16BIT_AND_ROW_MAX.format(device="cpu", dtype="float16")],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


# The registered ops, called directly: opcheck (schema, fake kernels, autograd registration) and
# non-contiguous inputs, which the kernels (row * D indexing) would misread.
CHECK_REGISTERED_OPS = """
import torch
from tgfr.ops import contrastive_triton  # noqa: F401  (registers the ops)
generator = torch.Generator().manual_seed(2)
x = torch.randn(12, 24, generator=generator).T.contiguous().T[:, :20]  # strides (1, 12), sliced
y = torch.randn(14, 20, generator=generator)  # M >= N: every row's target column i + offset exists
labels_x = torch.randint(0, 3, (24,), generator=generator)[::2]
labels_y = torch.randint(0, 3, (14,), generator=generator)
assert not x.is_contiguous() and not labels_x.is_contiguous()
for normalize in (True, False):
    arguments = (x, y, labels_x, labels_y, 5.0, 0.1, "exclude", 0, True, False, normalize)
    dense = (x.contiguous(), y, labels_x.contiguous(), labels_y, *arguments[4:])
    forward, backward = torch.ops.tgfr.contrastive_forward_triton, torch.ops.tgfr.contrastive_backward_triton
    got, expected = forward(*arguments), forward(*dense)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    grads = (torch.randn(12, generator=generator), torch.zeros(0), x, y, labels_x, labels_y, expected[2], expected[3],
             5.0, 0.1, "exclude", 0, True, False, normalize)
    got = backward(*grads)
    expected = backward(*grads[:2], x.contiguous(), y, labels_x.contiguous(), *grads[5:])
    assert got[0].abs().sum() > 0
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.library.opcheck(torch.ops.tgfr.contrastive_forward_triton.default,
                          (x.requires_grad_(), y.requires_grad_(), *arguments[2:]),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    # The backward ignores the lse outputs' gradients: they must not take part in autograd.
    losses = forward(x, y, *arguments[2:])
    assert losses[0].requires_grad and not (losses[2].requires_grad or losses[3].requires_grad), "lse requires grad"
    x, y = x.detach(), y.detach()
    torch.library.opcheck(torch.ops.tgfr.contrastive_backward_triton.default, grads,
                          test_utils=("test_schema", "test_faketensor"))
print("ok")
"""


def test_registered_ops_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", CHECK_REGISTERED_OPS], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


# Row offsets row * D past 2^31 (N * D > 2^31, e.g. N = 4194305 at D = 512) without such a
# tensor: rows 16 features wide spaced DIMS = 2^26 elements apart in one mostly virtual fp16 buffer
# (torch.empty does not touch its pages), launched with dims = DIMS and BLOCK_D = 16, so the kernels
# read and write the first 16 features of each row. Row 32, the first of the second block of rows
# and of the second column tile, starts at 2^31: an int32 offset wraps to 4 GB below the buffer
# (wrong values or a crash). The result must equal the launch on the compact rows.
CHECK_LARGE_OFFSETS = """
import torch, triton
from tgfr.ops import contrastive_triton as kernels
from tgfr.ops.triton_precision import dot_input_precision
DIMS, ROWS, WIDTH = 2**26, 33, 16
torch.manual_seed(0)
a, b = torch.randn(ROWS, WIDTH).half(), torch.randn(ROWS, WIDTH).half()
buffer = torch.empty(ROWS * DIMS, dtype=torch.float16)  # row i at i * DIMS: a, then b, then the gradient
for i in range(ROWS):
    buffer[i * DIMS:i * DIMS + WIDTH], buffer[i * DIMS + WIDTH:i * DIMS + 2 * WIDTH] = a[i], b[i]
spread_a, spread_b, spread_out = buffer, buffer[WIDTH:], buffer[2 * WIDTH:]
scale, margin, dummy = 5.0, 0.2, torch.zeros(1, dtype=torch.int64)
blocks = dict(BLOCK_M=kernels.BLOCK_ROWS, BLOCK_N=kernels.BLOCK_COLS, BLOCK_D=WIDTH,
              INPUT_PRECISION=dot_input_precision(torch.float16), MODE=0, HAS_LABELS=False, NORMALIZE=False)
grid = (triton.cdiv(ROWS, kernels.BLOCK_ROWS),)
loss, lse = kernels._launch_forward(a, b, None, None, None, None, scale, margin, "none", 0)
_, column_lse = kernels._launch_forward(b, a, None, None, None, None, scale, margin, "none", 0)
spread_loss, spread_lse, ones = torch.empty(ROWS), torch.empty(ROWS), torch.ones(ROWS)
kernels._forward_rows_kernel[grid](spread_a, spread_b, dummy, dummy, ones, ones, ones, spread_loss, spread_lse,
                                   ROWS, ROWS, DIMS, 0, scale, margin, **blocks)
torch.testing.assert_close(spread_loss, loss, rtol=0, atol=0)
grad_rows, grad_columns = torch.randn(ROWS), torch.randn(ROWS)
grad_a = kernels._launch_backward(a, b, None, None, None, None, grad_rows, lse, grad_columns, column_lse, scale,
                                  margin, "none", 0, True, True)
kernels._backward_rows_kernel[grid](spread_a, spread_b, dummy, dummy, ones, ones, grad_rows, lse, ones, grad_columns,
                                    column_lse, ones, spread_out, ROWS, ROWS, DIMS, 0, scale, margin,
                                    ROWS_ON=True, COLS_ON=True, SCALE_ROWS=True, **blocks)
spread_grad = torch.stack([spread_out[i * DIMS:i * DIMS + WIDTH] for i in range(ROWS)])
assert grad_a.abs().sum() > 0
torch.testing.assert_close(spread_grad, grad_a, rtol=0, atol=0)
print("ok")
"""


def test_row_offsets_past_int32_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", CHECK_LARGE_OFFSETS], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, f"exit status {result.returncode}\n{result.stderr[-3000:]}"


@pytest.mark.gpu
def test_triton_kernels_on_cuda():
    exec(CHECK.format(device="cuda"), {})
    exec(CHECK_16BIT_AND_ROW_MAX.format(device="cuda", dtype="bfloat16"), {})
    exec(CHECK_16BIT_AND_ROW_MAX.format(device="cuda", dtype="float16"), {})
    x = torch.randn(3000, 128, device="cuda", dtype=torch.bfloat16)
    from tgfr.ops import contrastive_loss

    torch.testing.assert_close(contrastive_loss(x, x.roll(1, 1), backend="triton"),
                               contrastive_loss(x, x.roll(1, 1), backend="reference"), rtol=2e-2, atol=2e-2)
    # The triton_op, its normalization inside included, traced whole by torch.compile.
    x, y = x[:512].clone().requires_grad_(), x[512:1024].roll(1, 1).clone().requires_grad_()
    compiled = torch.compile(lambda a, b: contrastive_loss(a, b, backend="triton"), fullgraph=True)
    loss, eager_loss = compiled(x, y), contrastive_loss(x, y, backend="triton")
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(loss, (x, y)), torch.autograd.grad(eager_loss, (x, y))):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-4)
