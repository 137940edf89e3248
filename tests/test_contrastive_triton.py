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
for mode, direction in itertools.product(("exclude", "zero", "positive", "none"), ("rows", "columns", "both")):
    n, m = (37, 37) if direction != "rows" else (20, 45)
    offset = 0 if direction != "rows" else 11
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
print("ok")
"""


def test_triton_kernels_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", CHECK.format(device="cpu")], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.gpu
def test_triton_kernels_on_cuda():
    exec(CHECK.format(device="cuda"), {})
    x = torch.randn(3000, 128, device="cuda", dtype=torch.bfloat16)
    from tgfr.ops import contrastive_loss

    torch.testing.assert_close(contrastive_loss(x, x.roll(1, 1), backend="triton"),
                               contrastive_loss(x, x.roll(1, 1), backend="reference"), rtol=2e-2, atol=2e-2)
