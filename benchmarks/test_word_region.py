"""Word-region similarity on CPU: the fused op against three PyTorch baselines, `tgfr` shape.

Implementations (benchmarks/baselines.py): `fused` (tgfr.ops, backend "cpu"), `reference`
(tgfr.reference, vectorized), `chunked_checkpointed` (the reference over blocks of captions under
activation checkpointing) and `compiled_reference` (torch.compile of the reference). Each case
reports (benchmarks/cases.py) the median time of a step, useful GFLOP/s with SPEC section 2's
accounting (all T words valid), its fraction of the same run's fp32 2048x2048 matmul throughput
(and of the bf16 matmul for bf16 cases), and the rise of peak RSS of one step in a fresh process.

The reference family computes in fp32 whatever the input dtype (tgfr.reference upcasts), so a
bf16 run of it would time the same fp32 arithmetic plus a cast: only the fused op runs in bf16.

Quick mode: N=M=32, a few cases, no compiled one (compilation alone takes 10-30 s cold; the
compiled baseline's correctness test below keeps it from rotting). Full mode (TGFR_BENCH_FULL=1), forward and forward+backward: N=M in {32, 64, 128} for the
reference, {32, 64, 128, 256, 512} for the fused op (issue 2, item 6), {32, 128} for the other
baselines and for the fused op in bf16.
"""

from types import SimpleNamespace

import pytest
import torch

from benchmarks import word_region_steps
from benchmarks.baselines import (WORD_REGION_IMPLEMENTATIONS, chunked_checkpointed_word_region_scores,
                                  compiled_word_region_scores)
from benchmarks.cases import PASSES, rounds_of, run_case
from benchmarks.conftest import FULL
from benchmarks.word_region_steps import make_inputs
from tgfr import reference
from tgfr.memory import PeakMemory


def cases():
    """(implementation, passes, dtype, size) of this mode."""
    if FULL:
        for implementation in WORD_REGION_IMPLEMENTATIONS:
            for passes in PASSES:
                if implementation == "fused":
                    yield from ((implementation, passes, "float32", size) for size in (32, 64, 128, 256, 512))
                    yield from ((implementation, passes, "bfloat16", size) for size in (32, 128))
                else:
                    sizes = (32, 64, 128) if implementation == "reference" else (32, 128)
                    yield from ((implementation, passes, "float32", size) for size in sizes)
        return
    yield from [("fused", "forward", "float32", 32), ("fused", "forward_backward", "float32", 32),
                ("fused", "forward_backward", "bfloat16", 32), ("reference", "forward_backward", "float32", 32),
                ("chunked_checkpointed", "forward_backward", "float32", 32)]


@pytest.mark.parametrize(
    "implementation,passes,dtype,size",
    [pytest.param(*case, id="{}-{}-{}-N{}".format(*case)) for case in cases()],
)
def test_word_region_scores(benchmark, matmul_gflops, matmul_gflops_of, implementation, passes, dtype, size):
    scores = run_case(benchmark, word_region_steps, "word_region", implementation, passes, dtype, size,
                      matmul_gflops, matmul_gflops_of)
    assert scores.shape == (size, size) and torch.isfinite(scores).all()


def test_chunked_checkpointed_baseline_matches_reference():
    """The chunked baseline is the reference's math: values and gradients over several blocks."""
    words, _, regions = make_inputs(6, "float32", requires_grad=True)
    lengths = torch.tensor([1, 22, 5, 13, 22, 9])
    expected = reference.word_region_scores(words, lengths, regions)
    expected_grads = torch.autograd.grad(expected.square().sum(), (words, regions))
    scores = chunked_checkpointed_word_region_scores(words, lengths, regions, chunk_pairs=12)  # blocks of 2
    grads = torch.autograd.grad(scores.square().sum(), (words, regions))
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_compiled_reference_baseline_matches_reference():
    """torch.compile keeps the reference's values (forward, dynamic shapes)."""
    words, _, regions = make_inputs(4, "float32", requires_grad=False)
    lengths = torch.tensor([1, 22, 7, 16])
    compiled = compiled_word_region_scores()
    torch.testing.assert_close(compiled(words, lengths, regions), reference.word_region_scores(words, lengths, regions),
                               rtol=1e-5, atol=1e-5)


def test_useful_flops_are_spec_section_2s():
    """SPEC section 2's accounting at T=22, R=196, D=256: forward 4*N*M*T*R*D (the products of
    steps 1 and 4), forward+backward 12*N*M*T*R*D."""
    size = 32
    assert word_region_steps.useful_flops(size, "forward") == 4 * size * size * 22 * 196 * 256
    assert word_region_steps.useful_flops(size, "forward_backward") == 12 * size * size * 22 * 196 * 256


def test_a_step_scores_captions_at_full_length(monkeypatch):
    """All T=22 words valid, so that SPEC section 2's useful FLOPs are the work really done."""
    scored = []

    def record_scores(words, lengths, regions):
        scored.append((words.shape, lengths, regions.shape))
        return torch.zeros(words.shape[0], regions.shape[0])

    monkeypatch.setattr(word_region_steps, "word_region_function", lambda implementation: record_scores)
    word_region_steps.make_step("reference", "forward", 3, "float32")()
    [(words_shape, lengths, regions_shape)] = scored
    assert words_shape == (3, 22, 256) and regions_shape == (3, 196, 256)
    assert lengths.tolist() == [22, 22, 22]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_run_case_records_the_figures_of_the_timed_step(dtype):
    """extra_info holds the case's own passes, dtype and shape, the peak memory of a step of the same
    passes, size and dtype, and for a bf16 case its fraction of the bf16 matmul (stub steps and fixture)."""
    memory_calls = []

    def measure_step_memory(implementation, passes, size, dtype):
        memory_calls.append((implementation, passes, size, dtype))
        rise_mib = 5 if passes == "forward_backward" else 1
        return PeakMemory(baseline_bytes=2**20, peak_bytes=(1 + rise_mib) * 2**20, seconds=0.1)

    steps = SimpleNamespace(
        make_step=lambda implementation, passes, size, dtype: lambda: "output",
        useful_flops=lambda size, passes: (3 if passes == "forward_backward" else 1) * 10**9,
        shape=lambda size: {"N": size},
        measure_step_memory=measure_step_memory,
    )
    benchmark = SimpleNamespace(extra_info={}, stats=SimpleNamespace(stats=SimpleNamespace(median=0.5)),
                                pedantic=lambda step, rounds, iterations, warmup_rounds: step(), disabled=False)
    # --benchmark-disable: the step runs once, as a check; there are no timings, and nothing is recorded.
    disabled = SimpleNamespace(extra_info={}, stats=None, disabled=True,
                               pedantic=lambda step, rounds, iterations, warmup_rounds: step())
    assert run_case(disabled, steps, "op", "fused", "forward_backward", dtype, 48, 100.0, {}.get) == "output"
    assert disabled.extra_info == {} and memory_calls == []
    output = run_case(benchmark, steps, "op", "fused", "forward_backward", dtype, 48, 100.0, {"bfloat16": 40.0}.get)
    # 3 GFLOP in the median 0.5 s: 6 GFLOP/s, 6% of the fp32 matmul's 100 and 15% of the bf16 matmul's 40.
    expected = dict(op="op", implementation="fused", passes="forward_backward", dtype=dtype, shape={"N": 48},
                    seconds=0.5, useful_gflops=6.0, matmul_gflops=100.0, fraction_of_matmul=0.06,
                    peak_rss_rise_mib=5.0, threads=torch.get_num_threads())
    if dtype == "bfloat16":
        expected.update(matmul_gflops_same_dtype=40.0, fraction_of_matmul_same_dtype=0.15)
    assert output == "output" and benchmark.group == f"op forward_backward {dtype}"
    assert benchmark.extra_info == expected
    assert memory_calls == [("fused", "forward_backward", 48, dtype)]


def test_rounds_of_a_step_are_one_in_quick_mode_and_three_under_3_s_in_full_mode(monkeypatch):
    """(rounds, warm-up rounds): (1, 1) in quick mode; in full mode, at 50 GFLOP/s planned, (3, 1) for
    a 1 GFLOP step (0.02 s) and (1, 1) for a 10 TFLOP one (200 s)."""
    monkeypatch.setattr("benchmarks.cases.FULL", False)
    assert rounds_of(10**9) == (1, 1)
    monkeypatch.setattr("benchmarks.cases.FULL", True)
    assert rounds_of(10**9) == (3, 1)
    assert rounds_of(10**13) == (1, 1)
