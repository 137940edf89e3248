"""One step (forward, or forward+backward) of the word-region similarity, and its peak memory.

Shared by benchmarks/test_word_region.py and benchmarks/test_sweep.py. Inputs use the `tgfr`
reference shape (T=22, R=196, D=256) with every caption at full length, so that SPEC section 2's
useful-FLOP count (forward 4*N*M*T*R*D, forward+backward 12*N*M*T*R*D) is the work really done.
"""

import torch

from benchmarks.baselines import word_region_function
from benchmarks.fresh_process import measure_step
from tgfr.memory import PeakMemory

NUM_WORDS, NUM_REGIONS, DIM = 22, 196, 256


def shape(size: int) -> dict:
    """Sizes of a case at N = M = size, for the results file."""
    return dict(N=size, M=size, T=NUM_WORDS, R=NUM_REGIONS, D=DIM)


def useful_flops(size: int, passes: str) -> int:
    """SPEC section 2's work of one step at N = M = size."""
    return (12 if passes == "forward_backward" else 4) * size * size * NUM_WORDS * NUM_REGIONS * DIM


def make_inputs(size: int, dtype: str, requires_grad: bool):
    """words (size, T, D), full lengths (size,), regions (size, R, D), seeded."""
    generator = torch.Generator().manual_seed(0)
    words = torch.randn(size, NUM_WORDS, DIM, generator=generator).to(getattr(torch, dtype))
    regions = torch.randn(size, NUM_REGIONS, DIM, generator=generator).to(getattr(torch, dtype))
    lengths = torch.full((size,), NUM_WORDS)
    return words.requires_grad_(requires_grad), lengths, regions.requires_grad_(requires_grad)


def make_step(implementation: str, passes: str, size: int, dtype: str):
    """A function running one step of `implementation` on fresh inputs; returns the scores."""
    backward = passes == "forward_backward"
    words, lengths, regions = make_inputs(size, dtype, backward)
    scores_fn = word_region_function(implementation)

    def step():
        scores = scores_fn(words, lengths, regions)
        if backward:
            scores.sum().backward()
            words.grad = regions.grad = None
        return scores.detach()

    return step


def measure_step_memory(implementation: str, passes: str, size: int, dtype: str, cap_bytes: int = 0) -> PeakMemory:
    """Peak RSS rise of one step of make_step(...) in a fresh process (fresh_process.measure_step)."""
    return measure_step(__name__, implementation, passes, size, dtype, cap_bytes)
