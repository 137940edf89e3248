"""Shared settings of the benchmark suite.

Quick mode (the default, what CI runs) uses small shapes and one round so the suite never rots;
full mode (TGFR_BENCH_FULL=1) runs the shapes the issues name, with more rounds.
"""

import os
import time

import pytest
import torch

FULL = os.environ.get("TGFR_BENCH_FULL") == "1"


def measure_matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul throughput of this machine with torch's default threads, in GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * size**3 / (time.perf_counter() - start) / 1e9


@pytest.fixture(scope="session")
def matmul_gflops() -> float:
    return measure_matmul_gflops()


@pytest.fixture(scope="session")
def bench_rounds() -> int:
    return 3 if FULL else 1
