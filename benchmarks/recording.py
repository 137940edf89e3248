"""Benchmark results files: one JSON file per machine kind under benchmarks/results/.

A file holds the machine's description, the list of runs merged into it (commit, date, torch
version, threads, quick or full mode, command line, other processes' share of the CPUs meanwhile) and the cases, keyed by "<mode>::<test id>"
so that a later run of a case replaces the earlier one of the same mode and leaves the others.
Each case keeps its pytest-benchmark group, parameters, timing statistics (seconds) and
extra_info, plus the commit and date of the run that produced it.
"""

import datetime
import json
import os
import platform
import re
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

from tgfr.output_paths import write_atomically
from tgfr.provenance import checkout_commit
from tgfr.text_formats import parse_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_PAGE = RESULTS_DIR.parent / "RESULTS.md"  # what benchmarks/render.py writes by default
FORMAT_VERSION = 1
_KEPT_STATS = ("min", "max", "mean", "median", "stddev", "rounds")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            total_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
        return round(total_kib / 2**20, 1)
    except (OSError, StopIteration):
        return None


def machine_description() -> dict:
    """What the figures were measured on: CPU model, cores, memory, and the GPU if there is one."""
    machine = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    machine["kind"] = machine_kind(machine)
    return machine


def machine_kind(machine: dict) -> str:
    """File-name-safe kind, e.g. 'cpu-amd-epyc-7b13-2c' or 'gpu-nvidia-h100-80gb-hbm3'."""
    if machine.get("gpu"):
        return "gpu-" + _slug(machine["gpu"])
    model = re.sub(r"\((r|tm)\)|\b(cpu|processor)\b|@.*", " ", machine["cpu"].lower())
    return f"cpu-{_slug(model)}-{machine['logical_cores']}c"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def commit() -> str:
    """The measured tree's commit: $TGFR_COMMIT when set (a tree copied to a GPU machine can carry a
    stale .git), else HEAD, with -dirty when tracked files other than the harness's own outputs
    (benchmarks/results/, benchmarks/RESULTS.md) differ from it; 'unknown' outside a git checkout
    of its own (a tree without .git at its top) or without git."""
    if os.environ.get("TGFR_COMMIT"):
        return os.environ["TGFR_COMMIT"]
    # As tgfr.provenance.tgfr_commit: in a tree copied or unpacked into another repository (a home
    # folder under git), git climbs to that repository and would name its unrelated commit.
    if not (RESULTS_DIR.parent.parent / ".git").exists():
        return "unknown"
    # The results files a run merges into and appends to are tracked: a run after another, or the
    # second line of one GPU session, would otherwise mark measurements of the same code dirty.
    outputs = [path.relative_to(RESULTS_DIR.parent).as_posix() for path in (RESULTS_DIR, RESULTS_PAGE)]
    return checkout_commit(RESULTS_DIR.parent, outputs) or "unknown"


def _machine_busy_seconds() -> float | None:
    """CPU time every process of the machine has used since boot (and time the hypervisor gave to
    other guests: steal), in seconds, from /proc/stat's first line; None without /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for (fresh-process steps)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuContention:
    """How much of the machine's CPUs other processes used while the benchmarks ran: figures timed
    beside another job come out slower, and their run should say so.

    Start it before the benchmarks; other_share() is the CPU time used meanwhile by every process
    but this one and its children (steal included), over wall time x logical cores: 0 on an idle
    machine, 0.5 when another job kept one of two cores busy. None without /proc/stat."""

    def __init__(self):
        self._start = (time.monotonic(), _machine_busy_seconds(), _own_cpu_seconds())

    def other_share(self) -> float | None:
        wall_start, busy_start, own_start = self._start
        busy = _machine_busy_seconds()
        wall = time.monotonic() - wall_start
        if busy is None or busy_start is None or wall <= 0:
            return None
        others = (busy - busy_start) - (_own_cpu_seconds() - own_start)
        # Clock ticks and rusage round differently: a short idle run can come out a little below 0.
        return round(min(max(others / (wall * (os.cpu_count() or 1)), 0.0), 1.0), 3)


def run_description(mode: str, contention: CpuContention | None = None) -> dict:
    """Provenance of this run: commit, UTC date, versions, threads, mode, command line and, given the
    run's CpuContention, other processes' share of the CPUs while it ran."""
    description = {
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "mode": mode,
        "command": shlex.join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]]),
    }
    if contention is not None and (share := contention.other_share()) is not None:
        description["other_cpu_share"] = share
    return description


def finished_run(started: dict, mode: str, contention: CpuContention | None = None) -> dict:
    """run_description at the end of a run whose run_description at its start was `started`: with the
    start's commit and date, those of the code the run imported and measured, and a commit_note when
    the checkout has moved since (a commit made while a run of hours went on)."""
    ended = run_description(mode, contention)
    run = {**ended, "commit": started["commit"], "date": started["date"]}
    if ended["commit"] != started["commit"]:
        run["commit_note"] = f"the checkout was at {ended['commit']} when the run ended"
    return run


def benchmark_case(benchmark: dict) -> dict:
    """A case from pytest-benchmark's Metadata.as_dict(include_data=False)."""
    stats = benchmark.get("stats") or {}
    return {
        "name": benchmark["name"],
        "fullname": benchmark["fullname"],
        "group": benchmark.get("group"),
        "params": benchmark.get("params"),
        "extra_info": benchmark.get("extra_info", {}),
        "stats": {key: stats[key] for key in _KEPT_STATS if key in stats},
    }


def check_contents(contents: object) -> None:
    """Raises ValueError, saying what is wrong, unless the results file contents `contents` hold what
    merging and benchmarks/render.py read: of another format the cases are unreadable, and a file
    edited or cut by hand would otherwise stop them with a KeyError naming nothing."""
    if not isinstance(contents, dict):
        raise ValueError(f"must hold a JSON object, got {type(contents).__name__}")
    if contents.get("format") != FORMAT_VERSION:
        raise ValueError(f"format must be {FORMAT_VERSION}, got {contents.get('format')!r}")
    machine_entry = contents.get("machine")
    if not isinstance(machine_entry, dict) or not isinstance(machine_entry.get("kind"), str):
        raise ValueError(f"machine must be an object holding a string kind, got {machine_entry!r}")
    for name, kind_of_entry in (("runs", list), ("cases", dict)):
        if not isinstance(contents.get(name), kind_of_entry):
            raise ValueError(f"{name} must be a JSON {'array' if kind_of_entry is list else 'object'}, got "
                             f"{type(contents.get(name)).__name__}")


def _check_mergeable(existing: object, machine: dict) -> None:
    """Raises ValueError unless a run on `machine` may merge into the file contents `existing`: they
    pass check_contents, and of another machine kind the file's heading and figures would name the
    newest run's machine above the others' measurements."""
    check_contents(existing)
    kind = existing["machine"]["kind"]
    if kind != machine["kind"]:
        raise ValueError(f"machine kind is {kind!r}, not this run's {machine['kind']!r} "
                         f"(whose file is {machine['kind']}.json)")


def merge_results(existing: dict | None, machine: dict, run: dict, cases: list[dict]) -> dict:
    """`existing` file contents (or None) with this run's cases added or replaced; a new dict.
    ValueError if `existing` is of another format or machine kind."""
    merged = {"format": FORMAT_VERSION, "machine": machine, "runs": [], "cases": {}}
    if existing:
        _check_mergeable(existing, machine)
        merged["runs"] = list(existing["runs"])
        merged["cases"] = dict(existing["cases"])
    merged["runs"].append({**run, "machine": machine, "cases": len(cases)})
    for case in cases:
        key = f"{run['mode']}::{case['fullname']}"
        merged["cases"][key] = {**case, "mode": run["mode"], "commit": run["commit"], "date": run["date"]}
    return merged


def read_results(path: Path, machine: dict) -> dict | None:
    """Contents of the results file at `path` (None if absent), checked to be one a run on
    `machine` may merge into; a ValueError names the file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        existing = parse_json(path.read_text())
        if existing != {}:  # an empty object holds nothing to merge with
            _check_mergeable(existing, machine)
    except json.JSONDecodeError as error:
        raise ValueError(f"results file {path} is not valid JSON: {error}") from None
    except ValueError as error:
        raise ValueError(f"results file {path}: {error}") from None
    return existing


def write_results(path: Path, machine: dict, run: dict, cases: list[dict]) -> dict:
    """Merges the cases into the JSON file at `path` (created if absent); returns its contents.
    ValueError, naming the file, if it is not valid JSON or of another format or machine kind."""
    path = Path(path)
    merged = merge_results(read_results(path, machine), machine, run, cases)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomically: a write cut short (a full disk) would leave every earlier run's figures unreadable.
    with write_atomically(path, "results file") as file:
        file.write(json.dumps(merged, indent=1, sort_keys=True, default=str) + "\n")
    return merged
