"""Fused contrastive loss on CPU against three PyTorch baselines, caption-image setting.

The loss of SPEC section 3 with labels ("exclude" mode, scale 10), x, y (N, 256). Implementations
(benchmarks/baselines.py): `fused` (tgfr.ops.contrastive_loss, backend "cpu"), `reference`
(the full N x N logits matrix, tgfr.reference), `chunked_checkpointed` (blocks of 1024 rows and
of 1024 columns, each checkpointed) and `compiled_reference` (torch.compile of the reference).
Figures as in benchmarks/test_word_region.py (benchmarks/cases.py); useful work forward
2*N*N*D, forward+backward 6*N*N*D (benchmarks/contrastive_steps.py). The loss modules of
tgfr.losses (CICL, intra-modal, CoReFace) are this op plus O(N) work; benchmarks/test_losses_baselines.py
times them.

As for the word-region op, the reference upcasts to fp32, so only the fused op runs in bf16.
Quick mode: N=2048 (two blocks for the chunked baseline), forward+backward, no compiled case
(its correctness test below keeps it from rotting). Full
mode (TGFR_BENCH_FULL=1): forward+backward at N in {4096, 16384}, forward at N=4096, and the
peak memory of one fused fp32 forward+backward at N = M = 65536 (a logits matrix alone would take
16 GiB; the fused op must stay under 1 GiB above its baseline).
"""

import pytest
import torch

from benchmarks import contrastive_steps
from benchmarks.baselines import (CONTRASTIVE_IMPLEMENTATIONS, chunked_checkpointed_contrastive_loss,
                                  compiled_contrastive_loss, reference_contrastive_loss)
from benchmarks.cases import run_case
from benchmarks.conftest import FULL
from benchmarks.contrastive_steps import make_inputs


def cases():
    """(implementation, passes, dtype, size) of this mode."""
    if FULL:
        for implementation in CONTRASTIVE_IMPLEMENTATIONS:
            dtypes = ("float32", "bfloat16") if implementation == "fused" else ("float32",)
            for dtype in dtypes:
                yield from [(implementation, "forward_backward", dtype, 4096),
                            (implementation, "forward_backward", dtype, 16384),
                            (implementation, "forward", dtype, 4096)]
        return
    yield from [("fused", "forward_backward", "float32", 2048), ("fused", "forward_backward", "bfloat16", 2048),
                ("reference", "forward_backward", "float32", 2048),
                ("chunked_checkpointed", "forward_backward", "float32", 2048)]


@pytest.mark.parametrize(
    "implementation,passes,dtype,size",
    [pytest.param(*case, id="{}-{}-{}-N{}".format(*case)) for case in cases()],
)
def test_contrastive_loss(benchmark, matmul_gflops, matmul_gflops_of, implementation, passes, dtype, size):
    loss = run_case(benchmark, contrastive_steps, "contrastive", implementation, passes, dtype, size,
                    matmul_gflops, matmul_gflops_of)
    assert loss.dim() == 0 and torch.isfinite(loss)


@pytest.mark.skipif(not FULL, reason="one step takes minutes on 2 cores; set TGFR_BENCH_FULL=1")
def test_fused_memory_at_65536(results_record):
    size = 65536
    memory = contrastive_steps.measure_step_memory("fused", "forward_backward", size, "float32")
    rise_mib = memory.rise_bytes / 2**20
    results_record(dict(op="contrastive", kind="memory", implementation="fused", passes="forward_backward",
                        dtype="float32", shape=contrastive_steps.shape(size), seconds=memory.seconds,
                        peak_rss_rise_mib=round(rise_mib, 1)))
    assert rise_mib < 1024, f"{rise_mib:.1f} MiB above the baseline"


@pytest.mark.parametrize("same_identity", ["exclude", "zero", "positive", "none"])
def test_chunked_checkpointed_baseline_matches_reference(same_identity):
    """Blocks of 3 rows over N=10, with a margin: the full-matrix loss and its gradients."""
    x, y, labels = make_inputs(10, "float32", requires_grad=True)
    expected = reference_contrastive_loss(x, y, labels, 10.0, 0.3, same_identity)
    expected_grads = torch.autograd.grad(expected, (x, y))
    loss = chunked_checkpointed_contrastive_loss(x, y, labels, 10.0, 0.3, same_identity, chunk_rows=3)
    grads = torch.autograd.grad(loss, (x, y))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_reference_baseline_matches_the_op_reference_backend():
    import tgfr.ops

    x, y, labels = make_inputs(12, "float32", requires_grad=False)
    expected = tgfr.ops.contrastive_loss(x, y, 10.0, 0.0, labels, same_identity="exclude", backend="reference")
    torch.testing.assert_close(reference_contrastive_loss(x, y, labels, 10.0, 0.0, "exclude"), expected)


def test_compiled_reference_baseline_matches_reference():
    """torch.compile keeps the reference's value (forward, dynamic shapes)."""
    x, y, labels = make_inputs(16, "float32", requires_grad=False)
    torch.testing.assert_close(compiled_contrastive_loss()(x, y, labels, 10.0, 0.0, "exclude"),
                               reference_contrastive_loss(x, y, labels, 10.0, 0.0, "exclude"), rtol=1e-5, atol=1e-5)


def test_useful_flops_count_the_logits_product_and_its_two_gradient_products():
    """Forward 2*N*N*D (x @ y.T), forward+backward 6*N*N*D (plus the gradients of x and y), D=256."""
    size = 2048
    assert contrastive_steps.useful_flops(size, "forward") == 2 * size * size * 256
    assert contrastive_steps.useful_flops(size, "forward_backward") == 6 * size * size * 256


def test_a_step_passes_the_identity_labels_to_the_loss(monkeypatch):
    """The caption-image setting: labels of N/4 identities reach the loss, in the "exclude" mode at scale 10."""
    calls = []

    def record_loss(x, y, labels, scale, margin, same_identity):
        calls.append((labels, scale, margin, same_identity))
        return torch.zeros(())

    monkeypatch.setattr(contrastive_steps, "contrastive_function", lambda implementation: record_loss)
    contrastive_steps.make_step("reference", "forward", 16, "float32")()
    [(labels, scale, margin, same_identity)] = calls
    assert isinstance(labels, torch.Tensor) and labels.shape == (16,)
    assert labels.min() >= 0 and labels.max() < 16 // 4
    assert (scale, margin, same_identity) == (10.0, 0.0, "exclude")
