"""Fused contrastive op vs the full-matrix reference: time (pytest-benchmark) and peak memory.

Quick by default (small shapes, few rounds). TGFR_BENCH_FULL=1 adds large shapes and the
N = M = 65536, D = 256 forward+backward memory measurement on CPU (a logits matrix alone would be
16 GiB; the fused op must stay under 1 GiB above the baseline).
"""

import os
import subprocess
import sys

import pytest
import torch

from tgfr.ops import contrastive_loss

FULL = os.environ.get("TGFR_BENCH_FULL") == "1"
SHAPES = [(1024, 256)] + ([(8192, 256)] if FULL else [])

# Run in a fresh interpreter: inputs made, then the RSS high-water mark is read before and after.
MEMORY_SCRIPT = """
import resource, sys, torch, tgfr.ops
n, d = int(sys.argv[1]), int(sys.argv[2])
x = torch.randn(n, d, requires_grad=True)
y = torch.randn(n, d, requires_grad=True)
labels = torch.randint(0, n // 4, (n,))
tgfr.ops.contrastive_loss(x[:256], y[:256], row_labels=labels[:256], same_identity="exclude").backward()
x.grad = y.grad = None
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tgfr.ops.contrastive_loss(x, y, 10.0, row_labels=labels, same_identity="exclude").backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024)
"""


def extra_memory_mib(n: int, d: int) -> float:
    """RSS high-water-mark rise (MiB) of one fused forward+backward at N = M = n, in a fresh process."""
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n), str(d)], capture_output=True, text=True,
                            check=True)
    return float(result.stdout.strip().splitlines()[-1])


def make_inputs(n, d):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator, requires_grad=True)
    y = torch.randn(n, d, generator=generator, requires_grad=True)
    labels = torch.randint(0, n // 4, (n,), generator=generator)
    return x, y, labels


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("n,d", SHAPES)
def test_contrastive_forward_backward(benchmark, backend, n, d):
    x, y, labels = make_inputs(n, d)

    def step():
        contrastive_loss(x, y, 10.0, row_labels=labels, same_identity="exclude", backend=backend).backward()

    benchmark.extra_info.update(n=n, d=d, useful_gflop=6 * 2 * n * n * d / 1e9)
    benchmark.pedantic(step, rounds=3 if FULL else 2, iterations=1, warmup_rounds=1)


@pytest.mark.skipif(not FULL, reason="the 65536 x 65536 run takes minutes; set TGFR_BENCH_FULL=1")
def test_memory_65536(benchmark):
    extra = benchmark.pedantic(extra_memory_mib, args=(65536, 256), rounds=1, iterations=1)
    benchmark.extra_info["extra_rss_mib"] = extra
    print(f"\nN=M=65536 D=256 fp32 fused forward+backward: {extra:.1f} MiB above baseline")
    assert extra < 1024
