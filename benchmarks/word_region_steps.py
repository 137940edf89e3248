"""One step (forward, or forward+backward) of the word-region similarity, and its peak memory.

Shared by benchmarks/test_word_region.py and benchmarks/test_sweep.py. Inputs use the `tgfr`
reference shape (T=22, R=196, D=256) with every caption at full length, so that SPEC section 2's
useful-FLOP count (forward 4*N*M*T*R*D, forward+backward 12*N*M*T*R*D) is the work really done.
"""

from pathlib import Path

import torch

from benchmarks.baselines import word_region_function
from benchmarks.fresh_process import measure_peak_rss_rise
from tgfr.memory import PeakMemory

NUM_WORDS, NUM_REGIONS, DIM = 22, 196, 256
ROOT = Path(__file__).resolve().parents[1]


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


# Warm-up at N = 4 first, so the baseline holds the thread pool, the allocator's first arenas and
# (compiled_reference) the compiled graph; an optional address-space cap then turns a step that
# would run far past the budget into an allocation failure instead of swapping the machine.
_MEMORY_SETUP = """
import resource, sys
sys.path.insert(0, {root!r})
from benchmarks.word_region_steps import make_step
make_step({implementation!r}, {passes!r}, 4, {dtype!r})()
step = make_step({implementation!r}, {passes!r}, {size}, {dtype!r})
if {cap_bytes}:
    with open("/proc/self/status") as status:
        virtual_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (virtual_kib * 1024 + {cap_bytes}, resource.RLIM_INFINITY))
"""

_OUT_OF_MEMORY_MARKERS = ("can't allocate memory", "MemoryError", "Cannot allocate memory", "std::bad_alloc")


class StepOutOfMemory(RuntimeError):
    """A step in a fresh process failed to allocate under its address-space cap."""


def measure_step_memory(implementation: str, passes: str, size: int, dtype: str, cap_bytes: int = 0) -> PeakMemory:
    """Peak RSS rise (and wall time) of one step in a fresh process, inputs already made.

    With cap_bytes > 0 the process may map at most cap_bytes more than after its warm-up; an
    allocation beyond raises StepOutOfMemory. Any other failure raises RuntimeError.
    """
    setup = _MEMORY_SETUP.format(
        root=str(ROOT), implementation=implementation, passes=passes, size=size, dtype=dtype, cap_bytes=cap_bytes
    )
    try:
        return measure_peak_rss_rise(setup, "step()")
    except RuntimeError as error:
        if any(marker in str(error) for marker in _OUT_OF_MEMORY_MARKERS):
            raise StepOutOfMemory(str(error)) from None
        raise
