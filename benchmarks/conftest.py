"""Shared settings of the benchmark suite, and the results-file writer.

Quick mode (the default, what CI runs) uses small shapes and one round so the suite never rots;
full mode (TGFR_BENCH_FULL=1) runs the shapes the issues name, with more rounds.

`--tgfr-results PATH` merges every benchmark case of the run (pytest-benchmark's statistics and
extra_info, from any benchmark file) and every record made through the `results_record` fixture
into the JSON file PATH (benchmarks/recording.py); `--tgfr-results auto` picks
benchmarks/results/<machine kind>.json. A PATH that is not a results file this machine's runs may
merge into (another machine kind's), or that cannot be written (a folder, a path under a file), is
refused before anything runs; one that fails to be written when the run ends has the run's cases
saved in a results file of their own in the temporary folder, named on the terminal. Cases of
tests that failed are left out (their figures may time a wrong result, and merged they would replace
a good earlier case), and so are benchmarks whose timed function raised (a test may catch that and
skip, e.g. on running out of memory).
`python -m benchmarks.render` turns those files into benchmarks/RESULTS.md.
"""

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from benchmarks import recording
from tgfr.output_paths import check_output_file, check_output_folder

FULL = os.environ.get("TGFR_BENCH_FULL") == "1"
MODE = "full" if FULL else "quick"
_RECORDS = pytest.StashKey[list]()
_PASSED = pytest.StashKey[set]()  # node ids of the tests whose call passed
_FAILED = pytest.StashKey[set]()  # node ids of the tests that failed in any phase
_RESULTS_FILE = pytest.StashKey[tuple]()  # (path, machine description, CpuContention) of --tgfr-results


def measure_matmul_gflops(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """size x size matmul throughput of this machine with torch's default threads, in GFLOP/s."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * size**3 / (time.perf_counter() - start) / 1e9


@pytest.fixture(scope="session")
def matmul_gflops() -> float:
    """fp32 2048x2048 matmul GFLOP/s of this run: the yardstick of every fraction_of_matmul."""
    return measure_matmul_gflops()


@pytest.fixture(scope="session")
def matmul_gflops_of():
    """dtype name -> that dtype's 2048x2048 matmul GFLOP/s in this run, measured on first use."""
    return functools.cache(lambda dtype: measure_matmul_gflops(dtype=getattr(torch, dtype)))


@pytest.fixture(scope="session")
def bench_rounds() -> int:
    return 3 if FULL else 1


@pytest.fixture
def results_record(request):
    """record(extra_info: dict): adds a non-timed case (e.g. a sweep) to the results file."""

    def record(extra_info: dict) -> None:
        request.config.stash[_RECORDS].append(
            {"name": request.node.name, "fullname": request.node.nodeid, "group": None,
             "params": None, "extra_info": extra_info, "stats": {}}
        )

    return record


# The tracked results files of `benchmarks_checkout`: one a CPU run merges into, one a GPU session appends to.
CHECKOUT_RESULTS = ("cpu-stub-2c.json", "word_region_gpu_Stub_GPU.jsonl")


def git(checkout: Path, *arguments: str) -> str:
    """stdout of `git arguments` run in `checkout`, with a committer identity of its own."""
    return subprocess.run(["git", "-c", "user.name=tgfr tests", "-c", "user.email=tests@tgfr.invalid", *arguments],
                          cwd=checkout, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def benchmarks_checkout(tmp_path) -> Path:
    """A git repository holding a committed copy of this benchmarks package, its RESULTS.md and the
    tracked results files CHECKOUT_RESULTS: for tests of what git says of a tree, which must never
    change this checkout's tracked files."""
    checkout = tmp_path / "checkout"
    shutil.copytree(Path(__file__).parent, checkout / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__", "results"))
    (checkout / "benchmarks" / "results").mkdir()
    for name in CHECKOUT_RESULTS:
        (checkout / "benchmarks" / "results" / name).write_text("{}\n")
    git(checkout, "init", "-q")
    git(checkout, "add", "benchmarks")
    git(checkout, "commit", "-q", "-m", "benchmarks")
    return checkout


def pytest_addoption(parser):
    parser.addoption(
        "--tgfr-results", metavar="PATH", default=None,
        help="merge this run's benchmark cases into the JSON file PATH "
             "('auto': benchmarks/results/<machine kind>.json)",
    )


def pytest_configure(config):
    config.stash[_RECORDS] = []
    config.stash[_PASSED] = set()
    config.stash[_FAILED] = set()
    path = config.getoption("--tgfr-results")
    # `is not None`: an empty value (an unset shell variable) is refused below, not taken as no results file.
    if path is not None:
        machine = recording.machine_description()
        if path == "auto":
            path = recording.RESULTS_DIR / f"{machine['kind']}.json"
        else:  # the shell leaves `--tgfr-results=~/x.json` as typed
            path = os.path.expanduser(path)
        # Checked before the benchmarks run (hours in full mode) rather than when their cases are merged.
        try:
            check_output_file("--tgfr-results", path)
            check_output_folder("--tgfr-results", Path(path).parent, writable=True)
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None
        try:
            recording.read_results(path, machine)
        except (ValueError, OSError) as error:
            raise pytest.UsageError(f"--tgfr-results: {error}") from None
        config.stash[_RESULTS_FILE] = (Path(path), machine, recording.CpuContention(), recording.run_description(MODE))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed:
        item.config.stash[_PASSED].add(item.nodeid)
    if report.failed:
        item.config.stash[_FAILED].add(item.nodeid)


def pytest_sessionfinish(session):
    if _RESULTS_FILE not in session.config.stash:
        return
    path, machine, contention, started = session.config.stash[_RESULTS_FILE]
    # pytest-benchmark keeps the finished benchmarks of the session on its BenchmarkSession.
    benchmark_session = getattr(session.config, "_benchmarksession", None)
    # Only tests whose call passed (and whose teardown did not fail): a benchmark whose function raised, or
    # one stopped by Ctrl-C (no report of its call at all), has partial or no timings.
    complete = session.config.stash[_PASSED] - session.config.stash[_FAILED]
    timed = [recording.benchmark_case(metadata.as_dict(include_data=False))
             for metadata in getattr(benchmark_session, "benchmarks", [])
             if not metadata.has_error and metadata.fullname in complete]
    cases = timed + [record for record in session.config.stash[_RECORDS] if record["fullname"] in complete]
    if not cases:
        return
    run = recording.finished_run(started, MODE, contention)
    try:
        recording.write_results(path, machine, run, cases)
        message = f"tgfr: {len(cases)} benchmark cases merged into {path}"
    except (OSError, ValueError) as error:
        # The file became unwritable during the run (a full disk, a folder made in its place) or unreadable as
        # results (conflict markers of a `git pull`): the run's measurements, hours of them in full mode, are kept
        # in a results file of their own.
        fallback = Path(tempfile.mkdtemp(prefix="tgfr-results-")) / path.name
        recording.write_results(fallback, machine, run, cases)
        message = f"tgfr: could not write {path} ({error}); this run's {len(cases)} benchmark cases are in {fallback}"
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message)
    else:
        print(message, file=sys.stderr)


def pytest_benchmark_update_machine_info(config, machine_info):
    """pytest-benchmark's JSON (--benchmark-json, run_gpu.sh's bench stage) names the GPU and the
    measured commit, as the results files do."""
    machine_info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine_info["tgfr_commit"] = recording.commit()
