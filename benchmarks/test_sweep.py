"""Batch-size sweep: the largest N = M each implementation fits in a memory budget.

For each op and implementation, forward+backward fp32 steps at growing N run in fresh processes
(benchmarks/fresh_process.py); a step fits when its peak RSS rise stays within the budget. An
address-space cap (twice the budget plus 256 MiB above the warmed-up process) makes a step that
would run far past the budget fail its allocation instead of swapping the machine. The sweep
stops at the first N that does not fit, or after a step slower than STEP_TIME_LIMIT_S (the N
reached is then a lower bound: "stopped_by": "time"). Each step's wall time and useful GFLOP/s
are recorded along the way (one step after a warm-up at N=4, not a median).

Quick mode: a 128 MiB budget, the word-region op at N in {8, 32}, the eager implementations
(the contrastive op's steps are exercised by its benchmark). Full mode (TGFR_BENCH_FULL=1): a
2 GiB budget; word-region N in {32, 64, 128, 256}, contrastive N in {4096, 16384}; all four
implementations. Larger N would only lengthen the run: the fused ops' memory at N=512 and
N=65536 is measured by benchmarks/test_word_region.py and benchmarks/test_contrastive_baselines.py.
"""

import pytest

from benchmarks import contrastive_steps, word_region_steps
from benchmarks.baselines import CONTRASTIVE_IMPLEMENTATIONS, WORD_REGION_IMPLEMENTATIONS
from benchmarks.conftest import FULL
from benchmarks.fresh_process import StepOutOfMemory

BUDGET_MIB = 2048 if FULL else 128
STEP_TIME_LIMIT_S = 15.0
PASSES, DTYPE = "forward_backward", "float32"
OPS = {
    "word_region": (word_region_steps, (32, 64, 128, 256) if FULL else (8, 32), WORD_REGION_IMPLEMENTATIONS),
    "contrastive": (contrastive_steps, (4096, 16384), CONTRASTIVE_IMPLEMENTATIONS),
}


def sweep(op: str, implementation: str) -> dict:
    """Steps at growing N until one does not fit or takes too long; the sweep's record."""
    steps_module, sizes, _ = OPS[op]
    budget_bytes = BUDGET_MIB * 2**20
    steps, largest, stopped_by = [], None, "sizes"
    for size in sizes:
        try:
            memory = steps_module.measure_step_memory(implementation, PASSES, size, DTYPE,
                                                      cap_bytes=2 * budget_bytes + 2**28)
        except StepOutOfMemory:
            steps.append(dict(N=size, fits=False, out_of_memory=True))
            stopped_by = "memory"
            break
        fits = memory.rise_bytes <= budget_bytes
        gflops = steps_module.useful_flops(size, PASSES) / memory.seconds / 1e9
        steps.append(dict(N=size, fits=fits, peak_rss_rise_mib=round(memory.rise_bytes / 2**20, 1),
                          seconds=memory.seconds, useful_gflops=round(gflops, 2)))
        if not fits:
            stopped_by = "memory"
            break
        largest = size
        if memory.seconds > STEP_TIME_LIMIT_S and size != sizes[-1]:
            stopped_by = "time"
            break
    return dict(op=op, kind="sweep", implementation=implementation, passes=PASSES, dtype=DTYPE,
                shape={key: value for key, value in steps_module.shape(0).items() if key not in "NM"}, budget_mib=BUDGET_MIB, sizes=list(sizes),
                largest_fitting_n=largest, stopped_by=stopped_by, steps=steps)


def sweep_cases():
    for op, (_, _, implementations) in OPS.items():
        for implementation in implementations:
            if FULL or (op == "word_region" and not implementation.startswith("compiled")):
                yield pytest.param(op, implementation, id=f"{op}-{implementation}")


@pytest.mark.parametrize("op,implementation", list(sweep_cases()))
def test_largest_batch_within_budget(results_record, op, implementation):
    record = sweep(op, implementation)
    results_record(record)
    sizes = OPS[op][1]
    if implementation == "fused":
        # Memory linear in N + M (and N*M scores): every size of the sweep fits.
        assert record["largest_fitting_n"] == sizes[-1], record
    elif implementation == "reference":
        # The full pairwise tensors pass the budget before the largest size.
        assert record["stopped_by"] == "memory" and (record["largest_fitting_n"] or 0) < sizes[-1], record
