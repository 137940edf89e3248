"""benchmarks/tune_word_region_triton.py's main() on this machine (no GPU): the kernels, the compile pool,
CUDA's events and the device of its tensors stubbed, its check of each config against the float64
reference and what it writes and returns for a config that fails to compile or gives wrong values."""

import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch

from benchmarks import tune_word_region_triton as tune
from tgfr import reference

SCORE_TOLERANCE, GRAD_TOLERANCE = tune.TOLERANCES["bfloat16"]
# Each stub config's launch: scores off by `offset` times their largest magnitude, None for all zeros.
# "over" is within the gradients' tolerance: a forward is held to the scores' one.
CONFIGS = {
    "exact": dict(CAPTIONS=1, offset=0.0),
    "within": dict(CAPTIONS=2, offset=0.5 * SCORE_TOLERANCE),
    "over": dict(CAPTIONS=4, offset=(SCORE_TOLERANCE + GRAD_TOLERANCE) / 2),
    "zeros": dict(CAPTIONS=8, offset=None),
    "nan": dict(CAPTIONS=16, offset=float("nan")),
    "uncompiled": dict(CAPTIONS=32, offset=0.0),
}


def _tuning_inputs(size: int, dtype: torch.dtype):
    """tune.tuning_inputs on the CPU."""
    generator = torch.Generator().manual_seed(0)
    words = torch.randn(size, tune.NUM_WORDS, tune.DIM, generator=generator).to(dtype)
    regions = torch.randn(size, tune.NUM_REGIONS, tune.DIM, generator=generator).to(dtype)
    lengths = torch.full((size,), tune.NUM_WORDS)
    lengths[::3] = 9
    return words, lengths, regions


def _launch_config(kind, config, words, lengths, regions, grad_scores):
    """The forward of a config that computes the scores in float32 (from the inputs in their dtype, as the
    float64 reference does) and adds its offset to them."""
    scores = reference.word_region_scores(words.float(), lengths, regions.float(), gamma1=tune.GAMMA1,
                                          gamma2=tune.GAMMA2)
    if config["offset"] is None:
        return (torch.zeros_like(scores),)
    return (scores + config["offset"] * scores.abs().max(),)


class _Event:
    def __init__(self, enable_timing: bool):
        pass

    def record(self):
        pass

    def elapsed_time(self, other) -> float:
        return 2.0


class _Pool:
    """multiprocessing's Pool, in this process."""

    def __init__(self, processes: int):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        return False

    def map(self, function, jobs):
        return [function(job) for job in jobs]


@pytest.fixture
def stubbed_tune(monkeypatch):
    real_randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *size, device=None, **options: real_randn(*size, **options))
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(tune, "multiprocessing", types.SimpleNamespace(
        get_context=lambda method: types.SimpleNamespace(Pool=_Pool), cpu_count=lambda: 2))
    monkeypatch.setattr(tune, "measurement_environment", lambda size, dtype: {"device": "Stub GPU", "N": size})
    monkeypatch.setattr(tune, "tuning_inputs", _tuning_inputs)
    monkeypatch.setattr(tune, "candidate_configs", lambda kind, which: [
        {**config, "num_warps": 4, "num_stages": 1} for config in CONFIGS.values()])
    monkeypatch.setattr(tune, "_compile", lambda job: "CompilationError: stub" if job[1]["CAPTIONS"] == 32 else None)
    monkeypatch.setattr(tune, "launch_config", _launch_config)
    monkeypatch.setattr(tune, "CHECK_SIZE", 12)  # a check at 48 takes seconds on a CPU


def _tune_lines(out: Path, configs: str) -> tuple[int, dict[str, dict]]:
    """main()'s exit status and its JSON line of each of CONFIGS, by name."""
    try:
        tune.main(["--kinds", "forward", "--size", "6", "--dtype", "bfloat16", "--configs", configs, "--out", str(out)])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    names = {config["CAPTIONS"]: name for name, config in CONFIGS.items()}
    return status, {names[line["CAPTIONS"]]: line for line in lines}


@pytest.mark.parametrize("configs, status", [("shipped", 1), ("grid", 0)])
def test_a_config_that_fails_to_compile_or_is_wrong_is_marked_untimed_and_fails_the_shipped_check(
        tmp_path, stubbed_tune, configs, status):
    """A shipped config that failed to compile, or gave values over the tolerance (or NaN), passed the tune
    stage of run_gpu.sh, the wrong one timed as if it were a valid choice; a grid only reports them."""
    exit_status, lines = _tune_lines(tmp_path / "configs.jsonl", configs)
    assert exit_status == status
    assert lines["uncompiled"]["error"] == "CompilationError: stub" and "relative_error" not in lines["uncompiled"]
    for name in ("exact", "within"):
        assert lines[name]["relative_error"] <= SCORE_TOLERANCE and "wrong" not in lines[name]
        assert lines[name]["ms"] == 2.0 and lines[name]["useful_tflops"] > 0
    assert lines["over"]["relative_error"] > SCORE_TOLERANCE and lines["zeros"]["relative_error"] == pytest.approx(1.0)
    for name in ("over", "zeros", "nan", "uncompiled"):
        assert "ms" not in lines[name] and "useful_tflops" not in lines[name], lines[name]
    assert all(lines[name].get("wrong") is True for name in ("over", "zeros", "nan"))


def test_the_tolerances_are_those_the_kernels_are_tested_to():
    spec = importlib.util.spec_from_file_location(
        "gpu_kernel_tests", Path(__file__).resolve().parents[1] / "tests" / "test_word_region_gpu.py")
    kernel_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel_tests)
    assert tune.TOLERANCES == {str(dtype).removeprefix("torch."): tolerances
                               for dtype, tolerances in kernel_tests.TOLERANCES.items()}
