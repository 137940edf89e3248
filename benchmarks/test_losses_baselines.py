"""Each loss module of tgfr.losses: fused backend against the reference backend and torch.compile
of the reference-backend module, with the figures of benchmarks/cases.py (benchmarks/loss_steps.py).

The losses are their op (benchmarks/test_contrastive_baselines.py, test_word_region.py, where the
chunked and checkpointed baselines are) plus O(N) work, so the op's useful work is counted. As for
the ops, the reference backend upcasts to fp32: only the fused backend runs in bf16.

Quick mode: every loss, fused backend, forward+backward, at N=1024 (embedding losses) and N=16
(word-region). Full mode (TGFR_BENCH_FULL=1): N=4096 (embedding losses) and N=64 (word-region),
forward+backward (the training step; forward-only figures are the ops'), fused fp32 and bf16
and reference, the fused forward, and the compiled reference for the caption-image and
word-region losses (the two of TGFR; each compilation takes 30 s and more on 2 cores).
"""

import pytest
import torch

from benchmarks.cases import run_case
from benchmarks.conftest import FULL
from benchmarks.loss_steps import EMBEDDING_LOSSES, LOSSES, LossSteps, loss_module


def size_of(loss: str) -> int:
    if loss in EMBEDDING_LOSSES:
        return 4096 if FULL else 1024
    return 64 if FULL else 16


def cases():
    """(loss, implementation, passes, dtype) of this mode."""
    for loss in LOSSES:
        if not FULL:
            yield loss, "fused", "forward_backward", "float32"
            continue
        yield from [(loss, "fused", "forward", "float32"), (loss, "fused", "forward_backward", "float32"),
                    (loss, "fused", "forward_backward", "bfloat16"), (loss, "reference", "forward_backward", "float32")]
        if loss in ("CaptionImageContrastiveLoss", "WordRegionContrastiveLoss"):
            yield loss, "compiled_reference", "forward_backward", "float32"


@pytest.mark.parametrize(
    "loss,implementation,passes,dtype", [pytest.param(*case, id="-".join(case)) for case in cases()]
)
def test_loss(benchmark, matmul_gflops, matmul_gflops_of, loss, implementation, passes, dtype):
    size = size_of(loss)
    value = run_case(benchmark, LossSteps(loss), loss, implementation, passes, dtype, size, matmul_gflops,
                     matmul_gflops_of)
    assert value.dim() == 0 and torch.isfinite(value)


@pytest.mark.parametrize("loss", LOSSES)
def test_each_implementation_is_the_loss_module_on_its_backend(loss):
    """"fused" is the module on the fused CPU backend; "reference" and "compiled_reference" (torch.compile
    of the module, which compiles on its first call) are on the reference backend."""
    assert loss_module(loss, "fused").backend == "cpu"
    assert loss_module(loss, "reference").backend == "reference"
    assert loss_module(loss, "compiled_reference")._orig_mod.backend == "reference"
