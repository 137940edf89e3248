"""One benchmark case of a fused op or a baseline: time, useful FLOP/s, peak memory.

A steps module (benchmarks/word_region_steps.py, benchmarks/contrastive_steps.py) provides
make_step(implementation, passes, size, dtype), useful_flops(size, passes), shape(size) and
measure_step_memory(...). The case's figures go to pytest-benchmark's extra_info, with the keys
that benchmarks/render.py reads.
"""

from types import ModuleType

import torch

from benchmarks.conftest import FULL

PASSES = ("forward", "forward_backward")


# Throughput assumed when planning rounds (useful GFLOP/s): about what the baselines reach on 2 cores. The
# fused ops reach several times more, so some of their steps planned at 3 s and more take under a second.
PLANNING_GFLOPS = 50.0


def rounds_of(useful_flops: int) -> tuple[int, int]:
    """(rounds, warm-up rounds) of a step. Quick mode: one of each. Full mode: a warm-up round
    always (the first call pays one-time costs: thread pool, first-touch page faults, allocator
    growth, a compiled baseline's compilation; training runs in the steady state), then three
    rounds, or one for steps planned at 3 s and more at PLANNING_GFLOPS (150 GFLOP of useful work
    and more: their spread is small against their length, but the fused ops run some in under a second)."""
    if not FULL:
        return 1, 1
    if useful_flops / (PLANNING_GFLOPS * 1e9) < 3:
        return 3, 1
    return 1, 1


def run_case(benchmark, steps: ModuleType, op: str, implementation: str, passes: str, dtype: str, size: int,
             matmul_gflops: float, matmul_gflops_of) -> torch.Tensor:
    """Times one step of `implementation` and records its figures; returns the step's output."""
    step = steps.make_step(implementation, passes, size, dtype)
    benchmark.group = f"{op} {passes} {dtype}"
    rounds, warmup_rounds = rounds_of(steps.useful_flops(size, passes))
    output = benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
    if benchmark.disabled:  # --benchmark-disable: the step ran once, as a check; nothing was timed
        return output
    seconds = benchmark.stats.stats.median
    gflops = steps.useful_flops(size, passes) / seconds / 1e9
    memory = steps.measure_step_memory(implementation, passes, size, dtype)
    info = dict(
        op=op,
        implementation=implementation,
        passes=passes,
        dtype=dtype,
        shape=steps.shape(size),
        seconds=seconds,
        useful_gflops=round(gflops, 2),
        matmul_gflops=round(matmul_gflops, 2),
        fraction_of_matmul=round(gflops / matmul_gflops, 4),
        peak_rss_rise_mib=round(memory.rise_bytes / 2**20, 1),
        threads=torch.get_num_threads(),
    )
    if dtype != "float32":
        same_dtype_gflops = matmul_gflops_of(dtype)
        info.update(matmul_gflops_same_dtype=round(same_dtype_gflops, 2),
                    fraction_of_matmul_same_dtype=round(gflops / same_dtype_gflops, 4))
    benchmark.extra_info.update(info)
    return output
