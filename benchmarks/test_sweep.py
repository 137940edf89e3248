"""Batch-size sweep: the largest N = M each word-region implementation fits in a memory budget.

For each implementation, forward+backward steps at growing N run in fresh processes
(benchmarks/word_region_steps.py); a step fits when its peak RSS rise stays within the budget.
An address-space cap (twice the budget plus 256 MiB above the warmed-up process) makes a step
that would run far past the budget fail its allocation instead of swapping the machine. The
sweep stops at the first N that does not fit, or after a step slower than STEP_TIME_LIMIT_S
(the N reached is then a lower bound: "stopped_by": "time"). Each step's wall time and useful
GFLOP/s are recorded along the way (one step after a warm-up at N=4, not a median).

Quick mode: a 128 MiB budget, N in {8, 32}, the three eager implementations. Full mode
(TGFR_BENCH_FULL=1): a 2 GiB budget, N in {32, 64, 128, 256, 512}, all four implementations.
"""

import pytest

from benchmarks.baselines import WORD_REGION_IMPLEMENTATIONS
from benchmarks.conftest import FULL
from benchmarks.fresh_process import StepOutOfMemory
from benchmarks.word_region_steps import (DIM, NUM_REGIONS, NUM_WORDS, measure_step_memory,
                                          useful_flops)

BUDGET_MIB = 2048 if FULL else 128
SIZES = (32, 64, 128, 256, 512) if FULL else (8, 32)
STEP_TIME_LIMIT_S = 30.0
IMPLEMENTATIONS = WORD_REGION_IMPLEMENTATIONS if FULL else ("fused", "reference", "chunked_checkpointed")
PASSES, DTYPE = "forward_backward", "float32"


def sweep(implementation: str) -> dict:
    """Steps at growing N until one does not fit or takes too long; the sweep's record."""
    budget_bytes = BUDGET_MIB * 2**20
    steps, largest, stopped_by = [], None, "sizes"
    for size in SIZES:
        try:
            memory = measure_step_memory(implementation, PASSES, size, DTYPE, cap_bytes=2 * budget_bytes + 2**28)
        except StepOutOfMemory:
            steps.append(dict(N=size, fits=False, out_of_memory=True))
            stopped_by = "memory"
            break
        fits = memory.rise_bytes <= budget_bytes
        steps.append(dict(N=size, fits=fits, peak_rss_rise_mib=round(memory.rise_bytes / 2**20, 1),
                          seconds=memory.seconds, useful_gflops=round(useful_flops(size, PASSES) / memory.seconds / 1e9, 2)))
        if not fits:
            stopped_by = "memory"
            break
        largest = size
        if memory.seconds > STEP_TIME_LIMIT_S and size != SIZES[-1]:
            stopped_by = "time"
            break
    return dict(op="word_region", kind="sweep", implementation=implementation, passes=PASSES, dtype=DTYPE,
                shape=dict(T=NUM_WORDS, R=NUM_REGIONS, D=DIM), budget_mib=BUDGET_MIB, sizes=list(SIZES),
                largest_fitting_n=largest, stopped_by=stopped_by, steps=steps)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_largest_batch_within_budget(results_record, implementation):
    record = sweep(implementation)
    results_record(record)
    fitted = [step for step in record["steps"] if step["fits"]]
    assert all(step["seconds"] > 0 for step in fitted)
    if implementation == "fused":
        # O(N*M + (N*T + M*R)*D) memory: every size of the sweep fits.
        assert record["largest_fitting_n"] == SIZES[-1], record
    elif implementation == "reference":
        # The N*M*T*R and N*M*T*D tensors pass the budget before the largest size.
        assert record["stopped_by"] == "memory" and (record["largest_fitting_n"] or 0) < SIZES[-1], record
