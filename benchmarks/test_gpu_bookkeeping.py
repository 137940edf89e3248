"""What benchmarks/test_word_region_gpu.py records around its timings, checked without a GPU: the
memory of a step that ran out of it, and the provenance of its JSON lines."""

import datetime
import json
import types
import weakref

import torch

from benchmarks import render
from benchmarks import test_word_region_gpu as gpu


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


def test_the_lines_of_one_session_are_one_run_with_the_given_commit(tmp_path, monkeypatch):
    """Two cases recorded a second apart by one pytest session: one run in the rendered results
    (whose run list is keyed by commit and date), under $TGFR_COMMIT."""
    seconds = iter(range(100))

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 1, 1, tzinfo=tz) + datetime.timedelta(seconds=next(seconds))

    monkeypatch.setattr(gpu, "datetime", types.SimpleNamespace(datetime=Clock, timezone=datetime.timezone))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Stub GPU")
    monkeypatch.setattr(gpu, "RESULTS", tmp_path)
    monkeypatch.setenv("TGFR_COMMIT", "0123456789abcdef")
    case = {"dtype": "bfloat16", "N": 256, "M": 256, "passes": "forward", "peak_gb": 0.1, "ms": 1.0,
            "useful_tflops": 1.0}
    gpu._record({**case, "implementation": "triton"})
    gpu._record({**case, "implementation": "cuda"})

    lines = [json.loads(line) for line in (tmp_path / "word_region_gpu_Stub_GPU.jsonl").read_text().splitlines()]
    assert [line["commit"] for line in lines] == ["0123456789abcdef"] * 2
    (results,) = render.load_results(tmp_path)
    assert len(results["runs"]) == 1 and len(results["cases"]) == 2
