"""benchmarks/run_gpu.sh without a GPU: its stages replaced by stubs on PATH (nvidia-smi, python)
that write results files as the real stages do, run in a copy of the script's folder layout."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parent / "run_gpu.sh"

# The GPU check (before tests and bench) fails when $STUB_NO_GPU is set, build's import check and `profile`
# when $STUB_FAIL names their stage. `tune` appends a line to its --out
# file, then exits with $STUB_TUNE_EXIT; `bench` (pytest) appends
# a line to a word_region_gpu_*.jsonl file (and its arguments, one per line, to $STUB_ARGS if set),
# prints a case's line, creates the file $STUB_PRINTED if set, then sleeps $STUB_BENCH_SLEEP seconds;
# stopped by TERM, it prints which case it was in, as a stage reporting where it stopped does.
_PYTHON_STUB = """#!/bin/sh
case "$*" in
  *cuda.is_available*)
    [ -n "${STUB_NO_GPU:-}" ] && { echo "no GPU to run on"; exit 1; }
    exit 0;;
  *backends:*) [ "${STUB_FAIL:-}" != build ];;
  *profile_word_region_triton*) [ "${STUB_FAIL:-}" != profile ];;
  *tune_word_region_triton*)
    while [ $# -gt 0 ]; do [ "$1" = --out ] && echo '{"kernel": "forward"}' >> "$2"; shift; done
    exit "${STUB_TUNE_EXIT:-0}";;
  *pytest*)
    [ -n "${STUB_ARGS:-}" ] && printf '%s\n' "$@" > "$STUB_ARGS"
    echo '{"N": 256}' >> benchmarks/results/word_region_gpu_stub.jsonl
    trap 'echo "stopped in test_word_region_gpu[bfloat16-512-triton-forward]"; exit 143' TERM
    echo "test_word_region_gpu[bfloat16-256-triton-forward] PASSED"
    if [ -n "${STUB_PRINTED:-}" ]; then touch "$STUB_PRINTED"; fi
    sleep "${STUB_BENCH_SLEEP:-0}";;
esac
"""


@pytest.fixture
def layout(tmp_path: Path) -> dict:
    """A repository copy holding only run_gpu.sh, a stub bin folder and an $OUT folder."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    (tmp_path / "repo" / "benchmarks").mkdir(parents=True)
    shutil.copy(_SCRIPT, tmp_path / "repo" / "benchmarks" / "run_gpu.sh")
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    out.mkdir()
    for name, text in (("python", _PYTHON_STUB), ("nvidia-smi", "#!/bin/sh\necho 'NVIDIA Stub GPU'\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    environment = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OUT": str(out)}
    return dict(script=tmp_path / "repo" / "benchmarks" / "run_gpu.sh", out=out, environment=environment, bin=bin_dir)


def _stub(layout: dict, name: str, text: str) -> None:
    (layout["bin"] / name).write_text(text)
    (layout["bin"] / name).chmod(stat.S_IRWXU)


def _log(out: Path) -> str:
    (log,) = out.glob("gpu_run_*.log")
    return log.read_text()


def _returned(out: Path) -> set[str]:
    return {path.name for path in out.iterdir() if not path.name.startswith("gpu_run_")}


def test_a_failing_stage_fails_the_run_and_keeps_the_other_stages_results(layout):
    run = subprocess.run(["bash", str(layout["script"]), "tune", "bench"], capture_output=True, text=True,
                         env={**layout["environment"], "STUB_TUNE_EXIT": "3"}, timeout=60)
    assert run.returncode != 0, run.stdout + run.stderr
    assert _returned(layout["out"]) == {"word_region_triton_configs_NVIDIA_Stub_GPU.jsonl",
                                        "word_region_gpu_stub.jsonl"}


@pytest.mark.parametrize("stage", ["tests", "bench"])
def test_a_gpu_stage_without_a_gpu_fails_instead_of_skipping_everything(layout, stage):
    """Without CUDA every GPU test and benchmark is skipped and pytest exits 0: the run said done."""
    run = subprocess.run(["bash", str(layout["script"]), stage], capture_output=True, text=True,
                         env={**layout["environment"], "STUB_NO_GPU": "1"}, timeout=60)
    assert run.returncode != 0 and "no GPU to run on" in run.stdout, run.stdout + run.stderr
    assert _returned(layout["out"]) == set()  # pytest never ran
    assert subprocess.run(["bash", str(layout["script"]), stage], capture_output=True, text=True,
                          env=layout["environment"], timeout=60).returncode == 0


def test_a_run_stopped_during_a_stage_returns_what_was_written(layout, tmp_path):
    """Stopped (TERM to the process group, as a time limit does) while `bench` runs: the finished
    `tune` stage's file, the line `bench` wrote so far, and in the log every line `bench` printed,
    before the TERM and on it, are in $OUT."""
    printed = tmp_path / "printed"
    process = subprocess.Popen(["bash", str(layout["script"]), "tune", "bench"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**layout["environment"], "STUB_BENCH_SLEEP": "60", "STUB_PRINTED": str(printed)})
    deadline = time.monotonic() + 30
    while not printed.exists() and time.monotonic() < deadline:  # the stub's PASSED line is written
        time.sleep(0.05)
    assert printed.exists(), "the bench stub did not print its case within 30 s"
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    assert (layout["script"].parent / "results" / "word_region_gpu_stub.jsonl").exists()
    assert _returned(layout["out"]) == {"word_region_triton_configs_NVIDIA_Stub_GPU.jsonl",
                                        "word_region_gpu_stub.jsonl"}
    log = _log(layout["out"])
    assert "test_word_region_gpu[bfloat16-256-triton-forward] PASSED" in log
    assert "stopped in test_word_region_gpu[bfloat16-512-triton-forward]" in log
    assert log.rstrip().endswith("== stopped")


def test_the_log_keeps_a_stages_whole_output_and_the_console_its_last_lines(layout):
    """A failed build's compiler error and every line of a sanitizer report are in the log; the
    sanitizer's torch run goes without the caching allocator, which hides out-of-bounds accesses."""
    _stub(layout, "pip", "#!/bin/sh\necho 'src/kernel.c:3:1: error: expected declaration'\n"
                         "for i in 1 2 3 4 5 6 7 8 9 10; do echo \"note $i\"; done\nexit 1\n")
    _stub(layout, "compute-sanitizer", "#!/bin/sh\n"
          "echo \"========= Invalid __global__ read of size 2 bytes (caching: ${PYTORCH_NO_CUDA_MEMORY_CACHING:-on})\"\n"
          "for i in 1 2 3 4 5 6 7 8; do echo \"=========     Host Frame: frame_$i\"; done\n"
          "echo '========= ERROR SUMMARY: 1 error'\nexit 1\n")
    run = subprocess.run(["bash", str(layout["script"]), "build", "sanitizer"], capture_output=True, text=True,
                         env=layout["environment"], timeout=60)
    assert run.returncode != 0
    log = _log(layout["out"])
    assert "error: expected declaration" in log and "note 10" in log
    reads = [line for line in log.splitlines() if "Invalid __global__ read" in line]
    assert [line.rsplit("caching: ", 1)[1] for line in reads] == ["on)", "on)", "1)"]  # memcheck, racecheck, torch
    assert "error: expected declaration" not in run.stdout and "Invalid __global__ read" not in run.stdout
    assert "ERROR SUMMARY: 1 error" in run.stdout and "note 10" in run.stdout


def test_bench_selection_reaches_pytest_as_one_expression(layout, tmp_path):
    arguments = tmp_path / "arguments"
    for selection, expected in (("bfloat16 and 1024", ["-k", "bfloat16 and 1024"]), ("", [])):
        run = subprocess.run(["bash", str(layout["script"]), "bench"], capture_output=True, text=True, timeout=60,
                             env={**layout["environment"], "STUB_ARGS": str(arguments), "TGFR_BENCH_SELECT": selection})
        assert run.returncode == 0, run.stdout + run.stderr
        passed = arguments.read_text().splitlines()
        selected = passed[passed.index("-k"):passed.index("-k") + 2] if "-k" in passed else []
        assert selected == expected


def test_an_unset_commit_is_warned_about(layout):
    """The GPU machine's copy of the tree may carry a stale .git: the measured commit must be named."""
    environment = {key: value for key, value in layout["environment"].items() if key != "TGFR_COMMIT"}
    for commit, warned in ((None, True), ("0123456789ab", False)):
        run = subprocess.run(["bash", str(layout["script"]), "tune"], capture_output=True, text=True, timeout=60,
                             env={**environment, **({"TGFR_COMMIT": commit} if commit else {})})
        assert run.returncode == 0, run.stdout + run.stderr
        assert ("WARNING: TGFR_COMMIT is unset" in run.stderr) == warned
        # The newest log (names carry the start second), whose last run is this one: two runs in one
        # second share a log, in two seconds each has its own.
        newest = max(layout["out"].glob("gpu_run_*.log"))
        this_run = newest.read_text().rsplit("== device:", 1)[1]
        assert ("WARNING: TGFR_COMMIT is unset" in this_run) == warned


def test_the_tests_stage_runs_every_gpu_marked_test(layout, tmp_path):
    """The stage runs pytest -m gpu over the whole tests/ folder: a list of files missed a gpu test added to
    another file (tests/test_word_region_inputs.py's CUDA case)."""
    arguments = tmp_path / "arguments"
    run = subprocess.run(["bash", str(layout["script"]), "tests"], capture_output=True, text=True, timeout=60,
                         env={**layout["environment"], "STUB_ARGS": str(arguments)})
    assert run.returncode == 0, run.stdout + run.stderr
    passed = arguments.read_text().splitlines()
    assert [argument for argument in passed if argument.startswith("tests")] == ["tests/"]
    assert any(passed[i:i + 2] == ["-m", "gpu"] for i in range(len(passed)))
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p",
                                "no:cacheprovider", "tests/"], capture_output=True, text=True, cwd=_SCRIPT.parents[1],
                               timeout=300)
    files = {line.split("::")[0] for line in collected.stdout.splitlines() if "::" in line}
    assert {"tests/test_word_region_gpu.py", "tests/test_word_region_inputs.py"} <= files, collected.stdout[-2000:]


def test_the_sanitizer_stage_builds_the_kernel_test_it_needs(layout):
    """A fresh machine has no build/ (it is not part of a copied tree): memcheck and racecheck ran on a
    missing binary unless the kernel stage had run in the same call."""
    _stub(layout, "cmake", "#!/bin/sh\ncase \"$*\" in *--build*)\n  mkdir -p build/cmake\n"
          "  printf '#!/bin/sh\\necho kernel test passed\\n' > build/cmake/word_region_kernel_test\n"
          "  chmod +x build/cmake/word_region_kernel_test;;\nesac\n")
    # Fails, as the real tool does, when the program it should run is missing.
    _stub(layout, "compute-sanitizer", "#!/bin/sh\nfor argument; do case \"$argument\" in\n"
          "  *word_region_kernel_test) [ -x \"$argument\" ] || exit 1;;\nesac; done\n"
          "echo \"sanitized $*\" >> sanitized.log\n")
    run = subprocess.run(["bash", str(layout["script"]), "sanitizer"], capture_output=True, text=True,
                         env=layout["environment"], timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    sanitized = (layout["script"].parents[1] / "sanitized.log").read_text().splitlines()
    tools = [line.split("--tool ")[1].split()[0] for line in sanitized if line.startswith("sanitized")]
    assert tools == ["memcheck", "racecheck", "memcheck"]  # the kernel test twice, then the torch run
    assert "kernel test passed" in _log(layout["out"])


# pip succeeds; cmake --build makes a kernel test binary that fails when $STUB_FAIL is kernel; compute-sanitizer
# fails when $STUB_FAIL is sanitizer, and then only on the torch run (python), the sanitizer's one run of the ops
# as torch calls them.
_STAGE_STUBS = {
    "pip": "#!/bin/sh\nexit 0\n",
    "cmake": "#!/bin/sh\ncase \"$*\" in *--build*)\n  mkdir -p build/cmake\n"
             "  printf '#!/bin/sh\\n[ \"${STUB_FAIL:-}\" != kernel ]\\n' > build/cmake/word_region_kernel_test\n"
             "  chmod +x build/cmake/word_region_kernel_test;;\nesac\n",
    "compute-sanitizer": "#!/bin/sh\ncase \"$*\" in *\" python -c \"*) [ \"${STUB_FAIL:-}\" != sanitizer ];; esac\n",
}


@pytest.mark.parametrize("stage", ["build", "kernel", "sanitizer", "profile"])
def test_a_stage_whose_last_step_fails_is_named_among_the_failed_stages(layout, stage):
    """Build's import of the installed package, the kernel test binary, the sanitizer's torch run or the
    profile script failing alone fails its stage, named on the console; the same stubs succeeding pass it,
    so the failure is that step's."""
    for name, text in _STAGE_STUBS.items():
        _stub(layout, name, text)
    for failing in (stage, None):
        environment = {**layout["environment"], **({"STUB_FAIL": failing} if failing else {})}
        run = subprocess.run(["bash", str(layout["script"]), stage], capture_output=True, text=True,
                             env=environment, timeout=60)
        output = run.stdout + run.stderr
        assert (run.returncode != 0) == (failing is not None), output
        assert (f"== failed stages: {stage}\n" in run.stdout) == (failing is not None), output
