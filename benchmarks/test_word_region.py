"""Fused CPU word-region similarity vs the vectorized PyTorch reference, `tgfr` shape.

Each case reports time (pytest-benchmark), useful GFLOP/s with SPEC section 2's accounting
(forward 4*N*M*T*R*D, forward+backward 12*N*M*T*R*D, all T words counted, so lengths are full),
its fraction of the same run's 2048x2048 fp32 matmul throughput, and the rise of peak RSS in a
fresh process (tgfr.memory). Quick mode: N=M in {8, 16}; full mode (TGFR_BENCH_FULL=1):
{32, 64, 128} for both and {256, 512} for the fused op only.
"""

import os

import pytest
import torch

from benchmarks.conftest import FULL
from tgfr.memory import measure_peak_rss_rise

NUM_WORDS, NUM_REGIONS, DIM = 22, 196, 256  # the `tgfr` reference shape
SIZES = [32, 64, 128, 256, 512] if FULL else [8, 16]
REFERENCE_MAX_SIZE = 128 if FULL else 16
DTYPES = ["float32", "bfloat16"] if FULL else ["float32"]


def make_inputs(size: int, dtype: str, requires_grad: bool):
    generator = torch.Generator().manual_seed(0)
    words = torch.randn(size, NUM_WORDS, DIM, generator=generator).to(getattr(torch, dtype))
    regions = torch.randn(size, NUM_REGIONS, DIM, generator=generator).to(getattr(torch, dtype))
    lengths = torch.full((size,), NUM_WORDS)
    return words.requires_grad_(requires_grad), lengths, regions.requires_grad_(requires_grad)


def make_step(implementation: str, passes: str, words, lengths, regions):
    import tgfr

    backend = "cpu" if implementation == "fused" else "reference"

    def step():
        scores = tgfr.ops.word_region_scores(words, lengths, regions, backend=backend)
        if passes == "forward_backward":
            scores.sum().backward()
        return scores

    return step


MEMORY_SETUP = """
import sys
sys.path.insert(0, {root!r})
from benchmarks.test_word_region import make_inputs, make_step
words, lengths, regions = make_inputs({size}, {dtype!r}, {backward})
step = make_step({implementation!r}, {passes!r}, words, lengths, regions)
small = make_step({implementation!r}, {passes!r}, *make_inputs(4, {dtype!r}, {backward}))
small()
"""


def cases():
    for implementation in ("fused", "reference"):
        for passes in ("forward", "forward_backward"):
            for dtype in DTYPES if implementation == "fused" else ["float32"]:
                for size in SIZES:
                    if implementation == "reference" and size > REFERENCE_MAX_SIZE:
                        continue
                    yield pytest.param(implementation, passes, dtype, size, id=f"{implementation}-{passes}-{dtype}-N{size}")


@pytest.mark.parametrize("implementation,passes,dtype,size", cases())
def test_word_region_scores(benchmark, matmul_gflops, bench_rounds, implementation, passes, dtype, size):
    backward = passes == "forward_backward"
    words, lengths, regions = make_inputs(size, dtype, backward)
    step = make_step(implementation, passes, words, lengths, regions)
    benchmark.group = f"word_region {passes} {dtype}"
    benchmark.pedantic(step, rounds=bench_rounds, iterations=1, warmup_rounds=1)

    seconds = benchmark.stats.stats.median
    useful_flops = (12 if backward else 4) * size * size * NUM_WORDS * NUM_REGIONS * DIM
    gflops = useful_flops / seconds / 1e9
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    memory = measure_peak_rss_rise(
        MEMORY_SETUP.format(
            root=root, size=size, dtype=dtype, backward=backward, implementation=implementation, passes=passes
        ),
        "step()",
    )
    benchmark.extra_info.update(
        shape=dict(N=size, M=size, T=NUM_WORDS, R=NUM_REGIONS, D=DIM),
        dtype=dtype,
        implementation=implementation,
        passes=passes,
        useful_gflops=round(gflops, 2),
        matmul_gflops=round(matmul_gflops, 2),
        fraction_of_matmul=round(gflops / matmul_gflops, 3),
        peak_rss_rise_mib=round(memory.rise_bytes / 2**20, 1),
        threads=torch.get_num_threads(),
    )
    assert torch.isfinite(step()).all()
