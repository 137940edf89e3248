"""Renders benchmarks/RESULTS.md (tables) and one PNG plot per machine from benchmarks/results/.

    python -m benchmarks.render [--results-dir benchmarks/results] [--output benchmarks/RESULTS.md]

Inputs: the JSON files written by `pytest benchmarks/ --tgfr-results ...` (benchmarks/recording.py)
and the JSON-lines files of benchmarks/run_gpu.sh (word_region_gpu_*.jsonl). Cases that carry an
op, an implementation, passes, a dtype and N (the word-region and contrastive benchmarks, the GPU
benchmark) go into comparison tables with speed and memory ratios against the reference; the
sweeps into a table of the largest N per implementation; any other benchmark (models, losses)
into a plain table of its median time and extra_info. Where a machine has full-mode cases, its
quick-mode cases are left out. Every table row names the run that measured it (r1, r2, ...), and
each machine's section lists every run that supplied a shown row, a dirty tree's marked as such.
"""

import argparse
import io
import json
import os
from collections import defaultdict
from pathlib import Path

from benchmarks.recording import RESULTS_DIR, RESULTS_PAGE, check_contents
from tgfr.cli import non_empty_path
from tgfr.output_paths import write_atomically
from tgfr.text_formats import parse_json

IMPLEMENTATION_ORDER = ("fused", "cuda", "triton", "triton_deterministic", "reference", "chunked_checkpointed", "compiled_reference")
FULL_COMMAND = "TGFR_BENCH_FULL=1 python -m pytest benchmarks/ -p no:cacheprovider --tgfr-results auto"
RENDER_COMMAND = "python -m benchmarks.render"
GPU_COMMAND = "bash benchmarks/run_gpu.sh"
# What the tables and the plot read of a GPU case's and of a sweep case's extra_info.
GPU_CASE_FIELDS = ("implementation", "dtype", "passes", "N")
SWEEP_FIELDS = ("op", "implementation", "passes", "budget_mib", "largest_fitting_n", "stopped_by", "steps")
# The kinds of value they read where a field is present: text, numbers, and numbers that may be null (a "-").
STRING_FIELDS = ("op", "implementation", "passes", "dtype", "stopped_by")
NUMBER_FIELDS = ("N", "ms", "useful_tflops", "peak_gb", "budget_mib")
NUMBER_OR_NULL_FIELDS = ("seconds", "useful_gflops", "fraction_of_matmul", "fraction_of_matmul_same_dtype",
                         "peak_rss_rise_mib", "largest_fitting_n")


def normalize_case(case: dict) -> dict | None:
    """A comparison row (op, implementation, passes, dtype, N, seconds, useful_gflops, fractions,
    peak_mib, memory, out_of_memory, run: the case's run_key) from a case of any benchmark file
    that has them; None for other cases."""
    info = case.get("extra_info") or {}
    stats = case.get("stats") or {}
    if _is_gpu_case(case):
        seconds = info["ms"] / 1e3 if "ms" in info else stats.get("median")
        return dict(op="word_region", implementation=info["implementation"], passes=info["passes"],
                    dtype=info["dtype"], N=info["N"], seconds=seconds,
                    useful_gflops=info["useful_tflops"] * 1e3 if "useful_tflops" in info else None,
                    fraction_of_matmul=None, fraction_of_matmul_same_dtype=None,
                    peak_mib=info["peak_gb"] * 1e9 / 2**20 if "peak_gb" in info else None,
                    memory="max allocated", out_of_memory=bool(info.get("out_of_memory")), one_step=False,
                    run=run_key(case))
    if not _is_op_case(case):
        return None
    return dict(op=info["op"], implementation=info["implementation"], passes=info["passes"], dtype=info["dtype"],
                N=info["shape"]["N"], seconds=info.get("seconds", stats.get("median")),
                useful_gflops=info.get("useful_gflops"), fraction_of_matmul=info.get("fraction_of_matmul"),
                fraction_of_matmul_same_dtype=info.get("fraction_of_matmul_same_dtype"),
                peak_mib=info.get("peak_rss_rise_mib"), memory="RSS rise", out_of_memory=False,
                one_step=info.get("kind") == "memory", run=run_key(case))


def run_key(case_or_run: dict) -> tuple[str | None, str | None]:
    """(commit, date): what a case shares with the entry of the run that measured it."""
    return case_or_run.get("commit"), case_or_run.get("date")


def load_results(results_dir: Path) -> list[dict]:
    """Every results file of the folder as {"name", "machine", "runs", "cases"}, sorted by name. A folder
    that is missing (a typo) is an error: read as empty, it would render a page of no results over the real one."""
    if not Path(results_dir).is_dir():
        raise ValueError(f"--results-dir {results_dir}: "
                         f"{'not a folder' if Path(results_dir).exists() else 'no such folder'}")
    files = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            content = parse_json(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"results file {path} is not valid JSON: {error}") from None
        # pytest-benchmark's own --benchmark-json output has neither key; a results file that lost one
        # (a hand edit) is checked, so that it is named rather than left off the page.
        if isinstance(content, dict) and "format" not in content and "cases" not in content:
            continue
        try:
            check_contents(content)
        except ValueError as error:
            raise ValueError(f"results file {path}: {error}") from None
        for key, case in content["cases"].items():
            if problem := _case_problem(case):
                raise ValueError(f"results file {path}: case {key!r} {problem}")
        files.append(dict(name=path.stem, machine=content["machine"], runs=content["runs"],
                          cases=list(content["cases"].values())))
    for path in sorted(Path(results_dir).glob("word_region_gpu_*.jsonl")):
        files.append(_gpu_lines(path))
    return files


def _gpu_lines(path: Path) -> dict:
    """benchmarks/run_gpu.sh's JSON lines as a results file; a later line replaces an earlier one of
    the same implementation, dtype, passes and N, whether it was measured or ran out of memory."""
    cases, runs = {}, {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON: {error}") from None
        if missing := [field for field in GPU_CASE_FIELDS if not isinstance(record, dict) or field not in record]:
            raise ValueError(f"{path}, line {number}: a GPU case lacks {', '.join(missing)}")
        if problem := _values_problem(record):
            raise ValueError(f"{path}, line {number}: a GPU case's {problem}")
        runs[(record.get("commit"), record.get("date"))] = dict(
            commit=record.get("commit"), date=record.get("date"), torch=record.get("torch"), mode="full",
            threads=None, command=record.get("command", "bash benchmarks/run_gpu.sh"),
            machine=dict(gpu=record.get("device"), cuda=record.get("cuda")), commit_note=record.get("commit_note"))
        key = (record["implementation"], record["dtype"], record["passes"], record["N"])
        cases[key] = dict(name="-".join(map(str, key)), extra_info=record, stats={}, mode="full",
                          commit=record.get("commit"), date=record.get("date"))
    device = next((case["extra_info"].get("device") for case in cases.values()), path.stem)
    return dict(name=path.stem, machine=dict(gpu=device, kind=path.stem), runs=list(runs.values()),
                cases=list(cases.values()))


def _is_sweep(case: dict) -> bool:
    return (case.get("extra_info") or {}).get("kind") == "sweep"


def _is_gpu_case(case: dict) -> bool:
    """A case of benchmarks/test_word_region_gpu.py: measured, or its step ran out of memory (no timing)."""
    info = case.get("extra_info") or {}
    return "useful_tflops" in info or bool(info.get("out_of_memory"))


def _is_op_case(case: dict) -> bool:
    """A case of the CPU word-region or contrastive benchmarks that is a comparison row (not a sweep)."""
    names_an_op = {"op", "implementation", "passes", "dtype", "shape"} <= (case.get("extra_info") or {}).keys()
    return names_an_op and not _is_sweep(case) and not _is_gpu_case(case)


def _case_problem(case: object) -> str | None:
    """What is wrong with a results file's case for the tables and the plot (None if nothing): a
    bare KeyError or AttributeError from them would name neither the file nor the case."""
    if not isinstance(case, dict):
        return f"must be a JSON object, got {type(case).__name__}"
    info = case.get("extra_info") or {}
    if not isinstance(info, dict):
        return f"extra_info must be a JSON object, got {type(info).__name__}"
    if "name" not in case:
        return "lacks name"
    stats = case.get("stats") or {}
    if not isinstance(stats, dict) or not _is_number_or_null(stats.get("median")):
        return f"stats must be a JSON object whose median is a number or null, got {stats!r}"
    required = SWEEP_FIELDS if _is_sweep(case) else GPU_CASE_FIELDS if _is_gpu_case(case) else ()
    if missing := [field for field in required if field not in info]:
        return f"lacks extra_info {', '.join(missing)}"
    if _is_op_case(case) and not (isinstance(info["shape"], dict) and _is_number(info["shape"].get("N"))):
        return f"extra_info shape must be an object holding a number N, got {info['shape']!r}"
    if required or _is_op_case(case):  # the other cases' extra_info is only printed
        if problem := _values_problem(info):
            return f"extra_info {problem}"
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_number_or_null(value: object) -> bool:
    return value is None or _is_number(value)


def _values_problem(info: dict) -> str | None:
    """What is wrong with the values the tables and the plot read of a comparison row's or a sweep's
    extra_info `info` (None if nothing), e.g. "passes must be a string, got 1"."""
    for fields, kind, fits in ((STRING_FIELDS, "a string", lambda value: isinstance(value, str)),
                               (NUMBER_FIELDS, "a number", _is_number),
                               (NUMBER_OR_NULL_FIELDS, "a number or null", _is_number_or_null)):
        if wrong := next((field for field in fields if field in info and not fits(info[field])), None):
            return f"{wrong} must be {kind}, got {info[wrong]!r}"
    if "steps" not in info:
        return None
    if not isinstance(info["steps"], list):
        return f"steps must be a JSON array, got {type(info['steps']).__name__}"
    for index, step in enumerate(info["steps"]):
        if not isinstance(step, dict):
            return f"steps[{index}] must be a JSON object, got {type(step).__name__}"
        measured = not step.get("out_of_memory")
        # A measured step is a table cell and a plotted point; one that ran out of memory has only its N.
        numbers = ("N", "seconds", "peak_rss_rise_mib") if measured else ("N",)
        if wrong := next((field for field in numbers if not _is_number(step.get(field))), None):
            return f"steps[{index}] {wrong} must be a number, got {step!r}"
        if measured and not isinstance(step.get("fits"), bool):
            return f"steps[{index}] fits must be true or false, got {step!r}"
    return None


def shown_cases(cases: list[dict]) -> tuple[str, list[dict]]:
    """("full", full-mode cases) when there are any, else ("quick", quick-mode cases)."""
    full = [case for case in cases if case.get("mode") == "full"]
    return ("full", full) if full else ("quick", [case for case in cases if case.get("mode") != "full"])


def _order(implementation: str) -> int:
    return IMPLEMENTATION_ORDER.index(implementation) if implementation in IMPLEMENTATION_ORDER else len(
        IMPLEMENTATION_ORDER)


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _number(value: float | None, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def comparison_tables(rows: list[dict], labels: dict[tuple, str]) -> list[str]:
    """Markdown lines: one table per (op, passes), rows by implementation, dtype and N, with the
    time and memory ratios of a reference at the same N over the row's and the label of the row's run
    (`labels`, by run_key). The reference is, on CPU, the fp32 one (where none ran at that N, the one of
    the row's dtype) and, on the GPU (memory "max allocated"), the one of the row's own dtype: there the
    half types are the kernels' use, and a bf16 kernel is measured against the bf16 reference. A row that
    ran out of memory says so instead of a time."""
    lines = []
    groups = defaultdict(list)
    for row in rows:
        groups[(row["op"], row["passes"])].append(row)
    for (op, passes), group in sorted(groups.items()):
        references = {(row["N"], row["dtype"]): row for row in group if row["implementation"] == "reference"}
        memory = group[0]["memory"]
        lines += [f"#### {op}, {passes.replace('_', '+')}", "",
                  "| implementation | dtype | N=M | time | useful GFLOP/s | of fp32 matmul | of same-dtype matmul "
                  f"| peak memory ({memory}, MiB) | speed-up vs reference | memory vs reference | run |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for row in sorted(group, key=lambda row: (_order(row["implementation"]), row["dtype"], row["N"])):
            own_dtype = references.get((row["N"], row["dtype"]))
            base = own_dtype if memory == "max allocated" else (references.get((row["N"], "float32")) or own_dtype)
            speedup = base["seconds"] / row["seconds"] if base and base["seconds"] and row["seconds"] else None
            memory_ratio = (base["peak_mib"] / row["peak_mib"]
                            if base and base["peak_mib"] is not None and row["peak_mib"] else None)
            lines.append(
                f"| {row['implementation']} | {row['dtype']} | {row['N']} "
                f"| {'out of memory' if row['out_of_memory'] else _time(row['seconds'])}"
                f"{' (one step, fresh process)' if row['one_step'] else ''} "
                f"| {_number(row['useful_gflops'])} | {_percent(row['fraction_of_matmul'])} "
                f"| {_percent(row['fraction_of_matmul_same_dtype'])} | {_number(row['peak_mib'])} "
                f"| {_number(speedup, '{:.2f}x')} | {_number(memory_ratio, '{:.1f}x')} | {labels[row['run']]} |"
            )
        lines.append("")
    return lines


def sweep_table(cases: list[dict], labels: dict[tuple, str]) -> list[str]:
    """Markdown lines: the largest N within the budget per op and implementation of the sweep
    cases, with each step and the label of the case's run (`labels`, by run_key)."""
    if not cases:
        return []
    lines = ["#### Largest batch within a memory budget (forward+backward, fp32)", "",
             "| op | implementation | budget (MiB) | largest N=M that fits | stopped by | steps: N (time, peak MiB) "
             "| run |",
             "| --- | --- | ---: | ---: | --- | --- | --- |"]
    by_op = sorted(cases, key=lambda case: (case["extra_info"]["op"], _order(case["extra_info"]["implementation"])))
    for case in by_op:
        sweep = case["extra_info"]
        steps = ", ".join(
            f"{step['N']} (out of memory)" if step.get("out_of_memory") else
            f"{step['N']} ({_time(step['seconds'])}, {step['peak_rss_rise_mib']:.0f}{'' if step['fits'] else ', over'})"
            for step in sweep["steps"]
        )
        largest = sweep["largest_fitting_n"]
        largest = "none" if largest is None else f"{'>= ' if sweep['stopped_by'] == 'time' else ''}{largest}"
        lines.append(f"| {sweep['op']} | {sweep['implementation']} | {sweep['budget_mib']} | {largest} "
                     f"| {sweep['stopped_by']} | {steps} | {labels[run_key(case)]} |")
    return lines + [""]


def other_table(cases: list[dict], labels: dict[tuple, str]) -> list[str]:
    """Markdown lines: median time, extra_info and run label (`labels`, by run_key) of the cases no
    other table shows."""
    if not cases:
        return []
    lines = ["#### Other benchmarks", "", "| case | median time | extra info | run |", "| --- | ---: | --- | --- |"]
    for case in sorted(cases, key=lambda case: case.get("fullname", case["name"])):
        info = ", ".join(f"{key}={_compact(value)}" for key, value in sorted((case.get("extra_info") or {}).items()))
        lines.append(f"| {case.get('fullname', case['name'])} | {_time((case.get('stats') or {}).get('median'))} "
                     f"| {info} | {labels[run_key(case)]} |")
    return lines + [""]


def _compact(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def _machine_title(machine: dict) -> str:
    return machine.get("gpu") or f"{machine.get('cpu')}, {machine.get('logical_cores')} logical cores"


def run_list(runs: list[dict], cases: list[dict]) -> tuple[list[str], dict[tuple, str]]:
    """Markdown lines naming each run that measured one of `cases` (commit and any note on it, dates,
    torch, threads, mode, machine, other processes' share of its CPUs, command), in the order of `runs`,
    and the label (r1, r2, ...) of each case's run_key. Runs that differ in their date only share a label
    (the GPU benchmark once dated each of its lines); a case whose run `runs` lacks gets a label of its own
    commit and date."""
    measuring = {run_key(case) for case in cases}
    known = {run_key(run): run for run in runs}
    ordered = [run for key, run in known.items() if key in measuring]
    ordered += [dict(commit=commit, date=date) for commit, date in sorted(measuring - known.keys(), key=str)]
    groups: dict[tuple, list[dict]] = {}
    for run in ordered:
        machine = run.get("machine") or {}
        platform = f", {machine['platform']}" if machine.get("platform") else ""
        description = (run.get("commit"), run.get("commit_note"), run.get("torch"), run.get("threads"), run.get("mode"),
                       run.get("command"), f"{_machine_title(machine)}{platform}" if machine else None,
                       run.get("other_cpu_share"))
        groups.setdefault(description, []).append(run)
    lines, labels = [], {}
    for number, ((commit, note, torch, threads, mode, command, machine, other_share), members) in enumerate(
            groups.items(), 1):
        label = f"r{number}"
        labels.update((run_key(run), label) for run in members)
        dates = [run.get("date") for run in members]
        when = (dates[0] if len(dates) == 1 else
                f"dated {min(dates, key=str)} to {max(dates, key=str)} ({len(dates)} dates)")
        if commit and commit.endswith("-dirty"):
            provenance = (f"commit {commit} (DIRTY TREE: the measured tracked files differed from commit "
                          f"{commit.removesuffix('-dirty')})")
        else:
            provenance = f"commit {commit}"
        if note:
            provenance += f" ({note})"
        details = [when, f"torch {torch}" if torch else None, f"{threads} threads" if threads else None,
                   f"{mode} mode" if mode else None, f"on {machine}" if machine else None,
                   f"other processes used {other_share:.0%} of its CPUs meanwhile" if other_share is not None else None]
        lines.append(f"- {label}: {provenance}; {', '.join(detail for detail in details if detail)}"
                     + (f": `{command}`" if command else ""))
    return lines, labels


def machine_section(results: dict, plot_link: str | None) -> list[str]:
    """Markdown lines of one machine: description, the runs its figures come from, tables and the plot
    (`plot_link`: its path relative to the page's folder)."""
    machine = results["machine"]
    mode, cases = shown_cases(results["cases"])
    lines = [f"## {results['name']}: {_machine_title(machine)}", ""]
    if machine.get("memory_gib"):
        lines += [f"Memory {machine['memory_gib']} GiB; {machine.get('platform', '')}.", ""]
    runs, labels = run_list(results["runs"], cases)
    if runs:
        lines += ["Runs that measured the figures below (each row's run column names one):", "", *runs]
    if mode == "quick":
        lines.append("- quick mode only (CI shapes, one round): these figures check that the suite runs, "
                     "they do not rank the implementations.")
    lines.append("")
    rows = [row for row in map(normalize_case, cases) if row is not None]
    sweeps = [case for case in cases if _is_sweep(case)]
    others = [case for case in cases if not _is_sweep(case) and normalize_case(case) is None]
    lines += comparison_tables(rows, labels) + sweep_table(sweeps, labels) + other_table(others, labels)
    if plot_link:
        lines += [f"![{results['name']}]({plot_link})", ""]
    return lines


def plot_series(results: dict) -> tuple[str, dict[str, dict]]:
    """What plot() draws of a results file: the passes plotted (forward+backward, or forward where that is
    all there is) and, per op in panel order, {"budget_mib": its sweeps' budget or None, "lines": [...]},
    each line {"implementation", "dtype" (None for a sweep's steps), "label", "time": (N list, seconds list),
    "memory": (N list, peak MiB list)}: one per implementation and dtype, then one per sweep of that op and
    passes. Empty when there is nothing to plot."""
    _, cases = shown_cases(results["cases"])
    rows = [row for row in map(normalize_case, cases) if row is not None and not row["out_of_memory"]]
    passes = "forward_backward" if any(row["passes"] == "forward_backward" for row in rows) else "forward"
    rows = [row for row in rows if row["passes"] == passes]
    budgets = {case["extra_info"]["op"]: case["extra_info"]["budget_mib"] for case in cases if _is_sweep(case)}
    # Ops measured at one N only (the loss modules) stay in the tables: a line needs two points.
    sizes = defaultdict(set)
    for row in rows:
        sizes[row["op"]].add(row["N"])
    ops = sorted(op for op in sizes if len(sizes[op]) > 1 or op in budgets) or sorted(sizes)
    sweeps = [case["extra_info"] for case in cases if _is_sweep(case)]
    series = {}
    for op in ops:
        by_line = defaultdict(list)
        for row in rows:
            if row["op"] == op:
                by_line[(row["implementation"], row["dtype"])].append(row)
        lines = []
        for (implementation, dtype), points in sorted(by_line.items(),
                                                      key=lambda item: (_order(item[0][0]), item[0][1])):
            points.sort(key=lambda row: row["N"])
            memory_points = [p for p in points if p["peak_mib"]]
            lines.append(dict(implementation=implementation, dtype=dtype, label=f"{implementation} {dtype}",
                              time=([p["N"] for p in points], [p["seconds"] for p in points]),
                              memory=([p["N"] for p in memory_points], [p["peak_mib"] for p in memory_points])))
        for sweep in sweeps:
            measured = [step for step in sweep["steps"] if not step.get("out_of_memory")]
            if sweep["op"] != op or sweep["passes"] != passes or not measured:
                continue
            # A log axis has no 0: a step whose RSS did not rise is drawn at 0.1 MiB.
            lines.append(dict(implementation=sweep["implementation"], dtype=None,
                              label=f"{sweep['implementation']} (sweep, one step)",
                              time=([step["N"] for step in measured], [step["seconds"] for step in measured]),
                              memory=([step["N"] for step in measured],
                                      [max(step["peak_rss_rise_mib"], 0.1) for step in measured])))
        series[op] = dict(budget_mib=budgets.get(op), lines=lines)
    return passes, series


def plot(results: dict) -> bytes | None:
    """A PNG of plot_series(results): time and peak memory against N per op, log-log, one line per
    implementation and dtype, the sweeps' steps dotted and their budget as a grey line. None when there is
    nothing to plot."""
    passes, series = plot_series(results)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {implementation: f"C{index}" for index, implementation in enumerate(IMPLEMENTATION_ORDER)}
    figure, axes = plt.subplots(len(series), 2, figsize=(11, 4 * len(series)), squeeze=False)
    for (time_axis, memory_axis), (op, panel) in zip(axes, series.items()):
        for line in panel["lines"]:
            sweep = line["dtype"] is None
            style = dict(color=colors.get(line["implementation"]), label=line["label"],
                         marker="x" if sweep else "o" if line["dtype"] == "float32" else "s",
                         linestyle=":" if sweep else "-" if line["dtype"] == "float32" else "--")
            time_axis.plot(*line["time"], **style)
            memory_axis.plot(*line["memory"], **style)
        if panel["budget_mib"] is not None:
            memory_axis.axhline(panel["budget_mib"], color="grey", linestyle=":",
                                label=f"sweep budget {panel['budget_mib']} MiB")
        for axis, ylabel in ((time_axis, "seconds per step"), (memory_axis, "peak memory (MiB)")):
            axis.set(xscale="log", yscale="log", xlabel="N = M", ylabel=ylabel,
                     title=f"{op}, {passes.replace('_', '+')}: {ylabel.split(' (')[0]}")
            axis.grid(True, which="both", alpha=0.3)
        memory_axis.legend(fontsize=7)
    figure.suptitle(results["name"])
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    plt.close(figure)
    return png.getvalue()


def render(results_dir: Path = RESULTS_DIR, output: Path = RESULTS_PAGE) -> str:
    """Writes `output` (and a PNG per machine into results_dir); returns the markdown. Every file is
    read and drawn before anything is written: a malformed one leaves the page and the plots as they were."""
    lines = [
        "# Benchmark results", "",
        "Generated by `python -m benchmarks.render` from the JSON files in benchmarks/results/; do not edit by hand.",
        "", "Reproduce (CPU, full mode; each run merges its cases into benchmarks/results/<machine kind>.json):", "",
        f"    {FULL_COMMAND}", f"    {RENDER_COMMAND}", "",
        # Not the full-mode command: it collects the GPU file after every CPU case, by when the GPU
        # cases' deadline (TGFR_BENCH_DEADLINE_S, from the session's start) has passed, and its
        # --tgfr-results would record a GPU case that ran a second time, in gpu-<name>.json.
        f"GPU: `{GPU_COMMAND}` on the GPU machine (its word_region_gpu_*.jsonl files are read as well; "
        "see the script for its stages and time limits).", "",
        "Time: median of the rounds after a warm-up round (pytest-benchmark; full mode: 3 rounds, 1 for steps of "
        "150 GFLOP of useful work and more, planned as 3 s and more at 50 GFLOP/s: the fused ops, faster, run some "
        "of them in under a second); "
        "GPU (word_region_gpu_*.jsonl): mean of 10 rounds (3 from N=M=8192, 1 from 16384) after one or two untimed "
        "steps (compilation, autotuning). Useful GFLOP/s: SPEC section 2's work "
        "(word-region forward 4*N*M*T*R*D, forward+backward 12*N*M*T*R*D, all words valid; contrastive "
        "2*N*M*D and 6*N*M*D), recomputation not counted, as a fraction of the same run's 2048x2048 matmul. "
        "Peak memory on CPU: rise of the RSS high-water mark of one step in a fresh process above its RSS "
        "with inputs made; on GPU: torch.cuda.max_memory_allocated, inputs and gradients included. "
        "Ratios: a reference at the same N over the row (higher is better): on CPU the fp32 reference (where "
        "none ran at that N, the reference of the row's dtype), on the GPU the reference of the row's own dtype.", "",
    ]
    files = load_results(results_dir)
    if not files:
        lines += ["No results yet.", ""]
    plots = {}
    for results in files:
        plot_path = Path(results_dir) / f"{results['name']}.png"
        if png := plot(results):
            plots[plot_path] = png
        # The plots go into results_dir, wherever the page is written.
        lines += machine_section(results, Path(os.path.relpath(plot_path, Path(output).parent)).as_posix()
                                 if png else None)
    markdown = "\n".join(lines).rstrip() + "\n"
    for plot_path, png in plots.items():
        with write_atomically(plot_path, "plot", binary=True) as file:
            file.write(png)
    with write_atomically(output, "results page") as file:
        file.write(markdown)
    return markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # non_empty_path: as a Path, "" is the current folder, where no results file lies, and the page of no results
    # then replaced RESULTS.md.
    parser.add_argument("--results-dir", type=non_empty_path, default=RESULTS_DIR)
    parser.add_argument("--output", type=non_empty_path, default=RESULTS_PAGE)
    arguments = parser.parse_args(argv)
    render(arguments.results_dir, arguments.output)
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
