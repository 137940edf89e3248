"""GPU word-region similarity: cuda and triton kernels (and Triton's deterministic backward) vs the
PyTorch reference and torch.compile(reference), `tgfr` shape (T=22, R=196, D=256), full-length
captions.

Each case reports (in pytest-benchmark's extra_info and in a JSON file under
benchmarks/results/) the mean time of 10 rounds (3 from N=M=8192, 1 from 16384) after one or two
untimed steps (compilation, autotuning from a fresh autotuner cache), useful TFLOP/s with SPEC
section 2's accounting (forward 4*N*M*T*R*D, forward+backward 12*N*M*T*R*D) and the peak GPU
memory of one step (torch.cuda.max_memory_allocated, the inputs and their gradients included).
Cases run dtype by dtype (bfloat16 first), size by size, Triton before CUDA before the references,
so that a run cut short has measured the headline (Triton, bfloat16) at every size it reached.
Sizes sweep N=M from 256 up to TGFR_BENCH_MAX_SIZE (default 16384) for the kernels; the reference
stops at the first size that runs out of memory (recorded as such). A case is skipped, with the
reason, when its predicted cost (its steps times the step time extrapolated by N*M from the same
implementation's previous size) is over TGFR_BENCH_MAX_CASE_S (default 120) seconds, or when it
would not finish within TGFR_BENCH_DEADLINE_S (default 420) seconds of the session's start; a case
with no previous size to extrapolate from (its first size, compilation and autotuning included) is
taken to cost TGFR_BENCH_FIRST_CASE_S (default 60) seconds for that deadline. Set the first two to
inf for the whole sweep. Run with benchmarks/run_gpu.sh.
"""

import datetime
import gc
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from benchmarks import recording
from benchmarks.word_region_steps import DIM, NUM_REGIONS, NUM_WORDS, shape, useful_flops
from tgfr import reference

# tests/conftest.py's gpu skip does not reach benchmarks/, so the skip is explicit here.
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MAX_SIZE = int(os.environ.get("TGFR_BENCH_MAX_SIZE", "16384"))
SIZES = [size for size in (256, 1024, 4096, 8192, 16384, 32768) if size <= MAX_SIZE]
REFERENCE_MAX_SIZE = 1024  # the reference's N*M*T*R*D tensors pass 80 GB beyond this
# triton_deterministic: the Triton op under torch.use_deterministic_algorithms(True), whose backward
# runs two kernels without atomics (forward+backward only: the forward is the same).
IMPLEMENTATIONS = ["triton", "triton_deterministic", "cuda", "reference", "compiled_reference"]
DTYPES = ["bfloat16", "float16", "float32"]
RESULTS = Path(__file__).resolve().parent / "results"
_OUT_OF_MEMORY: set = set()  # (implementation, dtype, passes) that ran out at a smaller size
# One GPU call of the benchmarks' device tool lasts at most 600 s, and run_gpu.sh's profile stage
# follows the bench stage: a case's whole cost (not one step: the CUDA kernel's bfloat16 forward and
# backward at N=M=8192 is 3 minutes a step, 4 steps) and the stage as a whole are capped.
MAX_CASE_SECONDS = float(os.environ.get("TGFR_BENCH_MAX_CASE_S", "120"))
DEADLINE_SECONDS = float(os.environ.get("TGFR_BENCH_DEADLINE_S", "420"))
FIRST_CASE_SECONDS = float(os.environ.get("TGFR_BENCH_FIRST_CASE_S", "60"))
_SESSION_START = time.monotonic()
_LAST_STEP: dict = {}  # (implementation, dtype, passes) -> (size, seconds) of its last timed size
# Every line of one pytest session carries its start and the commit of the tree it imported: the
# renderer counts a (commit, date) as one run, and a tracked file edited mid-session is not measured.
_STARTED = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
_COMMIT = recording.commit()


def _environment() -> dict:
    return {
        "device": torch.cuda.get_device_name(),
        "commit": _COMMIT,
        "date": _STARTED,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": shlex.join(["python", "-m", "pytest", *sys.argv[1:]]),
    }


def _record(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"word_region_gpu_{torch.cuda.get_device_name().replace(' ', '_')}.jsonl"
    with path.open("a") as file:
        file.write(json.dumps({**_environment(), **result}) + "\n")


def _timing(size: int, passes: str, seconds: float) -> dict:
    """What a case at N=M=size records of its mean step time `seconds`: ms, and useful TFLOP/s with the CPU
    benchmarks' count of SPEC section 2's work (word_region_steps.useful_flops)."""
    return dict(ms=seconds * 1e3, useful_tflops=useful_flops(size, passes) / seconds / 1e12)


def _ran_out_of_memory(run: Callable[[], None]) -> bool:
    """Calls `run`; True if it ran out of GPU memory, with the failed step's tensors freed by the
    time it returns. They live as long as the error's traceback: skipping from inside the handler
    would keep them past the test (pytest's record of the skip holds that traceback in a reference
    cycle), and the next cases' steps and peaks would run and be read on top of them."""
    try:
        run()
        return False
    except torch.OutOfMemoryError:
        pass
    gc.collect()  # frames that keep the error (`except ... as error: raise`) form cycles with it
    torch.cuda.empty_cache()
    return True


def _largest_tuned_problem() -> int:
    from tgfr.ops.word_region_triton import _TUNED_PAIRS

    return _TUNED_PAIRS[1]


def reset_autotuners() -> None:
    """Empties the autotuner caches of tgfr's Triton word-region kernels. They are keyed on the
    shape without N and M, so a case would otherwise keep the config tuned at an earlier case's
    size (or, past the tuned range, none), and its figure would depend on which cases ran before."""
    from triton.runtime.autotuner import Autotuner

    from tgfr.ops import word_region_triton

    for kernel in vars(word_region_triton).values():
        if isinstance(kernel, Autotuner):
            kernel.cache.clear()


def _rounds(size: int) -> int:
    return 1 if size >= 16384 else 3 if size >= 8192 else 10


def _steps(size: int) -> int:
    """Steps a case at N=M=size runs: warm-up, the peak-memory step inside the tuned range, rounds."""
    return 1 + (size * size <= _largest_tuned_problem()) + _rounds(size)


def _skip_reason(last_step: tuple[int, float] | None, size: int, elapsed: float,
                 max_case_seconds: float, deadline_seconds: float, first_case_seconds: float) -> str | None:
    """Why a case at N=M=size is not run, or None. `last_step` is (size, seconds of a step) of the
    same implementation, dtype and passes at its previous size (None: nothing to extrapolate from,
    and the case is taken to cost first_case_seconds against the deadline); `elapsed` the seconds
    since the session started."""
    if elapsed >= deadline_seconds:
        return f"past the deadline (TGFR_BENCH_DEADLINE_S={deadline_seconds:g})"
    if last_step is None:
        if elapsed + first_case_seconds > deadline_seconds:
            return (f"a first case is taken to cost {first_case_seconds:g} s (TGFR_BENCH_FIRST_CASE_S), past "
                    f"the deadline (TGFR_BENCH_DEADLINE_S={deadline_seconds:g}, {elapsed:.0f} s elapsed)")
        return None
    last_size, last_seconds = last_step
    predicted = last_seconds * (size / last_size) ** 2 * _steps(size)
    if predicted > max_case_seconds:
        return f"the case would take about {predicted:.0f} s (> TGFR_BENCH_MAX_CASE_S={max_case_seconds:g})"
    if elapsed + predicted > deadline_seconds:
        return (f"the case would take about {predicted:.0f} s, past the deadline "
                f"(TGFR_BENCH_DEADLINE_S={deadline_seconds:g}, {elapsed:.0f} s elapsed)")
    return None


def _step(implementation: str, passes: str, words, lengths, regions):
    import tgfr.ops

    if implementation in ("cuda", "triton", "triton_deterministic"):
        def scores_fn(w, v):
            return tgfr.ops.word_region_scores(w, lengths, v, backend=implementation.removesuffix("_deterministic"))
    elif implementation == "reference":
        def scores_fn(w, v):
            return reference.word_region_scores(w, lengths, v)
    else:
        # Every case's lambda shares one code object, so dynamo's compilations of all cases would
        # count against one recompile limit, past which it silently runs the reference eagerly.
        torch._dynamo.reset()
        scores_fn = torch.compile(lambda w, v: reference.word_region_scores(w, lengths, v))

    deterministic = implementation.endswith("_deterministic")

    def step():
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            scores = scores_fn(words, regions)
            if passes == "forward_backward":
                scores.sum().backward()
                # Dropped as the CPU steps and a training step's zero_grad(set_to_none=True) drop them: kept,
                # the next step's backward would add into them, timed, and hold them under its peak memory.
                words.grad = regions.grad = None
            torch.cuda.synchronize()
        finally:
            torch.use_deterministic_algorithms(previous)

    return step


# The bottom decorator's parameter varies slowest: dtype, then size, then implementation.
@pytest.mark.parametrize("passes", ["forward", "forward_backward"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_word_region_gpu(benchmark, implementation, dtype, size, passes):
    import tgfr.ops

    backend = implementation.removesuffix("_deterministic")
    if backend in ("cuda", "triton") and backend not in tgfr.ops.available_backends():
        pytest.skip(f"backend {backend!r} not available")
    if implementation == "triton_deterministic" and passes == "forward":
        pytest.skip("the deterministic switch changes the backward only")
    if "reference" in implementation and size > REFERENCE_MAX_SIZE:
        pytest.skip("the reference's pairwise tensors do not fit")
    key = (implementation, dtype, passes)
    if key in _OUT_OF_MEMORY:
        pytest.skip("ran out of memory at a smaller size")
    reason = _skip_reason(_LAST_STEP.get(key), size, time.monotonic() - _SESSION_START,
                          MAX_CASE_SECONDS, DEADLINE_SECONDS, FIRST_CASE_SECONDS)
    if reason:
        pytest.skip(reason)
    # A case skipped or failed before leaves its frame (inputs, gradients) in a reference cycle with
    # pytest's record of it: collected here, so this case's peak does not count them.
    gc.collect()
    torch.cuda.empty_cache()
    if backend == "triton":
        reset_autotuners()  # tuned as in a fresh process
    generator = torch.Generator(device="cuda").manual_seed(0)
    words = torch.randn(size, NUM_WORDS, DIM, device="cuda", generator=generator).to(getattr(torch, dtype))
    regions = torch.randn(size, NUM_REGIONS, DIM, device="cuda", generator=generator).to(getattr(torch, dtype))
    lengths = torch.full((size,), NUM_WORDS, device="cuda")
    backward = passes == "forward_backward"
    words.requires_grad_(backward)
    regions.requires_grad_(backward)
    step = _step(implementation, passes, words, lengths, regions)
    result = {"implementation": implementation, "dtype": dtype, **shape(size), "passes": passes}

    def measure():
        torch.cuda.reset_peak_memory_stats()
        step()  # warm-up: compilation and autotuning
        # Autotuning runs allocate, so the peak is read on a second step unless the size is past the
        # Triton kernels' tuned range (where one step of minutes would be spent again).
        if size * size <= _largest_tuned_problem():
            torch.cuda.reset_peak_memory_stats()
            step()
        result["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
        benchmark.pedantic(step, rounds=_rounds(size), iterations=1, warmup_rounds=0)

    if _ran_out_of_memory(measure):
        _OUT_OF_MEMORY.add(key)
        _record({**result, "out_of_memory": True})
        pytest.skip(f"{implementation} ran out of memory at N=M={size}")
    if benchmark.disabled:  # --benchmark-disable: the step ran, as a check; nothing was timed or is recorded
        return
    seconds = benchmark.stats.stats.mean
    _LAST_STEP[key] = (size, seconds)
    result.update(_timing(size, passes, seconds))
    benchmark.extra_info.update(result)
    _record(result)
