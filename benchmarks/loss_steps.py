"""One step of a loss module of tgfr.losses (fused backend, reference backend, or torch.compile
of the reference-backend module), and its peak memory.

Used by benchmarks/test_losses_baselines.py through LossSteps, which gives one loss the steps
interface of benchmarks/cases.py. The embedding losses take x, y (N, 256) and labels with N/4
identities; their useful work is that of the contrastive op (forward 2*N*N*D, forward+backward
6*N*N*D). The word-region loss takes the `tgfr` shape at full length; its useful work is SPEC
section 2's.
"""

import functools

import torch

from benchmarks import contrastive_steps, word_region_steps
from benchmarks.fresh_process import measure_step
from tgfr.memory import PeakMemory

EMBEDDING_LOSSES = ("CaptionImageContrastiveLoss", "IntraModalContrastiveLoss", "CoReFaceLoss")
LOSSES = EMBEDDING_LOSSES + ("WordRegionContrastiveLoss",)
IMPLEMENTATIONS = ("fused", "reference", "compiled_reference")


@functools.cache
def loss_module(loss: str, implementation: str):
    """The loss module of one implementation (one instance per process, compiled once)."""
    import tgfr.losses

    module = getattr(tgfr.losses, loss)(backend="reference" if implementation != "fused" else "cpu")
    return torch.compile(module, dynamic=True) if implementation == "compiled_reference" else module


def make_step(implementation: str, passes: str, size: int, dtype: str):
    """implementation "<loss>/<fused|reference|compiled_reference>": one step on fresh inputs."""
    loss, implementation = implementation.split("/")
    backward = passes == "forward_backward"
    labels = torch.randint(0, max(1, size // 4), (size,), generator=torch.Generator().manual_seed(1))
    if loss == "WordRegionContrastiveLoss":
        words, lengths, regions = word_region_steps.make_inputs(size, dtype, backward)
        inputs, leaves = (words, lengths, regions, labels), (words, regions)
    else:
        x, y, _ = contrastive_steps.make_inputs(size, dtype, backward)
        inputs, leaves = (x, y, labels), (x, y)
    module = loss_module(loss, implementation)

    def step():
        value = module(*inputs)
        if backward:
            value.backward()
            for leaf in leaves:
                leaf.grad = None
        return value.detach()

    return step


class LossSteps:
    """The steps interface of benchmarks/cases.py for one loss."""

    def __init__(self, loss: str) -> None:
        self.loss = loss
        self.op_steps = word_region_steps if loss == "WordRegionContrastiveLoss" else contrastive_steps

    def make_step(self, implementation: str, passes: str, size: int, dtype: str):
        return make_step(f"{self.loss}/{implementation}", passes, size, dtype)

    def useful_flops(self, size: int, passes: str) -> int:
        return self.op_steps.useful_flops(size, passes)

    def shape(self, size: int) -> dict:
        return self.op_steps.shape(size)

    def measure_step_memory(self, implementation: str, passes: str, size: int, dtype: str) -> PeakMemory:
        return measure_step(__name__, f"{self.loss}/{implementation}", passes, size, dtype)
