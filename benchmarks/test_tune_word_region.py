"""benchmarks/tune_word_region_triton.py's main() on this machine (no GPU): the kernels, the compile pool,
CUDA's events and the device of its tensors stubbed, its check of each config against the float64
reference and what it writes and returns for a config that fails to compile, gives wrong values or is
left untimed by --seconds."""

import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch

from benchmarks import tune_word_region_triton as tune
from tgfr import reference

SCORE_TOLERANCE, GRAD_TOLERANCE = tune.TOLERANCES["bfloat16"]
# Each stub config's launch: the element of largest magnitude of each output (of smallest with at="smallest";
# only the outputs numbered in `outputs`, all by default) moved away from zero by `offset` times the output's
# largest magnitude; None for all zeros. A kernel test allows an element tol * (|want| + max|want|), so twice
# the tolerance at the largest element: "over" is wrong for a forward, right for a backward.
CONFIGS = {
    "exact": dict(offset=0.0),
    "within": dict(offset=0.5 * SCORE_TOLERANCE),
    "over": dict(offset=SCORE_TOLERANCE + GRAD_TOLERANCE),
    "zeros": dict(offset=None),
    "nan": dict(offset=float("nan")),
    "uncompiled": dict(offset=0.0, compiles=False),
}


def _tuning_inputs(size: int, dtype: torch.dtype):
    """tune.tuning_inputs on the CPU."""
    generator = torch.Generator().manual_seed(0)
    words = torch.randn(size, tune.NUM_WORDS, tune.DIM, generator=generator).to(dtype)
    regions = torch.randn(size, tune.NUM_REGIONS, tune.DIM, generator=generator).to(dtype)
    lengths = torch.full((size,), tune.NUM_WORDS)
    lengths[::3] = 9
    return words, lengths, regions


def _moved(output: torch.Tensor, config: dict) -> torch.Tensor:
    """`output` with the element CONFIGS' comment says moved by the config's offset."""
    if config["offset"] is None:
        return torch.zeros_like(output)
    flat = output.flatten().clone()
    magnitudes = flat.abs()
    index = magnitudes.argmin() if config.get("at") == "smallest" else magnitudes.argmax()
    flat[index] += config["offset"] * magnitudes.max() * (1.0 if flat[index] >= 0 else -1.0)
    return flat.view_as(output)


def _launch_config(kind, config, words, lengths, regions, grad_scores):
    """A config's scores (forward) or gradients of words and regions (backward) computed in float32 from the
    inputs in their dtype, as the float64 reference computes them, then moved as CONFIGS' comment says."""
    words, regions = words.detach().float().requires_grad_(), regions.detach().float().requires_grad_()
    scores = reference.word_region_scores(words, lengths, regions, gamma1=tune.GAMMA1, gamma2=tune.GAMMA2)
    if kind == "forward":
        outputs = (scores.detach(),)
    else:
        scores.backward(grad_scores.float())
        outputs = (words.grad, regions.grad)
    outputs = tuple(_moved(output, config) if number in config.get("outputs", (0, 1)) else output
                    for number, output in enumerate(outputs))
    if "padded" in config:  # a value written into every padded word's gradient
        padded = torch.arange(words.shape[1]) >= lengths[:, None]
        outputs[0][padded] = config["padded"] * outputs[0].abs().max()
    return outputs


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
def run_tune(monkeypatch, tmp_path):
    """main() with the stubs; call it once per test as run_tune(stubs, configs, kinds, seconds), stubs a dict
    like CONFIGS: main()'s exit status and its JSON line of each stub, by name (a line carries its "stub")."""
    real_randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *size, device=None, **options: real_randn(*size, **options))
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(tune, "multiprocessing", types.SimpleNamespace(
        get_context=lambda method: types.SimpleNamespace(Pool=_Pool), cpu_count=lambda: 2))
    monkeypatch.setattr(tune, "measurement_environment", lambda size, dtype: {"device": "Stub GPU", "N": size})
    monkeypatch.setattr(tune, "tuning_inputs", _tuning_inputs)
    monkeypatch.setattr(tune, "_compile",
                        lambda job: None if job[1].get("compiles", True) else "CompilationError: stub")
    monkeypatch.setattr(tune, "launch_config", _launch_config)
    monkeypatch.setattr(tune, "CHECK_SIZE", 12)  # a check at 48 takes seconds on a CPU
    out = tmp_path / "configs.jsonl"

    def run(stubs: dict[str, dict], configs: str = "shipped", kinds: str = "forward",
            seconds: float = 300.0) -> tuple[int, dict[str, dict]]:
        monkeypatch.setattr(tune, "candidate_configs", lambda kind, which: [
            {"stub": name, **config, "num_warps": 4, "num_stages": 1} for name, config in stubs.items()])
        try:
            tune.main(["--kinds", kinds, "--size", "6", "--dtype", "bfloat16", "--configs", configs,
                       "--seconds", str(seconds), "--out", str(out)])
            status = 0
        except SystemExit as exit_:
            status = exit_.code
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["stub"] for line in lines] == list(stubs)  # one line per config, in order
        return status, {line["stub"]: line for line in lines}

    return run


@pytest.mark.parametrize("configs, status", [("shipped", 1), ("grid", 0)])
def test_a_config_that_fails_to_compile_or_is_wrong_is_marked_untimed_and_fails_the_shipped_check(
        run_tune, configs, status):
    """A shipped config that failed to compile, or gave values over the tolerance (or NaN), passed the tune
    stage of run_gpu.sh, the wrong one timed as if it were a valid choice; a grid only reports them."""
    exit_status, lines = run_tune(CONFIGS, configs)
    assert exit_status == status
    assert lines["uncompiled"]["error"] == "CompilationError: stub" and "relative_error" not in lines["uncompiled"]
    for name in ("exact", "within"):
        assert lines[name]["relative_error"] <= SCORE_TOLERANCE and "wrong" not in lines[name]
        assert lines[name]["ms"] == 2.0 and lines[name]["useful_tflops"] > 0 and "timed" not in lines[name]
    assert lines["over"]["relative_error"] > SCORE_TOLERANCE and lines["zeros"]["relative_error"] == pytest.approx(1.0)
    for name in ("over", "zeros", "nan", "uncompiled"):
        assert "ms" not in lines[name] and "useful_tflops" not in lines[name], lines[name]
    assert all(lines[name].get("wrong") is True for name in ("over", "zeros", "nan"))


@pytest.mark.parametrize("failing, status", [("uncompiled", 1), ("over", 1), (None, 0)])
def test_the_shipped_check_fails_on_a_compile_error_alone_or_wrong_values_alone(run_tune, failing, status):
    """Either kind of failure, with no other in the run, makes the exit status 1; right configs leave it 0."""
    stubs = {name: CONFIGS[name] for name in ("exact", "within", failing) if name}
    assert run_tune(stubs)[0] == status


@pytest.mark.parametrize("stubs, status", [(CONFIGS, 1), ({name: CONFIGS[name] for name in ("exact", "within")}, 0)],
                         ids=["failures past the limit", "right configs"])
def test_a_config_past_the_time_limit_is_checked_not_timed(run_tune, monkeypatch, stubs, status):
    """--seconds stopped the loop over the configs: a shipped config past it that did not compile (or was
    wrong) was never written, and the tune stage passed. Only the timing stops: each launch takes a second
    of a fake clock, the first config's check and 3 timed launches run past --seconds 1.5, so each config
    after it is checked, not timed."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(tune, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    stub_launch = tune.launch_config

    def launch_taking_a_second(*arguments):
        clock.now += 1.0
        return stub_launch(*arguments)

    monkeypatch.setattr(tune, "launch_config", launch_taking_a_second)
    exit_status, lines = run_tune(stubs, seconds=1.5)
    assert exit_status == status
    assert lines["exact"]["ms"] == 2.0 and "timed" not in lines["exact"]
    assert lines["within"]["timed"] is False and "ms" not in lines["within"] and "wrong" not in lines["within"]
    if status:
        assert all(lines[name].get("wrong") is True and "timed" not in lines[name] for name in ("over", "zeros", "nan"))
        assert lines["uncompiled"]["error"] == "CompilationError: stub"


@pytest.mark.parametrize("kind", ["backward", "deterministic_backward"])
def test_a_backward_is_held_to_the_gradients_tolerance_in_both_gradients(run_tune, kind):
    """A backward's values are checked in the words' and the regions' gradients, each to the gradients'
    tolerance: "over" is within it (and not within the scores')."""
    stubs = {"exact": CONFIGS["exact"], "over": CONFIGS["over"],
             "words wrong": dict(offset=3 * GRAD_TOLERANCE, outputs=(0,)),
             "regions wrong": dict(offset=3 * GRAD_TOLERANCE, outputs=(1,))}
    status, lines = run_tune(stubs, kinds=kind)
    assert status == 1
    assert all(lines[name]["kernel"] == kind for name in stubs)
    for name in ("exact", "over"):
        assert "wrong" not in lines[name] and lines[name]["ms"] == 2.0, lines[name]
    assert lines["over"]["relative_error"] > SCORE_TOLERANCE
    for name in ("words wrong", "regions wrong"):
        assert lines[name]["wrong"] is True and "ms" not in lines[name], lines[name]


@pytest.mark.parametrize("kind", ["forward", "backward"])
def test_the_tolerances_and_their_rule_are_those_the_kernels_are_tested_to(run_tune, monkeypatch, kind):
    """tests/test_word_region_gpu.py allows an element tol * (|want| + max|want|) (assert_close with rtol=tol,
    atol=tol * max|want|): up to twice tol at the largest element, where the tune's max|error| / max|want|
    over tol marked wrong (and the tune stage failed) a config the kernel tests pass. Each stub's verdict is
    that assert_close's on the values it gave the check; "at smallest" holds the rule to each element."""
    spec = importlib.util.spec_from_file_location(
        "gpu_kernel_tests", Path(__file__).resolve().parents[1] / "tests" / "test_word_region_gpu.py")
    kernel_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel_tests)
    assert tune.TOLERANCES == {str(dtype).removeprefix("torch."): tolerances
                               for dtype, tolerances in kernel_tests.TOLERANCES.items()}
    tolerance = kernel_tests.TOLERANCES[torch.bfloat16][0 if kind == "forward" else 1]
    stubs = {"1.9 at largest": dict(offset=1.9 * tolerance), "2.1 at largest": dict(offset=2.1 * tolerance),
             "1.5 at smallest": dict(offset=1.5 * tolerance, at="smallest")}
    checked = {}
    stub_launch = tune.launch_config

    def recording_launch(launched_kind, config, words, lengths, regions, grad_scores):
        outputs = stub_launch(launched_kind, config, words, lengths, regions, grad_scores)
        if words.shape[0] == tune.CHECK_SIZE:
            checked[config["stub"]] = (words, lengths, regions, grad_scores, outputs)
        return outputs

    monkeypatch.setattr(tune, "launch_config", recording_launch)
    _, lines = run_tune(stubs, kinds=kind)
    assert "wrong" not in lines["1.9 at largest"] and lines["2.1 at largest"]["wrong"] is True
    for name, (words, lengths, regions, grad_scores, outputs) in checked.items():
        words64, regions64 = words.double().requires_grad_(), regions.double().requires_grad_()
        scores = reference.word_region_scores(words64, lengths, regions64, gamma1=tune.GAMMA1, gamma2=tune.GAMMA2)
        if kind != "forward":
            scores.backward(grad_scores.double())
        wants = (scores,) if kind == "forward" else (words64.grad, regions64.grad)
        try:
            for got, want in zip(outputs, wants, strict=True):
                torch.testing.assert_close(got.double(), want.detach(), rtol=tolerance,
                                           atol=tolerance * want.abs().max().item())
            kernel_tests_pass = True
        except AssertionError:
            kernel_tests_pass = False
        assert lines[name].get("wrong", False) is not kernel_tests_pass, (name, lines[name])
    assert set(checked) == set(stubs)


@pytest.mark.parametrize("kind", ["backward", "deterministic_backward"])
def test_a_backward_that_writes_into_a_padded_words_gradient_is_wrong(run_tune, kind):
    """The kernel tests hold a padded word's gradient at exactly 0; within the tolerance, a value there passed."""
    stubs = {"exact": CONFIGS["exact"], "padded written": dict(offset=0.0, padded=0.5 * GRAD_TOLERANCE)}
    status, lines = run_tune(stubs, kinds=kind)
    assert status == 1
    assert "wrong" not in lines["exact"] and lines["exact"]["ms"] == 2.0
    assert lines["padded written"]["wrong"] is True and "ms" not in lines["padded written"]
