"""What benchmarks/test_word_region_gpu.py records around its timings, checked without a GPU: the
useful work of a timed step, the memory of a step that ran out of it, the provenance of its JSON lines,
which cases it skips and in which order it runs them."""

import datetime
import json
import os
import subprocess
import sys
import textwrap
import types
import weakref
from pathlib import Path

import pytest
import torch

from benchmarks import render
from benchmarks.conftest import CHECKOUT_RESULTS, git
from benchmarks import test_word_region_gpu as gpu


def test_a_case_records_spec_section_2s_useful_work_over_its_mean_step_time():
    """SPEC section 2: forward 4*N*M*T*R*D, forward+backward 12*N*M*T*R*D at the tgfr shape (T=22, R=196, D=256).
    Written out inline in the GPU test's body, the count was checked by no test, on a GPU or off one."""
    size, seconds = 1024, 0.5
    for passes, factor in (("forward", 4), ("forward_backward", 12)):
        assert gpu._timing(size, passes, seconds) == pytest.approx(
            {"ms": 1e3 * seconds, "useful_tflops": factor * size * size * 22 * 196 * 256 / seconds / 1e12})


def test_a_step_that_ran_out_of_memory_is_freed_before_the_case_is_skipped():
    """The step's intermediate is alive only through the error's traceback, which a frame keeping
    the error (as `except ... as error: raise` does) ties into a reference cycle."""
    intermediates = []

    def step():
        intermediate = torch.empty(1024)
        intermediates.append(weakref.ref(intermediate))
        error = torch.OutOfMemoryError("simulated")
        raise error

    assert gpu._ran_out_of_memory(step)
    assert intermediates[0]() is None
    assert not gpu._ran_out_of_memory(lambda: None)


def test_a_step_leaves_no_gradients_for_the_next_to_add_into(monkeypatch):
    """The peak is read on a second step up to the tuned range, on the first past it: gradients kept from
    the step before counted in the one and not the other, and every timed round added into them."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)  # CPU leaves stand in for the GPU's
    words = torch.randn(3, gpu.NUM_WORDS, 8, requires_grad=True)
    regions = torch.randn(4, gpu.NUM_REGIONS, 8, requires_grad=True)
    lengths = torch.full((3,), gpu.NUM_WORDS)
    backward_ran = []
    words.register_hook(lambda grad: backward_ran.append(grad.shape))
    step = gpu._step("reference", "forward_backward", words, lengths, regions)
    for steps_run in (1, 2):
        step()
        assert len(backward_ran) == steps_run
        assert words.grad is None and regions.grad is None


def test_the_lines_of_one_session_are_one_run_with_the_given_commit(tmp_path, monkeypatch):
    """Two cases recorded a second apart by one pytest session: one run in the rendered results
    (whose run list is keyed by commit and date), under the session's commit."""
    seconds = iter(range(100))

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 1, 1, tzinfo=tz) + datetime.timedelta(seconds=next(seconds))

    monkeypatch.setattr(gpu, "datetime", types.SimpleNamespace(datetime=Clock, timezone=datetime.timezone))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Stub GPU")
    monkeypatch.setattr(gpu, "RESULTS", tmp_path)
    monkeypatch.setattr(gpu, "_COMMIT", "0123456789abcdef")
    case = {"dtype": "bfloat16", "N": 256, "M": 256, "passes": "forward", "peak_gb": 0.1, "ms": 1.0,
            "useful_tflops": 1.0}
    gpu._record({**case, "implementation": "triton"})
    gpu._record({**case, "implementation": "cuda"})

    lines = [json.loads(line) for line in (tmp_path / "word_region_gpu_Stub_GPU.jsonl").read_text().splitlines()]
    assert [line["commit"] for line in lines] == ["0123456789abcdef"] * 2
    (results,) = render.load_results(tmp_path)
    assert len(results["runs"]) == 1 and len(results["cases"]) == 2


def test_the_lines_of_one_session_name_the_clean_commit_it_started_on(benchmarks_checkout):
    """A session without $TGFR_COMMIT in a checkout whose results file it appends to is tracked (as
    word_region_gpu_*.jsonl is): its second line, written after the first changed that file and
    after a source file was edited mid-session, names the same clean commit as its first."""
    session = textwrap.dedent("""
        import torch
        torch.cuda.get_device_name = lambda *device: "Stub GPU"
        from benchmarks import test_word_region_gpu as gpu
        case = {"dtype": "bfloat16", "N": 256, "M": 256, "passes": "forward", "ms": 1.0}
        gpu._record({**case, "implementation": "triton"})
        with open("benchmarks/cases.py", "a") as source:
            source.write("# edited while the session runs\\n")
        gpu._record({**case, "implementation": "cuda"})
    """)
    environment = {name: value for name, value in os.environ.items() if name != "TGFR_COMMIT"}
    # The checkout's benchmarks package first, tgfr from the tree under test.
    environment["PYTHONPATH"] = os.pathsep.join([str(benchmarks_checkout), str(Path(gpu.__file__).parents[1])])
    subprocess.run([sys.executable, "-c", session], cwd=benchmarks_checkout, env=environment, check=True,
                   capture_output=True, timeout=120)

    head = git(benchmarks_checkout, "rev-parse", "--short=12", "HEAD").strip()
    lines = (benchmarks_checkout / "benchmarks" / "results" / CHECKOUT_RESULTS[1]).read_text().splitlines()[1:]
    assert [json.loads(line)["commit"] for line in lines] == [head, head]


def test_a_case_is_skipped_on_its_whole_predicted_cost_and_on_the_deadline():
    """The CUDA kernel's bfloat16 forward+backward measured on an H100 at N=M=1024 (2.84 s a step):
    at 8192 a step is 64 times that, and the case runs 4 of them (warm-up, 3 rounds), 727 s: over
    the case cap although one step (182 s) is under it."""
    step_8192 = 2.84 * 64
    assert 4 * step_8192 > 600 > step_8192
    assert "727 s" in gpu._skip_reason((1024, 2.84), 8192, 0.0, 600.0, float("inf"), 60.0)
    # 4096: 11 steps (warm-up, peak step, 10 rounds) of 45 s.
    assert gpu._skip_reason((1024, 2.84), 4096, 0.0, 600.0, float("inf"), 60.0) is None
    assert "TGFR_BENCH_MAX_CASE_S" in gpu._skip_reason((1024, 2.84), 4096, 0.0, 400.0, float("inf"), 60.0)
    assert "TGFR_BENCH_DEADLINE_S" in gpu._skip_reason((1024, 2.84), 4096, 100.0, 600.0, 550.0, 60.0)
    assert gpu._skip_reason((1024, 2.84), 4096, 0.0, 600.0, 550.0, 60.0) is None
    assert gpu._skip_reason(None, 256, 1e6, float("inf"), float("inf"), 60.0) is None  # the whole sweep on request


def test_a_first_case_counts_its_allowance_against_the_deadline():
    """With nothing to extrapolate from (a selection of one size, -k "bfloat16 and 1024"), a case that
    started a second before the deadline ran to its end, compilation and all."""
    assert gpu._skip_reason(None, 1024, 100.0, 120.0, 240.0, 60.0) is None
    assert gpu._skip_reason(None, 1024, 0.0, 1.0, 240.0, 60.0) is None  # the case cap needs a prediction
    reason = gpu._skip_reason(None, 1024, 239.0, 120.0, 240.0, 60.0)
    assert "TGFR_BENCH_FIRST_CASE_S" in reason and "TGFR_BENCH_DEADLINE_S=240" in reason


def test_cases_run_dtype_by_dtype_and_size_by_size_with_triton_before_cuda():
    """A run cut short by the deadline has measured Triton (the headline) at every size it reached,
    and bfloat16 (the issue's dtype) at every size before any other dtype."""
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         str(Path(gpu.__file__))], capture_output=True, text=True, cwd=Path(gpu.__file__).parents[1], timeout=120,
    ).stdout
    cases = [dict(zip(("dtype", "size", "implementation", "passes"), line.split("[")[1].rstrip("]").split("-")))
             for line in collected.splitlines() if "::test_word_region_gpu[" in line]
    assert len(cases) == len(gpu.DTYPES) * len(gpu.SIZES) * len(gpu.IMPLEMENTATIONS) * 2
    groups = [(case["dtype"], int(case["size"])) for case in cases]
    assert groups == sorted(groups, key=lambda group: (gpu.DTYPES.index(group[0]), group[1]))
    assert groups[0] == ("bfloat16", 256)
    for group in set(groups):
        order = [case["implementation"] for case, of in zip(cases, groups) if of == group]
        assert max(i for i, name in enumerate(order) if name.startswith("triton")) < order.index("cuda")


def test_each_triton_case_starts_with_empty_autotuner_caches(monkeypatch):
    """A config tuned by an earlier case (another N, M: the cache key has neither) is forgotten."""
    from triton.runtime.autotuner import Autotuner

    from tgfr.ops import word_region_triton

    autotuned = [word_region_triton._forward_kernel, word_region_triton._backward_kernel,
                 word_region_triton._word_gradient_kernel, word_region_triton._region_gradient_kernel]
    assert all(isinstance(kernel, Autotuner) for kernel in autotuned)
    for kernel in autotuned:
        monkeypatch.setitem(kernel.cache, ("tuned at another size",), kernel.configs[-1])
    gpu.reset_autotuners()
    assert all(kernel.cache == {} for kernel in autotuned)
