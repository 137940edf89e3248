"""One step (forward, or forward+backward) of the symmetric contrastive loss, and its peak memory.

Shared by benchmarks/test_contrastive_baselines.py and benchmarks/test_sweep.py. x, y (N, D=256)
with identity labels (N/4 identities) in the "exclude" mode and scale 10: the caption-image loss
of SPEC section 3. Useful work: forward 2*N*N*D (the logits product), forward+backward 6*N*N*D
(plus the two gradient products); the fused op's recomputation is not counted.
"""

import torch

from benchmarks.baselines import contrastive_function
from benchmarks.fresh_process import measure_step
from tgfr.memory import PeakMemory

DIM, SCALE, SAME_IDENTITY = 256, 10.0, "exclude"


def shape(size: int) -> dict:
    """Sizes of a case at N = M = size, for the results file."""
    return dict(N=size, M=size, D=DIM)


def useful_flops(size: int, passes: str) -> int:
    """Work of one step at N = M = size."""
    return (6 if passes == "forward_backward" else 2) * size * size * DIM


def make_inputs(size: int, dtype: str, requires_grad: bool):
    """x, y (size, D) and labels (size,) with size // 4 identities, seeded."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(size, DIM, generator=generator).to(getattr(torch, dtype))
    y = torch.randn(size, DIM, generator=generator).to(getattr(torch, dtype))
    labels = torch.randint(0, max(1, size // 4), (size,), generator=generator)
    return x.requires_grad_(requires_grad), y.requires_grad_(requires_grad), labels


def make_step(implementation: str, passes: str, size: int, dtype: str):
    """A function running one step of `implementation` on fresh inputs; returns the loss."""
    backward = passes == "forward_backward"
    x, y, labels = make_inputs(size, dtype, backward)
    loss_fn = contrastive_function(implementation)

    def step():
        loss = loss_fn(x, y, labels, SCALE, 0.0, SAME_IDENTITY)
        if backward:
            loss.backward()
            x.grad = y.grad = None
        return loss.detach()

    return step


def measure_step_memory(implementation: str, passes: str, size: int, dtype: str, cap_bytes: int = 0) -> PeakMemory:
    """Peak RSS rise of one step of make_step(...) in a fresh process (fresh_process.measure_step)."""
    return measure_step(__name__, implementation, passes, size, dtype, cap_bytes)
