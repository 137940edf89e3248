"""The fused contrastive op against full-matrix PyTorch, in every mode and direction."""

import itertools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from derivative_transforms import DERIVATIVE_TRANSFORMS, DIRECTIONAL
from tgfr.ops import contrastive_cross_entropy, contrastive_loss, contrastive_row_max

MODES = ("exclude", "zero", "positive", "none")
DIRECTIONS = ("rows", "columns", "both")


def make_batch(n, m, d, dtype, seed=0, identities=7):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=dtype).requires_grad_()
    y = torch.randn(m, d, generator=generator, dtype=dtype).requires_grad_()
    row_labels = torch.randint(0, identities, (n,), generator=generator)
    column_labels = torch.randint(0, identities, (m,), generator=generator)
    return x, y, row_labels, column_labels


def weighted(losses, seed=1):
    """A random linear functional of both outputs, so the gradient test covers both directions."""
    generator = torch.Generator().manual_seed(seed)
    return sum((loss * torch.randn(loss.shape, generator=generator, dtype=loss.dtype)).sum() for loss in losses)


def assert_matches_reference(x, y, arguments, tolerance):
    """Both outputs of contrastive_cross_entropy, and the gradients of a random functional of them,
    equal the full-matrix reference's."""
    fused = contrastive_cross_entropy(x, y, **arguments)
    full = contrastive_cross_entropy(x, y, backend="reference", **arguments)
    for got, expected in zip(fused, full):
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
    for got, expected in zip(torch.autograd.grad(weighted(fused), (x, y)),
                             torch.autograd.grad(weighted(full), (x, y))):
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("mode,direction", list(itertools.product(MODES, DIRECTIONS)))
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_matches_full_matrix_values_and_gradients(mode, direction, dtype, tolerance):
    # 300 rows cross several 128 x 256 tiles, with ragged edges.
    x, y, labels, _ = make_batch(300, 300, 24, dtype)
    arguments = dict(scale=7.0, margin=0.3, row_labels=labels, same_identity=mode, direction=direction)
    assert_matches_reference(x, y, arguments, tolerance)


def test_symmetric_loss_equals_cross_entropy_formula():
    """Independent of tgfr.reference: CLIP's two cross-entropies on an explicit logits matrix."""
    x, y, labels, _ = make_batch(150, 150, 16, torch.float64)
    logits = 10.0 * F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(150, dtype=torch.bool)
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(150)
    expected = F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
    got = contrastive_loss(x, y, 10.0, row_labels=labels, same_identity="exclude")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_positive_mode_is_supervised_contrastive():
    x, y, labels, _ = make_batch(40, 40, 8, torch.float64)
    log_prob = (3.0 * x @ y.T).log_softmax(dim=1)
    positives = (labels[:, None] == labels[None, :]).double()
    expected = -(log_prob * positives).sum(1) / positives.sum(1)
    got, _ = contrastive_cross_entropy(
        x, y, 3.0, row_labels=labels, same_identity="positive", direction="rows", normalize=False
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("direction,offset,n,m", [("rows", 5, 20, 33), ("columns", -4, 30, 21)])
def test_offset_targets_match_reference(direction, offset, n, m):
    x, y, row_labels, column_labels = make_batch(n, m, 8, torch.float64, identities=4)
    arguments = dict(row_labels=row_labels, column_labels=column_labels, same_identity="zero",
                     direction=direction, offset=offset, margin=0.1)
    assert_matches_reference(x, y, arguments, 1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("direction,offset,n,m", [("rows", 150, 610, 900), ("columns", -150, 900, 610),
                                                  ("both", 0, 700, 700)])
def test_many_groups_with_unequal_sides_match_reference(mode, direction, offset, n, m):
    # sqrt(N * M) / 128 gives 5-6 row and column groups of unequal sizes, each cut into ragged
    # blocks, so every tile serves a row and a column that other steps of the rotation also touch.
    x, y, row_labels, column_labels = make_batch(n, m, 16, torch.float64, identities=40)
    arguments = dict(scale=6.0, margin=0.2, row_labels=row_labels, column_labels=column_labels,
                     same_identity=mode, direction=direction, offset=offset)
    assert_matches_reference(x, y, arguments, 1e-10)


@pytest.mark.parametrize("direction", ["rows", "columns"])
def test_an_excluded_first_tile_leaves_the_log_sum_exp_finite(direction):
    """Row 0 (columns: column 0) shares its identity with every entry of the first tile the kernel visits (256
    columns; 128 rows), its target in a later tile: the running maximum stays -inf through that tile, where
    exp(-inf - -inf) would make the loss NaN unless excluded entries are skipped."""
    n, m, offset, first_tile = (4, 300, 290, 256) if direction == "rows" else (200, 4, -150, 128)
    x, y, row_labels, column_labels = make_batch(n, m, 16, torch.float64, identities=90)
    row_labels, column_labels = row_labels + 10, column_labels + 10
    if direction == "rows":
        column_labels[:first_tile] = row_labels[0]
        column_labels[offset:offset + n] = row_labels
    else:
        row_labels[:first_tile] = column_labels[0]
        row_labels[-offset:-offset + m] = column_labels
    arguments = dict(scale=6.0, row_labels=row_labels, column_labels=column_labels, same_identity="exclude",
                     direction=direction, offset=offset)
    losses = contrastive_cross_entropy(x, y, **arguments)
    assert losses[0 if direction == "rows" else 1].isfinite().all()
    assert_matches_reference(x, y, arguments, 1e-10)


def check_thread_count_independence(dtype, embedding_size):
    x, y, labels, _ = make_batch(640, 640, embedding_size, dtype, identities=50)
    threads = torch.get_num_threads()

    def run(num_threads):
        torch.set_num_threads(num_threads)
        try:
            losses = contrastive_cross_entropy(x, y, 10.0, 0.1, labels, same_identity="positive")
            return losses + torch.autograd.grad(weighted(losses), (x, y))
        finally:
            torch.set_num_threads(threads)

    for one_thread, three_threads in zip(run(1), run(3)):
        assert torch.equal(one_thread, three_threads)


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="MKL's reproducibility switch only")
def test_results_do_not_depend_on_the_thread_count():
    # The tile schedule follows N and M only. The BLAS behind the tile products may round differently
    # with its thread setting: MKL does at D=1024 on its AVX-512 path (seen on a 2-core Xeon) and already
    # at D=32 on its AVX2 path (older Intel CPUs, AMD's). MKL_CBWR=COMPATIBLE, read when MKL starts (so
    # in a child process), pins the products and leaves the schedule to the test.
    code = ("import sys; sys.path.insert(0, {tests!r}); import torch; "
            "from test_contrastive import check_thread_count_independence as check; "
            "check(torch.float32, 32); check(torch.bfloat16, 32); check(torch.float32, 1024)"
            ).format(tests=str(Path(__file__).parent))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MKL_CBWR": "COMPATIBLE"})
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    x, y, labels, _ = make_batch(5, 5, 3, torch.float64, identities=2)

    def function(a, b):
        rows, columns = contrastive_cross_entropy(a, b, 2.0, 0.2, labels, same_identity=mode, normalize=False)
        return rows, columns

    assert torch.autograd.gradcheck(function, (x, y))


@pytest.mark.parametrize("normalize", [True, False])
def test_double_backward_raises_instead_of_returning_wrong_gradients(normalize):
    # The fused backward has no derivative: second-order gradients silently left it out (only the
    # part through F.normalize remained).
    x, y, labels, _ = make_batch(6, 6, 4, torch.float64, identities=3)
    arguments = dict(scale=2.0, margin=0.2, row_labels=labels, same_identity="exclude", normalize=normalize)
    grads = torch.autograd.grad(contrastive_loss(x, y, **arguments), (x, y), create_graph=True)
    expected = torch.autograd.grad(contrastive_loss(x, y, backend="reference", **arguments), (x, y))
    for got, wanted in zip(grads, expected):
        torch.testing.assert_close(got, wanted, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(sum(grad.square().sum() for grad in grads), (x, y))


@pytest.mark.parametrize("transform", DERIVATIVE_TRANSFORMS)
def test_forward_ad_and_func_transforms_raise_or_take_the_reference(transform):
    # PyTorch dropped forward tangents through the fused op without a word (zero JVPs) and refused
    # torch.func.grad with an error naming neither the op nor the reference backend.
    x, y, labels, _ = make_batch(6, 6, 4, torch.float64, identities=3)
    arguments = dict(scale=2.0, margin=0.2, row_labels=labels, same_identity="exclude")
    with pytest.raises(NotImplementedError, match="contrastive cross-entropy has fused reverse-mode gradients only.*"
                                                  "use backend='reference'"):
        DERIVATIVE_TRANSFORMS[transform](lambda a: contrastive_loss(a, y, backend="cpu", **arguments), x)
    result = DERIVATIVE_TRANSFORMS[transform](lambda a: contrastive_loss(a, y, backend="reference", **arguments), x)
    if transform in DIRECTIONAL:
        step = 1e-6
        ahead, behind = (contrastive_loss(x + sign * step, y, backend="reference", **arguments) for sign in (1, -1))
        torch.testing.assert_close(result, (ahead - behind) / (2 * step), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
@pytest.mark.parametrize("transform", DIRECTIONAL)
def test_forward_ad_through_torch_compile_raises(compiler, transform):
    # As test_word_region's: a compiled graph ran the op on the dual tensors and dropped their tangents.
    # Inputs that require no grad, as there: aot_eager wraps a graph with such inputs in an
    # autograd.Function, which refuses forward AD itself.
    x, y, labels, _ = (tensor.detach() for tensor in make_batch(6, 6, 4, torch.float64, identities=3))
    arguments = dict(scale=2.0, margin=0.2, row_labels=labels, same_identity="exclude")

    def compiled(backend):
        torch._dynamo.reset()
        return torch.compile(lambda a: contrastive_loss(a, y, backend=backend, **arguments), backend=compiler)

    with pytest.raises(NotImplementedError, match="contrastive cross-entropy has fused reverse-mode gradients only"):
        DERIVATIVE_TRANSFORMS[transform](compiled("cpu"), x)
    torch.testing.assert_close(
        DERIVATIVE_TRANSFORMS[transform](compiled("reference"), x),
        DERIVATIVE_TRANSFORMS[transform](lambda a: contrastive_loss(a, y, backend="reference", **arguments), x),
    )


def test_jvp_through_inductor_raises_where_forward_ad_tangents_are_dropped():
    """README: under inductor a forward_ad tangent reaching the op through other work comes back None
    (PyTorch's doing); torch.func.jvp must still meet the front end's refusal, not give None or zeros."""
    x, y = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a: contrastive_loss(3 * a, y, backend="cpu"))
    with pytest.raises(NotImplementedError, match="contrastive cross-entropy has fused reverse-mode gradients only"):
        DERIVATIVE_TRANSFORMS["jvp"](compiled, x)


def test_autocast_gives_the_loss_its_dtype_where_its_kernels_take_it(monkeypatch):
    """As test_word_region's: CUDA's rule, with the CPU standing in for CUDA. On CPU itself the loss
    stays float32 (its kernel multiplies in float32: bf16 would only round the inputs)."""
    import tgfr.ops.autocast

    x, y, labels, _ = make_batch(32, 32, 16, torch.float32, identities=5)
    arguments = dict(row_labels=labels, same_identity="exclude", backend="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(contrastive_loss(x, y, **arguments), contrastive_loss(x.detach(), y.detach(), **arguments))
    monkeypatch.setitem(tgfr.ops.autocast._KERNEL_DTYPES, "cpu", (torch.bfloat16,))
    expected = contrastive_loss(x.bfloat16(), y.bfloat16(), **arguments)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = contrastive_loss(x, y, **arguments)
    assert torch.equal(got, expected)
    assert torch.autograd.grad(got, x)[0].dtype == torch.float32


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_row_max_is_float32_under_autocast(backend):
    """The reference's (and the Triton backend's) similarity matmul ran in bf16 under autocast: maxima off
    by about 1e-3 on CUDA, where training autocasts, while the CPU kernel's stayed float32."""
    x, y, labels, _ = make_batch(64, 64, 32, torch.float32, identities=8)
    expected = contrastive_row_max(x, y, labels, same_identity="zero", backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = contrastive_row_max(x, y, labels, same_identity="zero", backend=backend)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    meta = torch.empty(8, 4, device="meta")
    assert contrastive_row_max(meta, meta, backend="reference").shape == (8,)  # no autocast to turn off there


def test_float32_paths_take_a_mix_of_float32_and_bf16_under_autocast_as_the_kernels_do(monkeypatch):
    """As test_word_region's: the reference loss and contrastive_row_max refused bf16 x with float32 y under CUDA
    autocast (the CPU stands in), which the fused backends take; they take it in float32."""
    import tgfr.ops.autocast

    x, y, labels, _ = make_batch(16, 16, 8, torch.float32, identities=4)
    x = x.detach().bfloat16().requires_grad_()
    arguments = dict(row_labels=labels, same_identity="exclude")
    expected = contrastive_loss(x.detach().float(), y, backend="reference", **arguments)
    expected_max = contrastive_row_max(x.detach().float(), y, labels, same_identity="zero")
    monkeypatch.setitem(tgfr.ops.autocast._KERNEL_DTYPES, "cpu", (torch.bfloat16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = contrastive_loss(x, y, backend="reference", **arguments)
        got_max = contrastive_row_max(x, y, labels, same_identity="zero")
    assert torch.equal(got, expected) and torch.equal(got_max, expected_max)
    assert torch.autograd.grad(got, x)[0].dtype == torch.bfloat16


def test_reference_loss_is_float32_under_cpu_autocast(monkeypatch):
    """As contrastive_row_max's: the reference, the float32 baseline, ran its similarity matmul in bf16 under CPU
    autocast (9.5767 for backend "cpu"'s 9.5728). Nor does it take its inputs in the autocast dtype as the kernels
    do on CUDA, for which the CPU stands in here."""
    import tgfr.ops.autocast

    x, y, labels, _ = make_batch(64, 64, 32, torch.float32, identities=8)
    arguments = dict(row_labels=labels, same_identity="zero", backend="reference")
    expected = contrastive_cross_entropy(x, y, **arguments)
    monkeypatch.setitem(tgfr.ops.autocast._KERNEL_DTYPES, "cpu", (torch.bfloat16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = contrastive_cross_entropy(x, y, **arguments)
    for got_part, expected_part in zip(got, expected):
        assert got_part.dtype == torch.float32 and torch.equal(got_part, expected_part)
    for got_grad, expected_grad in zip(torch.autograd.grad(weighted(got), (x, y)),
                                       torch.autograd.grad(weighted(expected), (x, y))):
        assert torch.equal(got_grad, expected_grad)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mode", ("exclude", "zero", "none"))
def test_row_max_matches_masked_maximum(mode, normalize):
    x, y, labels, _ = make_batch(300, 300, 12, torch.float32, identities=20)
    x, y = 3 * x.detach(), 3 * y.detach()  # not unit rows: normalize=False's products are not cosines
    similarity = F.normalize(x, dim=1) @ F.normalize(y, dim=1).T if normalize else x @ y.T
    same = labels[:, None] == labels[None, :]
    if mode == "zero":
        similarity = similarity.masked_fill(same, 0.0)
    if mode == "exclude":
        similarity = similarity.masked_fill(same, float("-inf"))
    expected = similarity.fill_diagonal_(float("-inf")).amax(dim=1)
    torch.testing.assert_close(contrastive_row_max(x, y, labels, same_identity=mode, normalize=normalize),
                               expected)


def test_row_max_with_offset_and_nan_matches_reference():
    # Row i's target (column i + 100) is skipped wherever its tile falls; a NaN column makes the
    # max of every row NaN, except the row whose target it is and the rows of its identity (mode
    # "zero" replaces those entries by 0); a NaN row stays NaN.
    x, y, row_labels, column_labels = make_batch(200, 450, 8, torch.float32, identities=30)
    x, y = x.detach().clone(), y.detach().clone()
    y[170, 2] = float("nan")  # the target of row 70
    x[5, 0] = float("nan")
    arguments = dict(row_labels=row_labels, column_labels=column_labels, same_identity="zero", offset=100,
                     normalize=False)
    got = contrastive_row_max(x, y, **arguments)
    expected = contrastive_row_max(x, y, backend="reference", **arguments)
    nan_rows = row_labels != column_labels[170]
    nan_rows[70], nan_rows[5] = False, True
    assert nan_rows.sum() > 150 and torch.equal(got.isnan(), nan_rows)
    torch.testing.assert_close(got, expected, equal_nan=True)


def test_row_max_when_a_target_opens_the_next_column_tile():
    """Row 2's target, column 256, is the first of the second 256-column tile: skipping it must not touch row 3's
    first column of the tile before, which holds every row's hardest negative."""
    generator = torch.Generator().manual_seed(0)
    x = 1 + 0.1 * torch.randn(4, 8, generator=generator, dtype=torch.float64)
    y = torch.randn(300, 8, generator=generator, dtype=torch.float64)
    y[0] = 10.0
    torch.testing.assert_close(contrastive_row_max(x, y, offset=254),
                               contrastive_row_max(x, y, offset=254, backend="reference"))


def test_bfloat16_accumulates_in_float32():
    x, y, labels, _ = make_batch(200, 200, 32, torch.float32)
    expected = contrastive_loss(x.bfloat16().float(), y.bfloat16().float(), 10.0, row_labels=labels,
                                same_identity="exclude")
    x16, y16 = x.detach().bfloat16().requires_grad_(), y.detach().bfloat16().requires_grad_()
    got = contrastive_loss(x16, y16, 10.0, row_labels=labels, same_identity="exclude")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    got.backward()
    assert x16.grad.dtype == torch.bfloat16 and torch.isfinite(x16.grad).all()


def test_bfloat16_matches_reference():
    """Values and gradients of both directions, ragged tiles and an odd D, against the reference
    on the same (bf16-rounded) inputs in fp32."""
    x, y, row_labels, column_labels = make_batch(300, 300, 33, torch.float32, identities=40)
    x16, y16 = x.detach().bfloat16().requires_grad_(), y.detach().bfloat16().requires_grad_()
    x32, y32 = x16.detach().float().requires_grad_(), y16.detach().float().requires_grad_()
    arguments = dict(scale=10.0, margin=0.2, row_labels=row_labels, column_labels=column_labels,
                     same_identity="positive", direction="both")
    fused = contrastive_cross_entropy(x16, y16, **arguments)
    full = contrastive_cross_entropy(x32, y32, backend="reference", **arguments)
    for got, expected in zip(fused, full):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    got_grads = torch.autograd.grad(weighted(fused), (x16, y16))
    expected_grads = torch.autograd.grad(weighted(full), (x32, y32))
    for got, expected in zip(got_grads, expected_grads):
        assert got.dtype == torch.bfloat16
        scale = expected.abs().max().item()
        torch.testing.assert_close(got.float(), expected, rtol=0, atol=2e-2 * scale)


def exact_symmetric_cross_entropy(x, y, scale):
    """Float64 per-row and per-column CLIP cross-entropy of the given values (targets on the
    diagonal), written out here, and the float64 leaves it is differentiable in."""
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    logits = scale * F.normalize(x64, dim=1) @ F.normalize(y64, dim=1).T
    return (logits.logsumexp(1) - logits.diagonal(), logits.logsumexp(0) - logits.diagonal()), (x64, y64)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bfloat16_inputs_are_normalized_in_float32(backend):
    # F.normalize in bf16 rounded the unit vectors to bf16 before the fp32 kernel: at scale 64 the
    # losses were off by about 0.15 and the gradients by about 1% of their largest entry. Now the
    # result is the fp32 computation on the (exact) bf16 values: losses within 1e-4 of float64 and
    # gradients within bf16's own rounding of them.
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(64, 32, generator=generator).bfloat16().requires_grad_()
    y = (x.detach().float() + 3.0 * torch.randn(64, 32, generator=generator)).bfloat16().requires_grad_()
    weights = torch.randn(2, 64, generator=generator, dtype=torch.float64)
    losses = contrastive_cross_entropy(x, y, 64.0, backend=backend)
    expected, leaves = exact_symmetric_cross_entropy(x, y, 64.0)
    for got, want in zip(losses, expected):
        torch.testing.assert_close(got.double(), want.detach(), rtol=0, atol=1e-4)
    got_grads = torch.autograd.grad(sum((loss * w.float()).sum() for loss, w in zip(losses, weights)), (x, y))
    expected_grads = torch.autograd.grad(sum((loss * w).sum() for loss, w in zip(expected, weights)), leaves)
    for got, want in zip(got_grads, expected_grads):
        assert got.dtype == torch.bfloat16
        bound = 2.0**-8 * want.abs() + 1e-5 * want.abs().max()  # bf16 rounding of the result, and a little
        assert ((got.double() - want).abs() <= bound).all(), ((got.double() - want).abs() - bound).max()
    x64, y64 = (F.normalize(t.detach().double(), dim=1) for t in (x, y))
    expected_row_max = (x64 @ y64.T).fill_diagonal_(float("-inf")).amax(dim=1)
    got_row_max = contrastive_row_max(x.detach(), y.detach(), backend=backend)
    torch.testing.assert_close(got_row_max.double(), expected_row_max, rtol=0, atol=1e-5)


def test_nan_propagates_to_its_rows():
    x, y, _, _ = make_batch(10, 10, 4, torch.float32)
    x = x.detach().clone()
    x[3, 0] = float("nan")
    rows, columns = contrastive_cross_entropy(x, y.detach(), normalize=False)
    assert rows[3].isnan() and not rows[[0, 1, 2, 4]].isnan().any() and columns.isnan().all()


def test_overflowing_logit_is_not_taken_for_an_excluded_one():
    # Row 1's target logit overflows to -inf and every other entry is excluded (one identity), so
    # its loss and gradient are NaN in the reference. A kernel that took every -inf for an excluded
    # entry gave the row a finite gradient.
    x = torch.tensor([[0.3, -1.0, 0.5], [2e37, -3e37, 1e37], [-0.2, 0.4, 1.0], [1.0, 0.1, -0.7]])
    y = torch.tensor([[0.9, 0.2, -0.3], [-3.0, 4.0, -2.0], [0.5, -0.5, 0.8], [-0.6, 0.3, 0.2]])
    labels = torch.zeros(4, dtype=torch.int64)
    grads = []
    for backend in ("cpu", "reference"):
        xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
        losses = contrastive_cross_entropy(xx, yy, 10.0, row_labels=labels, same_identity="exclude",
                                           normalize=False, backend=backend)
        assert losses[0][1].isnan()
        grads.append(torch.autograd.grad(weighted(losses), (xx, yy)))
    (got_x, got_y), (expected_x, expected_y) = grads
    assert expected_x[1].isnan().all()
    torch.testing.assert_close(got_x, expected_x, equal_nan=True)
    torch.testing.assert_close(got_y, expected_y, equal_nan=True)


def test_saturated_targets_get_the_reference_zero_gradient():
    # Orthonormal rows at scale 1e4: every softmax is exactly one-hot, so every gradient is 0.
    # Summing both directions' softmax parts first and subtracting the positive shares after left
    # (g_row + g_col) - g_row - g_col, about scale * float epsilon (1e-3 here).
    x = torch.eye(8, 16, requires_grad=True)
    y = torch.eye(8, 16, requires_grad=True)
    losses = contrastive_cross_entropy(x, y, 1e4, normalize=False)
    for grad in torch.autograd.grad(weighted(losses), (x, y)):
        torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-30)


@pytest.mark.parametrize("scale", [1e37, 1e38])
def test_huge_scale_gradients_match_a_float64_formula(scale):
    # 0/1 embeddings make every similarity an exact small integer, so at these scales each softmax
    # is exactly one-hot or, where row 0 and column 1 hold a tie, exactly 1/2 in float32 too. The
    # CPU exp floored the zero entries at ~1.2e-38, and the backward's multiplication by scale made
    # that floor a gradient of about 0.1 (1e37) or 1 (1e38) in every row whose exact gradient is 0.
    # rtol 1e-5 elementwise with atol 0: an exact 0 must come out as 0.
    n = 6
    x = torch.eye(n)
    x[0, 1] = 1.0  # row 0 matches columns 0 and 1 equally, and column 1 matches rows 0 and 1
    y = torch.eye(n)
    fused_inputs = [x.clone().requires_grad_(), y.clone().requires_grad_()]
    exact_inputs = [x.double().requires_grad_(), y.double().requires_grad_()]
    rows, columns = contrastive_cross_entropy(*fused_inputs, scale, normalize=False, backend="cpu")
    logits = scale * exact_inputs[0] @ exact_inputs[1].T
    exact_rows = logits.logsumexp(dim=1) - logits.diagonal()
    exact_columns = logits.logsumexp(dim=0) - logits.diagonal()
    fused_grads = torch.autograd.grad(rows.sum() + columns.sum(), fused_inputs)
    exact_grads = torch.autograd.grad(exact_rows.sum() + exact_columns.sum(), exact_inputs)
    assert exact_grads[0].abs().max() > 0 and (exact_grads[0] == 0).any()
    for got, wanted in zip(fused_grads, exact_grads):
        torch.testing.assert_close(got.double(), wanted, rtol=1e-5, atol=0)


def test_float32_gradients_are_as_accurate_as_the_reference_at_4100_rows():
    # Each column's sum of exps used to be one chain of N additions, so the column direction lost
    # accuracy like sqrt(N): about 6x the fp32 reference's gradient error at N = 4100.
    x, y, _, _ = make_batch(4100, 4100, 33, torch.float64, seed=3)
    weights = torch.randn(2, 4100, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def gradients(a, b, backend):
        rows, columns = contrastive_cross_entropy(a, b, 30.0, 0.2, backend=backend)
        functional = (rows * weights[0].to(rows.dtype)).sum() + (columns * weights[1].to(rows.dtype)).sum()
        return torch.autograd.grad(functional, (a, b))

    exact = gradients(x, y, "reference")
    x32, y32 = x.detach().float().requires_grad_(), y.detach().float().requires_grad_()
    errors = {backend: max((got.double() - want).abs().max().item()
                           for got, want in zip(gradients(x32, y32, backend), exact))
              for backend in ("cpu", "reference")}
    assert errors["cpu"] < 2 * errors["reference"], errors


def test_noncontiguous_inputs():
    x, y, _, _ = make_batch(20, 20, 6, torch.float64)
    got = contrastive_loss(x.T.contiguous().T, y[:, ::1].T.contiguous().T)
    torch.testing.assert_close(got, contrastive_loss(x, y, backend="reference"))


# bfloat16: the fake kernel must give the float32 the CPU kernel returns (see test_word_region's test_opcheck).
# One direction alone, with N != M and an offset: the fake kernel must give the (0,) outputs of the direction that
# is off; one of size N or M left compiled graphs a NaN loss (aot_eager) or a crash (inductor).
@pytest.mark.parametrize("rows, columns, n, m, offset", [(True, True, 9, 9, 0), (True, False, 6, 9, 2),
                                                         (False, True, 9, 6, -3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_opcheck(dtype, rows, columns, n, m, offset):
    x, y, row_labels, column_labels = make_batch(n, m, 4, dtype, identities=3)
    args = (x, y, row_labels, column_labels, 3.0, 0.1, "positive", offset, rows, columns)
    torch.library.opcheck(torch.ops.tgfr.contrastive_forward, args)


# normalize=False hands 16-bit inputs to the op as they are: a fake kernel giving the input's dtype instead of the
# kernel's float32 had compiled bf16 graphs read the float32 maxima as bf16 (halved values, no error).
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_row_max_opcheck(dtype):
    x, y, row_labels, column_labels = (tensor.detach() for tensor in make_batch(6, 9, 4, dtype, identities=3))
    torch.library.opcheck(torch.ops.tgfr.contrastive_row_max, (x, y, row_labels, column_labels, "zero", 2))


@pytest.mark.parametrize("direction, n, m, offset", [("rows", 6, 9, 2), ("columns", 9, 6, -3)])
def test_one_direction_compiles_to_the_eager_loss(direction, n, m, offset):
    x, y, row_labels, column_labels = make_batch(n, m, 8, torch.float32, identities=3)
    arguments = dict(scale=3.0, margin=0.1, row_labels=row_labels, column_labels=column_labels,
                     same_identity="exclude", direction=direction, offset=offset)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: contrastive_loss(a, b, **arguments), backend="aot_eager", fullgraph=True)
    got, expected = compiled(x, y), contrastive_loss(x, y, **arguments)
    torch.testing.assert_close(got, expected)
    for got_grad, expected_grad in zip(torch.autograd.grad(got, (x, y)), torch.autograd.grad(expected, (x, y))):
        torch.testing.assert_close(got_grad, expected_grad)


def test_backward_opcheck_with_transposed_inputs():
    # The fake kernel must give the real kernel's (contiguous) gradients: with empty_like it copied the
    # strides of a transposed x, and a compiled graph's stride assertion failed on the real op.
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 4, generator=generator).T
    y = torch.randn(8, 4, generator=generator).T
    assert not x.is_contiguous() and not y.is_contiguous()
    lse = torch.randn(4, generator=generator)
    args = (torch.ones(4), torch.ones(4), x, y, None, None, lse, lse, 3.0, 0.1, "none", 0, True, True)
    torch.library.opcheck(torch.ops.tgfr.contrastive_backward.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_compiles_without_graph_break():
    x, y, labels, _ = make_batch(16, 16, 4, torch.float32)
    compiled = torch.compile(contrastive_loss, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, y, 5.0, row_labels=labels, same_identity="exclude"),
                               contrastive_loss(x, y, 5.0, row_labels=labels, same_identity="exclude"))


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda x, y, l: contrastive_loss(x, y[:, :3]), ValueError, ["y", "size 4"]),
        (lambda x, y, l: contrastive_loss(x, y.double()), TypeError, ["y", "dtype"]),
        (lambda x, y, l: contrastive_loss(x[0], y), ValueError, ["x", "2 dimensions"]),
        (lambda x, y, l: contrastive_loss(x[:0], y[:0]), ValueError, ["x", "empty"]),
        (lambda x, y, l: contrastive_loss(x.tolist(), y), TypeError, ["x", "torch.Tensor"]),
        (lambda x, y, l: contrastive_loss(x, y, row_labels=l[:3]), ValueError, ["row_labels", "size 6"]),
        (lambda x, y, l: contrastive_loss(x, y, row_labels=l.float()), TypeError, ["row_labels", "dtype"]),
        (lambda x, y, l: contrastive_loss(x, y, same_identity="mask"), ValueError, ["same_identity", "'mask'"]),
        (lambda x, y, l: contrastive_loss(x, y, direction="up"), ValueError, ["direction", "'up'"]),
        (lambda x, y, l: contrastive_loss(x[:4], y, direction="rows", offset=3), ValueError, ["offset", "M - N"]),
        (lambda x, y, l: contrastive_loss(x, y[:4], direction="rows"), ValueError, ["x must not have more rows",
                                                                                     "N=6 > M=4"]),
        (lambda x, y, l: contrastive_row_max(x, y[:4]), ValueError, ["x must not have more rows", "N=6 > M=4"]),
        (lambda x, y, l: contrastive_loss(x[:4], y, direction="columns"), ValueError, ["y must not have more rows",
                                                                                        "M=6 > N=4"]),
        # No offset was given, and no offset would do: the message says what is wrong.
        (lambda x, y, l: contrastive_loss(x, y[:4]), ValueError, ["direction 'both'", "N=6, M=4", "'rows'"]),
        (lambda x, y, l: contrastive_loss(x, y[:4], row_labels=l, direction="rows"), ValueError,
         ["x must not have more rows"]),
        (lambda x, y, l: contrastive_loss(x[:4], y, row_labels=l[:4], direction="rows"), ValueError,
         ["column_labels must be given", "N=4, M=6"]),
        (lambda x, y, l: contrastive_loss(x, y, scale=float("nan")), ValueError, ["scale", "finite"]),
        (lambda x, y, l: contrastive_loss(x, y, scale=-10.0), ValueError, ["scale", "positive"]),
        (lambda x, y, l: contrastive_loss(x, y, scale=0.0), ValueError, ["scale", "positive"]),
        (lambda x, y, l: contrastive_loss(x, y, scale=0.0, backend="reference"), ValueError, ["scale", "positive"]),
        # A bool is a mistake, not the scale 1.0.
        (lambda x, y, l: contrastive_loss(x, y, scale=True), TypeError, ["scale", "bool"]),
        (lambda x, y, l: contrastive_loss(x, y, margin=False), TypeError, ["margin", "bool"]),
        # Finite in Python but inf in the float32 the kernels compute in: NaN or inf losses.
        (lambda x, y, l: contrastive_loss(x, y, scale=1e39), ValueError, ["scale", "at most 3.40282e+38"]),
        (lambda x, y, l: contrastive_loss(x, y, scale=10**400), ValueError, ["scale", "at most 3.40282e+38"]),
        (lambda x, y, l: contrastive_loss(x.bfloat16(), y.bfloat16(), scale=1e39), ValueError, ["scale"]),
        (lambda x, y, l: contrastive_loss(x, y, margin=-1e39), ValueError, ["margin", "at most 3.40282e+38"]),
        (lambda x, y, l: contrastive_loss(x, y, margin=10**400), ValueError, ["margin", "at most 3.40282e+38"]),
        (lambda x, y, l: contrastive_loss(x, y, margin=float("nan")), ValueError, ["margin", "finite"]),
        (lambda x, y, l: contrastive_loss(x, y, normalize="False"), TypeError, ["normalize", "bool"]),
        (lambda x, y, l: contrastive_row_max(x, y, normalize=1), TypeError, ["normalize", "bool"]),
        (lambda x, y, l: contrastive_loss(x, y, backend="gpu"), ValueError, ["backend", "'gpu'"]),
        (lambda x, y, l: contrastive_loss(x, y, column_labels=l), ValueError, ["column_labels"]),
        # The registered op checks again: it can be called directly, and a compiled graph runs it.
        (lambda x, y, l: torch.ops.tgfr.contrastive_forward(x, y[:, :3], None, None, 5.0, 0.0, "none", 0, True, True),
         ValueError, ["y", "size D=4"]),
        (lambda x, y, l: torch.ops.tgfr.contrastive_forward(x, y.double(), None, None, 5.0, 0.0, "none", 0, True, True),
         TypeError, ["y", "dtype"]),
        (lambda x, y, l: torch.ops.tgfr.contrastive_forward(x, y, l, l[:3], 5.0, 0.0, "exclude", 0, True, True),
         ValueError, ["labels_y", "one label per row"]),
        (lambda x, y, l: torch.ops.tgfr.contrastive_forward(x, y[:4], None, None, 5.0, 0.0, "none", 0, True, True),
         ValueError, ["offset", "M=4"]),
    ],
)
def test_bad_input_names_the_argument(call, error, words):
    x, y, labels, _ = make_batch(6, 6, 4, torch.float32)
    with pytest.raises(error) as raised:
        call(x, y, labels)
    for word in words:
        assert word in str(raised.value)


def test_float16_takes_a_scale_and_margin_beyond_float16():
    # The kernels compute in float32 whatever the input dtype: a scale or margin above float16's maximum (65504) is
    # an ordinary number there, and the loss equals float32's on the same values.
    generator = torch.Generator().manual_seed(8)
    x, y = (1e-3 * torch.randn(2, 6, 4, generator=generator)).half()
    arguments = dict(scale=1e5, margin=1e-4, normalize=False)
    for backend in ("reference", "cpu"):
        got = contrastive_loss(x, y, backend=backend, **arguments)
        expected = contrastive_loss(x.float(), y.float(), backend=backend, **arguments)
        assert torch.isfinite(got)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="scale must be a finite positive number of at most 3.40282e"):
        contrastive_loss(x, y, scale=1e39, **{k: v for k, v in arguments.items() if k != "scale"})


def test_float64_takes_a_scale_beyond_float32():
    # float64 computes in float64, where a scale above float32's maximum is an ordinary number.
    x, y, _, _ = make_batch(6, 6, 4, torch.float64)
    for backend in ("reference", "cpu"):
        loss = contrastive_loss(x, y, scale=1e39, margin=1e-40, backend=backend)
        assert torch.isfinite(loss)


def raw_forward(x, y, labels_x=None, labels_y=None):
    return torch.ops.tgfr.contrastive_forward(x, y, labels_x, labels_y, 5.0, 0.0, "positive", 0, True, False)


def raw_backward(x, y):
    n, m = x.shape[0], y.shape[0]
    return torch.ops.tgfr.contrastive_backward(torch.ones(n), torch.ones(m), x, y, None, None, torch.zeros(n),
                                               torch.zeros(m), 5.0, 0.0, "none", 0, True, False)


def raw_row_max(x, y):
    return torch.ops.tgfr.contrastive_row_max(x, y, None, None, "none", 0)


# The registered ops can be called directly (and a compiled graph calls them): an empty side used to
# kill the process with SIGFPE (a division by zero in the tiling), 2-D labels gave a RuntimeError.
@pytest.mark.parametrize(
    "call,message",
    [
        pytest.param(lambda: raw_forward(torch.randn(0, 4), torch.randn(3, 4)), "x must have N >= 1 rows",
                     id="forward N=0"),
        pytest.param(lambda: raw_forward(torch.randn(3, 4), torch.randn(0, 4)), "y must have M >= 1 rows",
                     id="forward M=0"),
        pytest.param(lambda: raw_forward(torch.randn(0, 4).bfloat16(), torch.randn(3, 4).bfloat16()),
                     "x must have N >= 1", id="forward bf16 N=0"),
        pytest.param(lambda: raw_forward(torch.randn(3, 0), torch.randn(3, 0)), "x must have D >= 1 features",
                     id="forward D=0"),
        pytest.param(lambda: raw_backward(torch.randn(0, 4), torch.randn(3, 4)), "x must have N >= 1 rows",
                     id="backward N=0"),
        pytest.param(lambda: raw_backward(torch.randn(3, 4), torch.randn(0, 4)), "y must have M >= 1 rows",
                     id="backward M=0"),
        pytest.param(lambda: raw_row_max(torch.randn(0, 4), torch.randn(3, 4)), "x must have N >= 1 rows",
                     id="row_max N=0"),
        pytest.param(lambda: raw_row_max(torch.randn(3, 4), torch.randn(0, 4)), "y must have M >= 1 rows",
                     id="row_max M=0"),
        pytest.param(lambda: raw_forward(torch.randn(4, 3), torch.randn(4, 3),
                                         torch.zeros(2, 2, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)),
                     r"labels_x must have shape \(N,\) = \(4,\)", id="labels_x 2-D"),
        pytest.param(lambda: raw_forward(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4, dtype=torch.int64),
                                         torch.zeros(1, 4, dtype=torch.int64)),
                     r"labels_y must have shape \(M,\) = \(4,\)", id="labels_y 2-D"),
        pytest.param(lambda: raw_forward(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4, dtype=torch.int64),
                                         torch.zeros(3, dtype=torch.int64)),
                     "one label per row of y, got shape", id="labels_y short"),
        pytest.param(lambda: torch.ops.tgfr.contrastive_backward(
            torch.ones(2), torch.ones(3), torch.randn(3, 4), torch.randn(3, 4), None, None, torch.zeros(3),
            torch.zeros(3), 5.0, 0.0, "none", 0, True, True), "row gradient and log-sum-exp must have 3",
            id="backward gradient short"),
        pytest.param(lambda: torch.ops.tgfr.contrastive_backward(
            torch.ones(3), torch.ones(3), torch.randn(3, 4), torch.randn(3, 4), None, None, torch.zeros(2),
            torch.zeros(3), 5.0, 0.0, "none", 0, True, True), "row gradient and log-sum-exp must have 3",
            id="backward row log-sum-exp short"),
        pytest.param(lambda: torch.ops.tgfr.contrastive_backward(
            torch.ones(3), torch.ones(3), torch.randn(3, 4), torch.randn(3, 4), None, None, torch.zeros(3),
            torch.zeros(2), 5.0, 0.0, "none", 0, True, True), "column gradient and log-sum-exp must have 3",
            id="backward column log-sum-exp short"),
        pytest.param(lambda: torch.ops.tgfr.contrastive_row_max(torch.randn(3, 4), torch.randn(3, 4), None, None,
                                                                "mask", 0), "same_identity must be one of",
                     id="unknown same_identity"),
        # With one of them only, the kernels read the other's missing labels (a segfault).
        pytest.param(lambda: raw_forward(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4, dtype=torch.int64)),
                     "give both labels_x and labels_y, or neither", id="labels_x alone"),
        pytest.param(lambda: raw_forward(torch.randn(4, 3), torch.randn(4, 3), None, torch.zeros(4, dtype=torch.int64)),
                     "give both labels_x and labels_y, or neither", id="labels_y alone"),
        pytest.param(lambda: torch.ops.tgfr.contrastive_row_max(torch.randn(3, 4), torch.randn(3, 4),
                                                                torch.zeros(3, dtype=torch.int64), None, "zero", 0),
                     "give both labels_x and labels_y, or neither", id="row_max labels_x alone"),
    ],
)
def test_registered_ops_refuse_empty_sides_and_misshapen_labels(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_registered_ops_name_an_embedding_of_another_rank_and_labels_of_another_dtype():
    """Without their own checks the kernels blamed y for a rank-3 x ("y must have the embedding size") and gave a
    RuntimeError naming no argument for int32 labels."""
    x, labels = torch.randn(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match=re.escape("x and y must be (N, D) and (M, D), got shapes [1, 4, 3] and "
                                                   "[4, 3]")):
        raw_forward(x[None], x)
    with pytest.raises(ValueError, match=re.escape("got shapes [4, 3] and [4, 3, 1]")):
        raw_row_max(x, x[..., None])
    with pytest.raises(ValueError, match=re.escape("got shapes [4, 3, 1] and [4, 3]")):
        raw_backward(x[..., None], x)
    for labels_x, labels_y in ((labels.int(), labels), (labels, labels.int())):
        with pytest.raises(TypeError, match="labels_x and labels_y must be int64, got"):
            raw_forward(x, x, labels_x, labels_y)
        with pytest.raises(TypeError, match="labels_x and labels_y must be int64, got"):
            torch.ops.tgfr.contrastive_row_max(x, x, labels_x, labels_y, "zero", 0)
        with pytest.raises(TypeError, match="labels_x and labels_y must be int64, got"):
            torch.ops.tgfr.contrastive_backward(torch.ones(4), torch.zeros(0), x, x, labels_x, labels_y,
                                                torch.zeros(4), torch.zeros(0), 5.0, 0.0, "zero", 0, True, False)


@pytest.mark.parametrize("name", ["x", "y", "labels_x", "labels_y", "grad_row_loss", "row_lse"])
def test_registered_ops_refuse_one_input_on_another_device(name):
    """With one input on meta among CPU ones, the dispatcher runs the op's Meta kernel (its fake function), which
    returned uninitialized CPU memory as the result, with no error."""
    inputs = {"x": torch.randn(4, 3), "y": torch.randn(4, 3), "labels_x": torch.zeros(4, dtype=torch.int64),
              "labels_y": torch.zeros(4, dtype=torch.int64), "grad_row_loss": torch.ones(4), "row_lse": torch.zeros(4)}
    inputs[name] = inputs[name].to("meta")
    x, y, labels_x, labels_y, grad_row_loss, row_lse = inputs.values()
    calls = [lambda: torch.ops.tgfr.contrastive_backward(grad_row_loss, torch.zeros(0), x, y, labels_x, labels_y,
                                                         row_lse, torch.zeros(0), 5.0, 0.0, "zero", 0, True, False)]
    if name not in ("grad_row_loss", "row_lse"):
        calls += [lambda: torch.ops.tgfr.contrastive_forward(x, y, labels_x, labels_y, 5.0, 0.0, "zero", 0, True,
                                                             False),
                  lambda: torch.ops.tgfr.contrastive_row_max(x, y, labels_x, labels_y, "zero", 0)]
    for call in calls:
        with pytest.raises(ValueError, match=f"all inputs must be on one device, got .*{name} on meta"):
            call()


def raw_calls(n: int, m: int, offset: int, rows: bool, scale: float = 5.0, margin: float = 0.0, dtype=torch.float32):
    """The three registered ops on random (n, 4) and (m, 4) inputs, each a thunk."""
    x, y = torch.randn(n, 4).to(dtype), torch.randn(m, 4).to(dtype)
    settings = (scale, margin, "none", offset, rows, not rows)
    lse = torch.zeros(n if rows else m)
    gradients = (torch.ones(n), torch.zeros(0)) if rows else (torch.zeros(0), torch.ones(m))
    return {"forward": lambda: torch.ops.tgfr.contrastive_forward(x, y, None, None, *settings),
            "backward": lambda: torch.ops.tgfr.contrastive_backward(
                *gradients, x, y, None, None, lse if rows else torch.zeros(0), torch.zeros(0) if rows else lse,
                *settings),
            "row_max": lambda: torch.ops.tgfr.contrastive_row_max(x, y, None, None, "none", offset)}


@pytest.mark.parametrize("n, m, offset, rows", [(3, 5, 3, True), (3, 5, -1, True), (5, 3, -3, False),
                                                (5, 3, 1, False)])
def test_registered_ops_refuse_an_offset_that_leaves_a_row_or_column_without_its_target(n, m, offset, rows):
    """Offset M - N + 1 by rows gave row N - 1 no target column: its loss was its log-sum-exp alone."""
    calls = raw_calls(n, m, offset, rows)
    for name, call in calls.items():
        if name == "row_max" and not rows:
            continue  # row_max reads rows only
        with pytest.raises(ValueError, match=r"^offset: every (row i needs column i|column j needs row j)"):
            call()


@pytest.mark.parametrize("scale, margin, message", [
    (0.0, 0.0, "scale must be finite and positive"), (-1.0, 0.0, "scale must be finite and positive"),
    (math.nan, 0.0, "scale must be finite and positive"), (math.inf, 0.0, "scale must be finite and positive"),
    (1e39, 0.0, "scale must be finite and positive in the kernel's float32, got 1e+39"),
    (5.0, math.nan, "margin must be finite"), (5.0, -math.inf, "margin must be finite")])
def test_registered_ops_refuse_a_scale_or_margin_the_kernel_cannot_use(scale, margin, message):
    """A NaN scale gave NaN losses, a negative one finite losses of the negated logits."""
    for name in ("forward", "backward"):
        with pytest.raises(ValueError, match=re.escape(message)):
            raw_calls(3, 3, 0, True, scale, margin)[name]()
    raw_calls(3, 3, 0, True, 1e39, 0.0, dtype=torch.float64)["forward"]()  # float64 holds it


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_registered_ops_refuse_inputs_that_are_not_floating_point(dtype):
    for call in raw_calls(3, 3, 0, True, dtype=dtype).values():
        with pytest.raises(TypeError, match="x and y must be float32, float64, float16 or bfloat16, got"):
            call()
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    for grad, lse in ((torch.ones(3).to(dtype), torch.zeros(3)), (torch.ones(3), torch.zeros(3).to(dtype))):
        with pytest.raises(TypeError, match="row gradient and log-sum-exp must be floating point, got"):
            torch.ops.tgfr.contrastive_backward(grad, torch.zeros(0), x, y, None, None, lse, torch.zeros(0), 5.0, 0.0,
                                                "none", 0, True, False)


def every_other(tensor):
    """A view of `tensor`'s values with stride 2."""
    return torch.stack([tensor, tensor + 9], 1)[:, 0]


def test_registered_ops_read_strided_labels_gradients_and_lse_as_their_values():
    """The front end hands the ops contiguous tensors; a direct call (or a compiled graph) may not: labels every
    other entry, a gradient every other entry or expanded from one value (as loss.mean() gives), a strided
    log-sum-exp. Each gives exactly what its contiguous copy gives."""
    x, y, labels, _ = (tensor.detach() for tensor in make_batch(6, 6, 4, torch.float64, identities=3))
    arguments = (5.0, 0.1, "exclude", 0, True, True)  # scale, margin, same_identity, offset, rows, columns
    expected = torch.ops.tgfr.contrastive_forward(x, y, labels, labels, *arguments)
    for labels_x, labels_y in ((every_other(labels), labels), (labels, every_other(labels))):
        for got_part, expected_part in zip(torch.ops.tgfr.contrastive_forward(x, y, labels_x, labels_y, *arguments),
                                           expected):
            assert torch.equal(got_part, expected_part)
        assert torch.equal(torch.ops.tgfr.contrastive_row_max(x, y, labels_x, labels_y, "exclude", 0),
                           torch.ops.tgfr.contrastive_row_max(x, y, labels, labels, "exclude", 0))
    _, _, row_lse, column_lse = expected
    grad_rows, grad_columns = torch.arange(1.0, 7.0, dtype=torch.float64), torch.full((6,), 0.2, dtype=torch.float64)
    strided = (every_other(grad_rows), torch.full((1,), 0.2, dtype=torch.float64).expand(6), every_other(labels),
               every_other(row_lse), every_other(column_lse))
    assert not any(tensor.is_contiguous() for tensor in strided)
    got = torch.ops.tgfr.contrastive_backward(*strided[:2], x, y, strided[2], labels, *strided[3:], *arguments)
    expected = torch.ops.tgfr.contrastive_backward(grad_rows, grad_columns, x, y, labels, labels, row_lse, column_lse,
                                                   *arguments)
    for got_part, expected_part in zip(got, expected):
        assert torch.equal(got_part, expected_part)


def hardest_negative_formula(x, y, row_labels, column_labels, offset):
    """max of cos(x_i, y_j) over the columns that are neither row i's target nor of its identity."""
    similarity = F.normalize(x.double(), dim=1) @ F.normalize(y.double(), dim=1).T
    columns = torch.arange(y.shape[0])
    positive = (columns[None, :] == torch.arange(x.shape[0])[:, None] + offset) | (
        row_labels[:, None] == column_labels[None, :])
    return similarity.masked_fill(positive, float("-inf")).amax(dim=1)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_row_max_in_positive_mode_skips_the_positives(backend):
    # In mode "positive" the same-identity columns are positives: the hardest negative used to be
    # one of them (rows 0 and 1, one identity and one direction, gave 1 instead of 0).
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = contrastive_row_max(x, x, torch.tensor([0, 0, 1]), same_identity="positive", backend=backend)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 0.0]))
    one_identity = torch.zeros(3, dtype=torch.int64)  # no negatives at all
    got = contrastive_row_max(x, x, one_identity, same_identity="positive", backend=backend)
    torch.testing.assert_close(got, torch.full((3,), float("-inf")))
    # Tiles of 128 x 256 with ragged edges, and an offset.
    x, y, row_labels, column_labels = make_batch(300, 560, 12, torch.float32, identities=20)
    x, y, offset = x.detach(), y.detach(), 250
    got = contrastive_row_max(x, y, row_labels, column_labels, same_identity="positive", offset=offset,
                              backend=backend)
    expected = hardest_negative_formula(x, y, row_labels, column_labels, offset)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-6)


def test_triton_backend_refuses_float64(monkeypatch):
    # The Triton kernels compute in fp32: float64 in would come back float64 but not that precise.
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # makes backend "triton" available without a GPU
    x, y, _, _ = make_batch(6, 6, 4, torch.float64)
    with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16 for backend 'triton', got float64"):
        contrastive_loss(x, y, backend="triton")


@pytest.mark.parametrize("transform", DERIVATIVE_TRANSFORMS)
def test_derivative_transforms_on_y_raise_too(transform):
    """A review's mutation: the refusal checked x alone, and a transform on y passed with every test green."""
    x, y, _, _ = (tensor.detach() for tensor in make_batch(6, 6, 4, torch.float64))
    with pytest.raises(NotImplementedError, match="contrastive cross-entropy has fused reverse-mode gradients only"):
        DERIVATIVE_TRANSFORMS[transform](lambda b: contrastive_loss(x, b, backend="cpu"), y)


def test_jvp_on_y_through_aot_eager_raises():
    x, y, _, _ = (tensor.detach() for tensor in make_batch(6, 6, 4, torch.float64))
    torch._dynamo.reset()
    compiled = torch.compile(lambda b: contrastive_loss(x, b, backend="cpu"), backend="aot_eager")
    with pytest.raises(NotImplementedError, match="contrastive cross-entropy has fused reverse-mode gradients only"):
        DERIVATIVE_TRANSFORMS["forward_ad"](compiled, y)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_row_max_is_not_differentiable(backend):
    """CoReFace's margin needs detached maxima: a differentiable reference, or a CPU result that requires grad
    but gets no gradient, would each be silent."""
    x, y, _, _ = make_batch(6, 6, 4, torch.float32)
    assert not contrastive_row_max(x, y, backend=backend).requires_grad
    # Nor in forward mode, which no_grad does not stop: the reference's matmul carried x's tangent.
    assert DERIVATIVE_TRANSFORMS["forward_ad"](lambda a: contrastive_row_max(a, y, backend=backend), x) is None


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_int32_labels_are_taken_as_int64(backend):
    x, y, labels, columns = make_batch(6, 6, 4, torch.float64, identities=3)
    for mode in ("exclude", "positive"):
        got = contrastive_loss(x, y, row_labels=labels.int(), column_labels=columns.int(), same_identity=mode,
                               backend=backend)
        expected = contrastive_loss(x, y, row_labels=labels, column_labels=columns, same_identity=mode,
                                    backend="reference")
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_offset_takes_a_numpy_integer(backend):
    """As gamma, scale and margin take numpy scalars (an offset computed with numpy is one); numpy's bool is not."""
    x, y, row_labels, column_labels = make_batch(4, 7, 8, torch.float64, identities=3)
    arguments = dict(row_labels=row_labels, column_labels=column_labels, same_identity="exclude", backend=backend)
    assert torch.equal(contrastive_loss(x, y, direction="rows", offset=np.int64(2), **arguments),
                       contrastive_loss(x, y, direction="rows", offset=2, **arguments))
    x, y = x.detach(), y.detach()
    assert torch.equal(contrastive_row_max(x, y, offset=np.int32(3), **arguments),
                       contrastive_row_max(x, y, offset=3, **arguments))
    with pytest.raises(TypeError, match="offset must be an int, got bool"):
        contrastive_loss(x, y, direction="rows", offset=np.bool_(False), **arguments)


@pytest.mark.parametrize("call, error, words", [
    (lambda x, y, l: contrastive_loss(x, y.detach().to("meta")), ValueError, ["one device", "y on meta"]),
    (lambda x, y, l: contrastive_loss(x, y, row_labels=l.to("meta")), ValueError, ["row_labels on meta"]),
    (lambda x, y, l: contrastive_row_max(x, y.detach().to("meta")), ValueError, ["y on meta"]),
    (lambda x, y, l: contrastive_loss(x, y, row_labels=l, column_labels=l.to("meta")), ValueError,
     ["column_labels on meta"]),
    (lambda x, y, l: contrastive_loss(x, y, row_labels=l, column_labels=l[:1], backend="reference"), ValueError,
     ["column_labels must have size 6"]),
    (lambda x, y, l: contrastive_loss(x[:, :0], y[:, :0], backend="reference"), ValueError,
     ["x must not be empty along dimension 1"]),
    (lambda x, y, l: contrastive_loss(x, y, direction="rows", offset=True), TypeError, ["offset", "bool"]),
    # The reference alone, which has no check of its own: without these it returned None, a made-up loss, the
    # maxima of uninitialized memory, and the "none" maxima for a mistyped mode.
    (lambda x, y, l: contrastive_loss(x, y[:0], direction="columns", backend="reference"), ValueError,
     ["y must not be empty along dimension 0"]),
    (lambda x, y, l: contrastive_loss(x, y.detach().to("meta"), backend="reference"), ValueError, ["y on meta"]),
    (lambda x, y, l: contrastive_row_max(x, y.detach().to("meta"), backend="reference"), ValueError, ["y on meta"]),
    (lambda x, y, l: contrastive_row_max(x, y, l, same_identity="mask", backend="reference"), ValueError,
     ["same_identity", "'mask'"]),
])
def test_more_bad_input_names_the_argument(call, error, words):
    """Checks a review's mutations showed untested: without them the reference broadcast or returned log M, and
    the CPU op read a meta tensor's missing values."""
    x, y, labels, _ = make_batch(6, 6, 4, torch.float32)
    with pytest.raises(error) as raised:
        call(x, y, labels)
    for word in words:
        assert word in str(raised.value)


def test_autocast_off_leaves_float32_inputs_alone(monkeypatch):
    """As test_word_region's: a review's mutation cast without checking that autocast is on, and every float32
    loss on CUDA ran in float16 outside any autocast region, with every test green. The CPU stands in for CUDA."""
    import tgfr.ops.autocast

    x, y, labels, _ = make_batch(32, 32, 16, torch.float32, identities=5)
    arguments = dict(row_labels=labels, same_identity="exclude", backend="cpu")
    in_fp32 = contrastive_loss(x, y, **arguments)
    monkeypatch.setitem(tgfr.ops.autocast._KERNEL_DTYPES, "cpu", (torch.bfloat16,))
    assert not torch.is_autocast_enabled("cpu")
    assert torch.equal(contrastive_loss(x, y, **arguments), in_fp32)


def test_auto_sends_float64_cuda_tensors_to_the_reference(monkeypatch):
    """As test_word_region_inputs': the Triton kernel computes in fp32 and refuses float64, so "auto" must not
    send it CUDA float64 (gradcheck). Fake CUDA tensors: the choice reads only device and dtype."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tgfr.ops.contrastive import _resolve_backend

    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # makes backend "triton" available without a GPU
    with FakeTensorMode(allow_non_fake_inputs=True):
        x64 = torch.empty(3, 8, dtype=torch.float64, device="cuda")
        x32 = torch.empty(3, 8, dtype=torch.float32, device="cuda")
    assert _resolve_backend("auto", x64) == "reference"
    assert _resolve_backend("auto", x32) == "triton"


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_scale_may_be_float32s_maximum(backend):
    """The docstring's bound is inclusive ("at most float32's maximum"); 1e39 above it is refused (the
    bad-input tests)."""
    x, y, _, _ = make_batch(6, 6, 4, torch.float32)
    contrastive_loss(x, y, scale=torch.finfo(torch.float32).max, backend=backend)
