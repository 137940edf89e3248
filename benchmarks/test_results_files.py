"""The results-file writer (benchmarks/recording.py) and the renderer (benchmarks/render.py)."""

import datetime
import io
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from benchmarks import recording, render
from benchmarks.cases import rounds_of
from benchmarks.conftest import CHECKOUT_RESULTS, git

_ROOT = Path(__file__).resolve().parents[1]

MACHINE = {"cpu": "AMD EPYC 7B13", "logical_cores": 2, "memory_gib": 23.5, "platform": "Linux", "gpu": None,
           "kind": "cpu-amd-epyc-7b13-2c"}


def run(mode: str, commit: str) -> dict:
    return {"commit": commit, "date": f"2026-01-0{len(commit)}T00:00:00+00:00", "torch": "2.13.0", "python": "3.11",
            "threads": 2, "mode": mode, "command": "pytest benchmarks/"}


def case(fullname: str, median: float, **extra_info) -> dict:
    return {"name": fullname.split("::")[-1], "fullname": fullname, "group": None, "params": None,
            "extra_info": extra_info, "stats": {"median": median, "rounds": 1}}


def word_region_case(implementation, passes, dtype, size, seconds, peak_mib, gflops=10.0, fraction=0.1):
    return case(f"benchmarks/test_word_region.py::test[{implementation}-{passes}-{dtype}-N{size}]", seconds,
                op="word_region", implementation=implementation, passes=passes, dtype=dtype,
                shape={"N": size, "M": size, "T": 22, "R": 196, "D": 256}, seconds=seconds,
                useful_gflops=gflops, fraction_of_matmul=fraction, peak_rss_rise_mib=peak_mib)


def test_merge_replaces_a_case_of_the_same_mode_and_keeps_the_others():
    first = recording.merge_results(None, MACHINE, run("quick", "a"), [case("f::x", 1.0), case("f::y", 2.0)])
    second = recording.merge_results(first, MACHINE, run("quick", "bb"), [case("f::x", 3.0)])
    third = recording.merge_results(second, MACHINE, run("full", "ccc"), [case("f::x", 5.0)])

    assert set(third["cases"]) == {"quick::f::x", "quick::f::y", "full::f::x"}
    assert third["cases"]["quick::f::x"]["stats"]["median"] == 3.0 and third["cases"]["quick::f::x"]["commit"] == "bb"
    assert third["cases"]["quick::f::y"]["commit"] == "a"
    assert third["cases"]["full::f::x"]["mode"] == "full"
    assert [entry["commit"] for entry in third["runs"]] == ["a", "bb", "ccc"]
    assert [entry["cases"] for entry in third["runs"]] == [2, 1, 1]  # each run's own cases, not the file's
    assert first["cases"].keys() == {"quick::f::x", "quick::f::y"}  # inputs are not modified


def test_a_results_file_write_that_fails_halfway_keeps_the_earlier_runs(tmp_path):
    """Written in place, a write cut short (here a file size limit, as a full disk) left invalid JSON
    that the next run refused: every earlier run's figures were lost."""
    path = tmp_path / "machine.json"
    recording.write_results(path, MACHINE, run("quick", "a"), [case("f::x", 1.0)])
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import resource, sys
        from benchmarks.test_results_files import MACHINE, case, recording, run
        resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 100}, resource.RLIM_INFINITY))
        try:
            cases = [case(f"f::{{i}}", 1.0) for i in range(50)]
            recording.write_results(sys.argv[1], MACHINE, run("quick", "b"), cases)
        except OSError as error:
            sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 3, result.stderr
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_run_records_the_commit_it_started_at_and_notes_a_later_one(monkeypatch):
    """The measured code is the code imported at the start; a commit made during a run of hours was
    recorded as if measured."""
    commits = iter(["aaa", "aaa", "bbb"])
    monkeypatch.setattr(recording, "commit", lambda: next(commits))
    # A start long before the end: dates taken within one second could not tell which one was kept.
    started = {**recording.run_description("full"), "date": "2000-01-01T00:00:00+00:00"}
    unmoved = recording.finished_run(started, "full")
    assert (unmoved["commit"], unmoved["date"]) == ("aaa", started["date"]) and "commit_note" not in unmoved
    moved = recording.finished_run(started, "full")
    assert (moved["commit"], moved["date"]) == ("aaa", started["date"])
    assert moved["commit_note"] == "the checkout was at bbb when the run ended"


def test_merge_rejects_another_format():
    with pytest.raises(ValueError, match="format"):
        recording.merge_results({"format": 99, "runs": [], "cases": {}}, MACHINE, run("quick", "a"), [])


def test_write_results_merges_into_the_file_and_names_a_corrupt_one(tmp_path):
    path = tmp_path / "results" / "cpu.json"
    recording.write_results(path, MACHINE, run("quick", "a"), [case("f::x", 1.0)])
    recording.write_results(path, MACHINE, run("quick", "bb"), [case("f::y", 2.0)])
    assert set(json.loads(path.read_text())["cases"]) == {"quick::f::x", "quick::f::y"}

    path.write_text("{not json")
    with pytest.raises(ValueError, match="cpu.json"):
        recording.write_results(path, MACHINE, run("quick", "a"), [])


def test_a_run_on_another_machine_kind_is_refused_and_leaves_the_file_as_it_was(tmp_path):
    """Merged, an Intel run would put its machine above the AMD figures of the file."""
    intel = {**MACHINE, "cpu": "Intel(R) Xeon(R) Processor", "kind": "cpu-intel-xeon-2c"}
    with pytest.raises(ValueError, match="'cpu-amd-epyc-7b13-2c', not this run's 'cpu-intel-xeon-2c'"):
        recording.merge_results(recording.merge_results(None, MACHINE, run("quick", "a"), []), intel,
                                run("quick", "b"), [])
    path = tmp_path / "cpu-amd-epyc-7b13-2c.json"
    recording.write_results(path, MACHINE, run("quick", "a"), [case("f::x", 1.0)])
    written = path.read_text()
    with pytest.raises(ValueError, match=f"results file {path}: machine kind is 'cpu-amd-epyc-7b13-2c', "
                                         "not this run's 'cpu-intel-xeon-2c'"):
        recording.write_results(path, intel, run("quick", "b"), [case("f::y", 2.0)])
    assert path.read_text() == written


def test_benchmark_case_keeps_the_timing_statistics_and_extra_info():
    metadata = {"name": "t[a]", "fullname": "f::t[a]", "group": "g", "params": {"a": 1}, "extra_info": {"k": 2},
                "stats": {"median": 0.5, "mean": 0.6, "min": 0.4, "max": 0.9, "stddev": 0.1, "rounds": 3,
                          "iqr": 0.2, "ops": 2.0}}
    assert recording.benchmark_case(metadata) == {
        "name": "t[a]", "fullname": "f::t[a]", "group": "g", "params": {"a": 1}, "extra_info": {"k": 2},
        "stats": {"median": 0.5, "mean": 0.6, "min": 0.4, "max": 0.9, "stddev": 0.1, "rounds": 3}}


def test_machine_memory_is_memtotal_in_gib(monkeypatch):
    """memory_gib is /proc/meminfo's MemTotal (kiB) in GiB: 24641536 kiB = 23.5 GiB."""
    real_open = open

    def open_with_stub_meminfo(path, *arguments, **options):
        if path == "/proc/meminfo":
            return io.StringIO("MemTotal:       24641536 kB\nMemFree:         1048576 kB\n")
        return real_open(path, *arguments, **options)

    monkeypatch.setattr(recording, "open", open_with_stub_meminfo, raising=False)  # found before the builtin
    assert recording.machine_description()["memory_gib"] == 23.5


def test_run_description_records_torchs_threads(monkeypatch):
    monkeypatch.setattr(recording.torch, "get_num_threads", lambda: 7)
    assert recording.run_description("quick")["threads"] == 7


def test_run_description_records_the_torch_and_a_utc_date():
    run = recording.run_description("quick")
    assert run["torch"] == recording.torch.__version__
    assert run["date"].endswith("+00:00") and datetime.datetime.fromisoformat(run["date"]).utcoffset() == \
        datetime.timedelta(0)


def test_a_gpu_machine_is_of_a_gpu_kind(monkeypatch):
    """A GPU's figures go to a gpu-<name> file, not the host CPU's."""
    monkeypatch.setattr(recording.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(recording.torch.cuda, "get_device_name", lambda: "NVIDIA H200")
    machine = recording.machine_description()
    assert (machine["gpu"], machine["kind"]) == ("NVIDIA H200", "gpu-nvidia-h200")


def test_machine_busy_time_counts_every_state_but_idle_and_iowait(monkeypatch):
    """/proc/stat's cpu line: user nice system idle iowait irq softirq steal (guest time is already in
    user), in clock ticks."""
    real_open = open

    def open_with_stub_stat(path, *arguments, **options):
        if path == "/proc/stat":
            return io.StringIO("cpu  1000 20 300 99999 7777 4 5 60 11 0\ncpu0 500 10 150 50000 3888 2 2 30 5 0\n")
        return real_open(path, *arguments, **options)

    monkeypatch.setattr(recording, "open", open_with_stub_stat, raising=False)
    monkeypatch.setattr(recording.os, "sysconf", lambda name: 100)
    assert recording._machine_busy_seconds() == pytest.approx((1000 + 20 + 300 + 4 + 5 + 60) / 100)


def test_other_processes_share_is_their_cpu_time_over_wall_time_and_cores(monkeypatch):
    """Over 4 s on 2 cores the machine used 10 CPU seconds, 4 of them this process's and its
    children's: the others used 6 of the 8 available."""
    clock = {"wall": 10.0, "busy": 100.0, "own": 50.0}
    monkeypatch.setattr(recording.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(recording, "_machine_busy_seconds", lambda: clock["busy"])
    monkeypatch.setattr(recording, "_own_cpu_seconds", lambda: clock["own"])
    monkeypatch.setattr(recording.os, "cpu_count", lambda: 2)
    contention = recording.CpuContention()
    clock.update(wall=14.0, busy=110.0, own=54.0)
    assert contention.other_share() == 0.75
    assert recording.run_description("full", contention)["other_cpu_share"] == 0.75
    clock.update(busy=103.0)  # clock ticks round down: the machine seems to have used less than this process
    assert contention.other_share() == 0.0
    monkeypatch.setattr(recording, "_machine_busy_seconds", lambda: None)  # no /proc/stat
    assert "other_cpu_share" not in recording.run_description("full", contention)
    assert "other_cpu_share" not in recording.run_description("full")


def test_own_cpu_time_counts_the_children_waited_for():
    """Each case's peak-memory step runs in a child process that the run waits for: left out, its CPU time
    showed as other processes' share of the CPUs."""
    before = recording._own_cpu_seconds()
    spin = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 1: pass"
    subprocess.run([sys.executable, "-c", spin], check=True, timeout=120)
    assert recording._own_cpu_seconds() - before >= 0.9


def test_a_finished_run_keeps_other_processes_share_of_the_cpus(monkeypatch):
    """The share is taken when the run ends: a run built from its start's description recorded none."""
    monkeypatch.setattr(recording, "commit", lambda: "aaa")
    contention = types.SimpleNamespace(other_share=lambda: 0.25)
    started = recording.run_description("full")
    assert recording.finished_run(started, "full", contention)["other_cpu_share"] == contention.other_share()


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_another_process_busy_during_the_run_is_seen():
    """A process that is not this one (nor a child waited for) keeps a core busy for a second: most of
    that core shows as the others' share (more if anything else ran meanwhile)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        contention = recording.CpuContention()
        time.sleep(1.0)
        share = contention.other_share()  # before the spinner is reaped, which would make its time the children's
    finally:
        spinner.kill()
        spinner.wait()
    assert share >= 0.6 / os.cpu_count()


def test_machine_kind_is_a_file_name():
    assert recording.machine_kind({"cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz", "logical_cores": 2}) == "cpu-intel-xeon-2c"
    assert recording.machine_kind({"cpu": "AMD EPYC 7B13", "logical_cores": 16}) == "cpu-amd-epyc-7b13-16c"
    assert recording.machine_kind({"gpu": "NVIDIA H100 80GB HBM3"}) == "gpu-nvidia-h100-80gb-hbm3"


def test_normalize_case_reads_cpu_and_gpu_benchmarks_and_leaves_the_others():
    row = render.normalize_case(word_region_case("fused", "forward", "float32", 64, 0.25, 12.5))
    assert (row["op"], row["implementation"], row["N"], row["seconds"], row["peak_mib"]) == (
        "word_region", "fused", 64, 0.25, 12.5)

    gpu = case("benchmarks/test_word_region_gpu.py::t", 0.0, implementation="cuda", dtype="bfloat16", N=4096,
               passes="forward_backward", peak_gb=2**30 / 1e9, ms=20.0, useful_tflops=150.0)
    row = render.normalize_case(gpu)
    assert row["seconds"] == pytest.approx(0.02) and row["useful_gflops"] == pytest.approx(150000.0)
    assert row["peak_mib"] == pytest.approx(1024.0) and row["memory"] == "max allocated"

    assert render.normalize_case(case("benchmarks/test_models.py::t", 0.1, n=256, d=256)) is None
    assert render.normalize_case(case("benchmarks/test_sweep.py::t", 0.0, kind="sweep", op="word_region",
                                      implementation="fused", passes="forward", dtype="float32",
                                      shape={"T": 22})) is None


def test_comparison_table_divides_the_reference_by_each_row():
    rows = [render.normalize_case(c) for c in (
        word_region_case("reference", "forward_backward", "float32", 64, 2.0, 1000.0),
        word_region_case("fused", "forward_backward", "float32", 64, 0.5, 10.0),
        word_region_case("fused", "forward_backward", "float32", 512, 30.0, 80.0),
    )]
    lines = render.comparison_tables(rows, {(None, None): "r1"})
    fused_64 = next(line for line in lines if line.startswith("| fused | float32 | 64 |"))
    assert "| 500.0 ms |" in fused_64 and "| 4.00x | 100.0x | r1 |" in fused_64
    fused_512 = next(line for line in lines if line.startswith("| fused | float32 | 512 |"))
    assert "| 30.00 s |" in fused_512 and fused_512.endswith("| - | - | r1 |")  # no reference at 512
    assert lines.index(fused_64) < next(i for i, line in enumerate(lines) if line.startswith("| reference"))


def test_the_throughput_columns_show_each_cases_own_figures():
    """Useful GFLOP/s and its fractions of the fp32 and of the same-dtype matmul, each from its own field (not
    the matmul's GFLOP/s, nor one fraction for the other), the fractions as percentages."""
    measured = word_region_case("fused", "forward", "bfloat16", 64, 0.5, 10.0, gflops=12.5, fraction=0.25)
    measured["extra_info"].update(matmul_gflops=50.0, matmul_gflops_same_dtype=250.0,
                                  fraction_of_matmul_same_dtype=0.05)
    info = measured["extra_info"]
    (row,) = [line for line in render.comparison_tables([render.normalize_case(measured)], {(None, None): "r1"})
              if line.startswith("| fused |")]
    assert row == (f"| fused | bfloat16 | 64 | {1e3 * info['seconds']:.1f} ms | {info['useful_gflops']:.1f} "
                   f"| {100 * info['fraction_of_matmul']:.0f}% | {100 * info['fraction_of_matmul_same_dtype']:.0f}% "
                   f"| {info['peak_rss_rise_mib']:.1f} | - | - | r1 |")


def test_the_ratios_take_the_fp32_reference_and_without_one_the_reference_of_the_rows_dtype():
    """On CPU each dtype's rows are compared with the fp32 reference; where none ran at that N (a selection of
    one dtype), its tables showed no ratio, so a kernel slower than the reference went unsaid."""
    rows = [render.normalize_case(c) for c in (
        word_region_case("reference", "forward", "float32", 64, 2.0, 1000.0),
        word_region_case("reference", "forward", "bfloat16", 64, 1.0, 500.0),
        word_region_case("fused", "forward", "bfloat16", 64, 0.5, 10.0),
        word_region_case("reference", "forward", "bfloat16", 128, 1.0, 500.0),
        word_region_case("fused", "forward", "bfloat16", 128, 2.0, 10.0),
    )]
    lines = render.comparison_tables(rows, {(None, None): "r1"})
    assert "| 4.00x | 100.0x | r1 |" in next(line for line in lines if line.startswith("| fused | bfloat16 | 64 |"))
    assert "| 0.50x | 50.0x | r1 |" in next(line for line in lines if line.startswith("| fused | bfloat16 | 128 |"))


def test_on_the_gpu_each_row_is_compared_with_the_reference_of_its_own_dtype(tmp_path):
    """A GPU run measures the reference in bf16, fp16 and fp32: a bf16 kernel was divided by the fp32
    reference, and the bf16 reference showed a speed-up over it."""
    common = {"device": "NVIDIA H200", "commit": "c", "date": "d", "torch": "2.13", "N": 1024, "M": 1024,
              "passes": "forward"}
    lines = [{**common, "implementation": "triton", "dtype": "bfloat16", "ms": 40.0, "useful_tflops": 100.0,
              "peak_gb": 0.1},
             {**common, "implementation": "reference", "dtype": "bfloat16", "ms": 250.0, "useful_tflops": 18.0,
              "peak_gb": 60.0},
             {**common, "implementation": "reference", "dtype": "float32", "ms": 400.0, "useful_tflops": 10.0,
              "peak_gb": 80.0}]
    (tmp_path / "word_region_gpu_NVIDIA_H200.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (results,) = render.load_results(tmp_path)
    table = render.comparison_tables([render.normalize_case(c) for c in results["cases"]], {("c", "d"): "r1"})
    references = {line["dtype"]: line for line in lines if line["implementation"] == "reference"}
    for line in lines:
        reference = references[line["dtype"]]
        (row,) = [row for row in table if row.startswith(f"| {line['implementation']} | {line['dtype']} | 1024 |")]
        assert row.endswith(f"| {reference['ms'] / line['ms']:.2f}x | {reference['peak_gb'] / line['peak_gb']:.1f}x "
                            "| r1 |"), row


def test_a_memory_cases_time_is_marked_as_one_step():
    """The N=65536 memory case times one step in a fresh process, not the median of warmed-up rounds that
    the column holds elsewhere."""
    memory = word_region_case("fused", "forward_backward", "float32", 65536, 0.0, 386.0)
    memory["extra_info"].update(kind="memory", seconds=47.2)
    timed = word_region_case("fused", "forward_backward", "float32", 64, 0.5, 10.0)
    lines = render.comparison_tables([render.normalize_case(c) for c in (memory, timed)], {(None, None): "r1"})
    assert "| 47.20 s (one step, fresh process) |" in next(line for line in lines if "| 65536 |" in line)
    assert "| 500.0 ms |" in next(line for line in lines if "| 64 |" in line)


def test_the_tables_show_the_median_of_the_rounds_not_their_mean():
    """RESULTS.md promises medians: one slow round (a page fault, another job) moves the mean, not the median."""
    rounds = [0.2, 0.3, 1.9]
    stats = {"median": statistics.median(rounds), "mean": statistics.mean(rounds), "rounds": len(rounds)}
    timed = word_region_case("fused", "forward", "float32", 64, statistics.median(rounds), 10.0)
    other = case("benchmarks/test_models.py::t[x]", 0.0, images_per_second=900.0)
    for measured in (timed, other):
        measured["stats"] = stats
    median_cell = f"| {1e3 * statistics.median(rounds):.1f} ms |"
    (timed_row,) = [line for line in render.comparison_tables([render.normalize_case(timed)], {(None, None): "r1"})
                    if line.startswith("| fused |")]
    (other_row,) = [line for line in render.other_table([other], {(None, None): "r1"})
                    if line.startswith("| benchmarks/test_models.py")]
    assert median_cell in timed_row and median_cell in other_row, (timed_row, other_row)


def test_sweep_table_marks_lower_bounds_and_steps_over_budget():
    sweeps = [
        {"op": "word_region", "implementation": "reference", "budget_mib": 128, "largest_fitting_n": 8,
         "stopped_by": "memory", "steps": [{"N": 8, "fits": True, "seconds": 0.02, "peak_rss_rise_mib": 11.0},
                                           {"N": 32, "fits": False, "seconds": 0.5, "peak_rss_rise_mib": 150.0}]},
        {"op": "word_region", "implementation": "chunked_checkpointed", "budget_mib": 128, "largest_fitting_n": 256,
         "stopped_by": "time", "steps": [{"N": 256, "fits": True, "seconds": 40.0, "peak_rss_rise_mib": 90.0}]},
        {"op": "word_region", "implementation": "compiled_reference", "budget_mib": 128, "largest_fitting_n": None,
         "stopped_by": "memory", "steps": [{"N": 32, "fits": False, "out_of_memory": True}]},
    ]
    cases = [{"extra_info": sweep, "commit": "c", "date": "d"} for sweep in sweeps]
    lines = render.sweep_table(cases, {("c", "d"): "r1"})
    assert "| reference | 128 | 8 | memory | 8 (20.0 ms, 11), 32 (500.0 ms, 150, over) | r1 |" in lines[4]
    assert "| chunked_checkpointed | 128 | >= 256 | time |" in lines[5]
    assert "| compiled_reference | 128 | none | memory | 32 (out of memory) |" in lines[6]


def test_render_shows_full_mode_when_present_with_gpu_lines_and_a_plot(tmp_path):
    results = recording.merge_results(None, MACHINE, run("quick", "a"), [
        word_region_case("fused", "forward_backward", "float32", 8, 0.01, 2.0),
        case("benchmarks/test_models.py::t[x]", 0.03, images_per_second=900.0)])
    results = recording.merge_results(results, MACHINE, run("full", "bb"), [
        word_region_case("reference", "forward_backward", "float32", 128, 12.0, 3500.0),
        word_region_case("fused", "forward_backward", "float32", 128, 3.0, 20.0)])
    (tmp_path / "cpu-amd-epyc-7b13-2c.json").write_text(json.dumps(results))
    gpu_line = {"device": "NVIDIA H100", "commit": "c", "date": "d", "torch": "2.13", "implementation": "triton",
                "dtype": "bfloat16", "N": 4096, "M": 4096, "passes": "forward", "peak_gb": 1.0, "ms": 5.0,
                "useful_tflops": 100.0}
    (tmp_path / "word_region_gpu_NVIDIA_H100.jsonl").write_text(json.dumps(gpu_line) + "\n")
    (tmp_path / "pytest_benchmark_output.json").write_text(json.dumps({"benchmarks": []}))

    markdown = render.render(tmp_path, tmp_path / "RESULTS.md")

    assert (tmp_path / "RESULTS.md").read_text() == markdown
    assert "| fused | float32 | 128 | 3.00 s |" in markdown and "| 4.00x | 175.0x |" in markdown
    assert "| fused | float32 | 8 |" not in markdown and "test_models" not in markdown  # quick cases hidden
    assert "## word_region_gpu_NVIDIA_H100: NVIDIA H100" in markdown and "| triton | bfloat16 | 4096 | 5.0 ms |" in markdown
    assert "GPU (word_region_gpu_*.jsonl): mean of 10 rounds" in markdown  # the GPU benchmark's `ms` is a mean
    # The GPU benchmark has no quick mode: its lines are never labelled as CI shapes that rank nothing.
    gpu_section = markdown.split("## word_region_gpu_NVIDIA_H100")[1]
    assert "quick mode only" not in gpu_section and "full mode" in gpu_section
    quick_only = {"name": "quick", "machine": MACHINE, "runs": results["runs"][:1],
                  "cases": [entry for entry in results["cases"].values() if entry["mode"] == "quick"]}
    assert any(line.startswith("- quick mode only") for line in render.machine_section(quick_only, None))
    assert render.FULL_COMMAND in markdown
    for name in ("cpu-amd-epyc-7b13-2c.png", "word_region_gpu_NVIDIA_H100.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_names_every_run_a_shown_figure_comes_from_and_marks_a_dirty_tree(tmp_path):
    """Five runs, the first's case replaced by the second's: the figures come from runs 2 to 5, more
    than the three newest, and run 3 measured uncommitted changes."""
    results = None
    commits = ["1111", "22222", "333333-dirty", "4444444", "55555555"]

    def run_of(commit: str) -> dict:
        return {**run("full", commit), "command": f"pytest -k {commit}"}

    for commit, implementation in zip(commits, ["fused", "fused", "reference", "chunked_checkpointed",
                                                "compiled_reference"]):
        size = 64 if commit != "4444444" else 128
        results = recording.merge_results(results, MACHINE, run_of(commit),
                                          [word_region_case(implementation, "forward", "float32", size, 1.0, 5.0)])
    sweep = case("benchmarks/test_sweep.py::t", 0.0, kind="sweep", op="word_region", implementation="fused",
                 passes="forward_backward", dtype="float32", budget_mib=64, largest_fitting_n=8, stopped_by="sizes",
                 steps=[{"N": 8, "fits": True, "seconds": 0.01, "peak_rss_rise_mib": 1.0}])
    results = recording.merge_results(results, MACHINE, run_of("55555555"), [
        sweep, case("benchmarks/test_models.py::t[x]", 0.03, images_per_second=900.0)])
    (tmp_path / "cpu.json").write_text(json.dumps(results))

    markdown = render.render(tmp_path, tmp_path / "RESULTS.md")

    run_lines = [line for line in markdown.splitlines() if line.startswith("- r")]
    assert [line.split(": commit ")[1].split()[0].rstrip(";") for line in run_lines] == commits[1:]
    assert all(f"pytest -k {commit}" in line for line, commit in zip(run_lines, commits[1:]))
    assert "pytest -k 1111" not in markdown  # its only case was measured again
    assert "DIRTY TREE" in run_lines[1] and "commit 333333" in run_lines[1]
    assert sum("DIRTY TREE" in line for line in run_lines) == 1
    dates = {commit: run("full", commit)["date"] for commit in commits}
    assert all(dates[commit] in line for line, commit in zip(run_lines, commits[1:]))
    assert all("AMD EPYC 7B13, 2 logical cores" in line for line in run_lines)
    labels = {commit: line.split(":")[0][2:] for line, commit in zip(run_lines, commits[1:])}
    rows = {line.split(" | ")[0][2:]: line.rstrip(" |").rsplit("| ", 1)[1]
            for line in markdown.splitlines() if line.startswith("| ") and " float32 | " in line}
    assert rows == {"fused": labels["22222"], "reference": labels["333333-dirty"],
                    "chunked_checkpointed": labels["4444444"], "compiled_reference": labels["55555555"]}
    sweep_row = next(line for line in markdown.splitlines() if line.startswith("| word_region | fused | 64 |"))
    model_row = next(line for line in markdown.splitlines() if line.startswith("| benchmarks/test_models.py"))
    assert sweep_row.endswith(f"| {labels['55555555']} |") and model_row.endswith(f"| {labels['55555555']} |")
    # The sweep has its own table: "Other benchmarks" holds the cases no other table shows.
    other_rows = markdown.split("#### Other benchmarks\n\n")[1].split("\n\n")[0].splitlines()[2:]
    assert other_rows == [model_row]


def test_a_runs_note_on_its_commit_and_its_platform_are_on_its_run_line(tmp_path):
    """The note that the checkout moved during a CPU run, and the GPU file's note on what its commit names, are
    the only provenance of their figures beyond the commit."""
    cpu_note, gpu_note = "the checkout was at def when the run ended", "tracked files of this commit"
    results = recording.merge_results(None, MACHINE, {**run("full", "abc"), "commit_note": cpu_note},
                                      [word_region_case("fused", "forward", "float32", 8, 0.01, 2.0)])
    (tmp_path / "cpu.json").write_text(json.dumps(results))
    gpu_line = {"device": "NVIDIA H100", "commit": "c", "date": "d", "commit_note": gpu_note,
                "implementation": "triton", "dtype": "bfloat16", "N": 64, "passes": "forward", "ms": 1.0,
                "useful_tflops": 1.0, "peak_gb": 0.5}
    (tmp_path / "word_region_gpu_NVIDIA_H100.jsonl").write_text(json.dumps(gpu_line) + "\n")

    markdown = render.render(tmp_path, tmp_path / "RESULTS.md")

    cpu_line, gpu_run_line = [line for line in markdown.splitlines() if line.startswith("- r")]
    assert cpu_line.startswith(f"- r1: commit abc ({cpu_note}); {run('full', 'abc')['date']}")
    assert f"on {MACHINE['cpu']}, {MACHINE['logical_cores']} logical cores, {MACHINE['platform']}:" in cpu_line
    assert gpu_run_line.startswith(f"- r1: commit c ({gpu_note}); d")


def test_a_case_whose_run_the_file_lacks_is_labelled_with_its_own_commit_and_date():
    """A results file cut by hand (its runs list emptied) still names where each figure comes from."""
    listed, unlisted = run("full", "abc"), {"commit": "lost", "date": "2026-04-04T00:00:00+00:00"}
    lines, labels = render.run_list([listed], [{"commit": listed["commit"], "date": listed["date"]}, unlisted])
    assert lines[1] == f"- r2: commit {unlisted['commit']}; {unlisted['date']}"
    assert labels == {render.run_key(listed): "r1", render.run_key(unlisted): "r2"}


def test_a_bar_in_an_extra_info_value_does_not_split_the_other_benchmarks_row():
    lines = render.other_table([{**case("m::t", 0.5, note="a|b"), "commit": "c", "date": "d"}], {("c", "d"): "r1"})
    assert lines[4] == "| m::t | 500.0 ms | note=a/b | r1 |"


def test_one_commits_runs_on_several_dates_are_one_run_line_giving_the_range():
    """Runs alike but for their date (one commit measured in several sessions) share a label; the line says the
    first and last date and how many there were, in any order of the file."""
    dates = ["2026-03-02T00:00:00+00:00", "2026-01-05T00:00:00+00:00", "2026-02-01T00:00:00+00:00"]
    runs = [{**run("full", "abc"), "date": date} for date in dates] + [run("full", "later")]
    lines, labels = render.run_list(runs, [{"commit": r["commit"], "date": r["date"]} for r in runs])
    assert lines[0].startswith(f"- r1: commit abc; dated {dates[1]} to {dates[0]} (3 dates), torch 2.13.0")
    assert lines[1].startswith(f"- r2: commit later; {run('full', 'later')['date']}, torch")
    assert labels == {**{("abc", date): "r1" for date in dates}, ("later", run("full", "later")["date"]): "r2"}


def test_a_runs_line_says_how_much_of_the_cpus_other_processes_used():
    """Two runs of one commit, one beside another job: separate lines, the share on the busy one's only
    (older runs did not record it)."""
    quiet, busy = run("full", "abc"), {**run("full", "abc"), "date": "2026-05-05T00:00:00+00:00", "other_cpu_share": 0.5}
    lines, labels = render.run_list([quiet, busy], [{"commit": "abc", "date": r["date"]} for r in (quiet, busy)])
    assert len(lines) == 2 and "other processes" not in lines[0]
    assert "other processes used 50% of its CPUs meanwhile" in lines[1]
    assert set(labels.values()) == {"r1", "r2"}


def test_gpu_lines_that_ran_out_of_memory_are_table_rows_and_the_latest_line_of_a_case_wins(tmp_path):
    common = {"device": "NVIDIA H100", "torch": "2.11", "dtype": "bfloat16", "M": 1024, "N": 1024,
              "command": "pytest benchmarks/test_word_region_gpu.py"}
    measured = {"peak_gb": 2**20 / 1e9, "ms": 8.0, "useful_tflops": 1.0}
    lines = [
        {**common, "commit": "a", "date": "1", "implementation": "reference", "passes": "forward_backward",
         **measured},
        {**common, "commit": "b", "date": "2", "implementation": "reference", "passes": "forward_backward",
         "out_of_memory": True},
        {**common, "commit": "a", "date": "1", "implementation": "triton", "passes": "forward_backward",
         "out_of_memory": True},
        {**common, "commit": "b", "date": "2", "implementation": "triton", "passes": "forward_backward", **measured},
        {**common, "commit": "b", "date": "2", "implementation": "reference", "passes": "forward",
         "out_of_memory": True},
        {**common, "commit": "b", "date": "2", "implementation": "triton", "passes": "forward", **measured},
    ]
    (tmp_path / "word_region_gpu_NVIDIA_H100.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    markdown = render.render(tmp_path, tmp_path / "RESULTS.md")

    assert "Other benchmarks" not in markdown
    for passes in ("forward", "forward+backward"):
        table = markdown.split(f"#### word_region, {passes}\n\n")[1].split("\n\n")[0].splitlines()
        assert table[2:] == [
            "| triton | bfloat16 | 1024 | 8.0 ms | 1000.0 | - | - | 1.0 | - | - | r1 |",
            "| reference | bfloat16 | 1024 | out of memory | - | - | - | - | - | - | r1 |",
        ]
    run_lines = [line for line in markdown.splitlines() if line.startswith("- r")]
    assert len(run_lines) == 1 and "commit b;" in run_lines[0]  # commit a's lines were all replaced
    assert (tmp_path / "word_region_gpu_NVIDIA_H100.png").exists()  # the measured rows are plotted


def test_the_gpu_figures_are_reproduced_with_the_script_whose_bench_stage_runs_them(tmp_path):
    """RESULTS.md sends a reader to run_gpu.sh, whose bench stage runs the GPU benchmarks on their
    own, not to the full-mode pytest command, which reaches them past their deadline."""
    markdown = render.render(tmp_path, tmp_path / "RESULTS.md")
    (gpu_line,) = [line for line in markdown.splitlines() if line.startswith("GPU:")]
    assert "pytest" not in gpu_line, gpu_line
    command = gpu_line.split("`")[1].split()
    assert command[0] == "bash" and (_ROOT / command[1]).is_file()
    bench_stage = (_ROOT / command[1]).read_text().split("\nbench() {")[1].split("\n}")[0]
    assert "pytest" in bench_stage and "benchmarks/test_word_region_gpu.py" in bench_stage


def test_the_page_states_the_work_from_which_a_step_is_timed_once(tmp_path, monkeypatch):
    """It said steps of 3 s and more, planned at 50 GFLOP/s: the fused ops run such steps in under a second."""
    monkeypatch.setattr("benchmarks.cases.FULL", True)
    markdown = render.render(tmp_path, tmp_path / "RESULTS.md")
    stated = re.search(r"full mode: 3 rounds, 1 for steps of (\d+) GFLOP of useful work and more", markdown)
    assert stated, markdown.splitlines()[:12]
    gflop = int(stated[1])
    assert rounds_of(gflop * 10**9) == (1, 1) and rounds_of(gflop * 10**9 - 1) == (3, 1)


def _pytest_cases_with_tgfr_results(tmp_path: Path, cases: str, results: Path) -> subprocess.CompletedProcess:
    """A pytest session, in a child process, of the test file `cases` (its source) under tmp_path, merged into
    `results`."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_cases.py").write_text(textwrap.dedent(cases))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "benchmarks.conftest",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path / "test_cases.py"),
         "--tgfr-results", str(results)],
        # quick mode even inside a full benchmark run, whose TGFR_BENCH_FULL=1 the child would inherit
        cwd=_ROOT, capture_output=True, text=True, timeout=300,
        env={name: value for name, value in os.environ.items() if name != "TGFR_BENCH_FULL"},
    )


def test_results_file_keeps_only_the_cases_of_tests_that_passed(tmp_path):
    """A failed test's timing (here of a wrong, non-finite result) is not merged, and a benchmark
    whose function raised (caught by its test, as on running out of memory) neither is nor stops
    the other cases from being written."""
    cases = """
        import math
        import pytest

        def test_passes(benchmark):
            benchmark.pedantic(lambda: 1.0, rounds=1, iterations=1)

        def test_wrong_result(benchmark, results_record):
            value = benchmark.pedantic(lambda: float("nan"), rounds=1, iterations=1)
            results_record({"kind": "sweep"})
            assert math.isfinite(value)

        def test_step_raises(benchmark):
            def step():
                raise MemoryError("simulated")
            try:
                benchmark.pedantic(step, rounds=1, iterations=1)
            except MemoryError:
                pytest.skip("out of memory")
    """
    results = tmp_path / "results.json"
    run = _pytest_cases_with_tgfr_results(tmp_path, cases, results)
    assert "1 failed, 1 passed, 1 skipped" in run.stdout, run.stdout + run.stderr
    cases = json.loads(results.read_text())["cases"]
    assert sorted(cases) == ["quick::test_cases.py::test_passes"], sorted(cases)


@pytest.mark.parametrize("interrupted_at", ["warm-up", "timing"])
def test_a_benchmark_stopped_by_ctrl_c_is_not_merged_and_the_finished_ones_are(tmp_path, interrupted_at):
    """Ctrl-C raises KeyboardInterrupt inside the timed function: pytest reports no call for that test, and
    its partial timings (rounds so far, or none in its warm-up) are not a case."""
    first_interrupted_call = {"warm-up": 1, "timing": 3}[interrupted_at]
    cases = f"""
        def test_finished(benchmark):
            benchmark.pedantic(lambda: 1.0, rounds=1, iterations=1)

        def test_stopped(benchmark):
            calls = []
            def step():
                calls.append(1)
                if len(calls) >= {first_interrupted_call}:
                    raise KeyboardInterrupt
            benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    """
    results = tmp_path / "results.json"
    run = _pytest_cases_with_tgfr_results(tmp_path, cases, results)
    assert run.returncode == pytest.ExitCode.INTERRUPTED, run.stdout + run.stderr
    cases = json.loads(results.read_text())["cases"]
    assert sorted(cases) == ["quick::test_cases.py::test_finished"], sorted(cases)


def _pytest_one_benchmark_with_tgfr_results(tmp_path: Path, results: Path | str, package_root: Path = _ROOT,
                                            after: str = "", environment: dict | None = None
                                            ) -> subprocess.CompletedProcess:
    """A pytest session, in a child process, of one benchmark under tmp_path merged into `results`,
    with the benchmarks package (its conftest and recording) of `package_root`; `after`: a line of Python
    the benchmark runs after its timing, `environment`: variables set for the session."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_cases.py").write_text(f"import os\n\ndef test_passes(benchmark):\n    benchmark(lambda: None)\n"
                                            f"    {after or 'pass'}\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "benchmarks.conftest",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path / "test_cases.py"),
         "--tgfr-results", str(results)],
        cwd=package_root, capture_output=True, text=True, timeout=300,
        # quick mode even inside a full benchmark run; tgfr from this checkout
        env={**{name: value for name, value in os.environ.items() if name != "TGFR_BENCH_FULL"},
             "PYTHONPATH": os.pathsep.join([str(package_root), str(_ROOT)]), **(environment or {})},
    )


def test_a_session_records_the_commit_it_started_at(tmp_path):
    """The plugin takes the commit when the session starts (the code it imports and measures); the
    benchmark here moves it ($TGFR_COMMIT, which recording.commit reads) as a commit made during the run would."""
    results = tmp_path / "results.json"
    run = _pytest_one_benchmark_with_tgfr_results(tmp_path, results, after="os.environ['TGFR_COMMIT'] = 'moved'",
                                                  environment={"TGFR_COMMIT": "started"})
    assert run.returncode == pytest.ExitCode.OK, run.stdout + run.stderr
    (entry,) = json.loads(results.read_text())["runs"]
    assert (entry["commit"], entry["commit_note"]) == ("started", "the checkout was at moved when the run ended")


def test_tgfr_results_auto_merges_into_the_machine_kinds_file(benchmarks_checkout):
    """`--tgfr-results auto` writes benchmarks/results/<machine kind>.json, here of a copy of the
    package, so that this checkout's results files are left alone."""
    results = benchmarks_checkout / "benchmarks" / "results"
    files_before = set(results.iterdir())
    pytest_run = _pytest_one_benchmark_with_tgfr_results(benchmarks_checkout, "auto", package_root=benchmarks_checkout)
    assert pytest_run.returncode == pytest.ExitCode.OK, pytest_run.stdout + pytest_run.stderr
    written = results / f"{recording.machine_description()['kind']}.json"
    assert set(results.iterdir()) - files_before == {written}
    assert list(json.loads(written.read_text())["cases"]) == ["quick::test_cases.py::test_passes"]


def test_tgfr_results_of_another_machine_kind_is_a_usage_error_before_the_run(tmp_path):
    """pytest stops with the file and both kinds named, no traceback, no test run, the file unchanged."""
    other = {**MACHINE, "kind": "cpu-another-machine-2c"}
    results = tmp_path / "cpu-another-machine-2c.json"
    recording.write_results(results, other, run("quick", "a"), [case("f::x", 1.0)])
    written = results.read_text()
    pytest_run = _pytest_one_benchmark_with_tgfr_results(tmp_path, results)
    output = pytest_run.stdout + pytest_run.stderr
    kind = recording.machine_description()["kind"]
    assert pytest_run.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert (f"ERROR: --tgfr-results: results file {results}: machine kind is 'cpu-another-machine-2c', "
            f"not this run's {kind!r}") in output, output
    assert "Traceback" not in output and "passed" not in output, output
    assert results.read_text() == written


@pytest.mark.parametrize("content, message", [
    ([], "must hold a JSON object, got list"),
    ({"format": recording.FORMAT_VERSION, "runs": [], "cases": {}}, "machine must be an object holding a string kind"),
    ({"format": recording.FORMAT_VERSION, "machine": {}, "runs": [], "cases": {}},
     "machine must be an object holding a string kind, got {}"),
    ({"format": recording.FORMAT_VERSION, "machine": MACHINE, "cases": {}}, "runs must be a JSON array, got NoneType"),
    ({"format": recording.FORMAT_VERSION, "machine": MACHINE, "runs": [], "cases": []},
     "cases must be a JSON object, got list"),
])
def test_a_results_file_without_what_merging_reads_is_named(tmp_path, content, message):
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"^results file {re.escape(str(path))}: {re.escape(message)}"):
        recording.write_results(path, MACHINE, run("quick", "a"), [case("f::x", 1.0)])
    assert json.loads(path.read_text()) == content


def test_a_results_file_nested_past_the_recursion_limit_is_invalid_json_naming_it(tmp_path):
    path = tmp_path / "cpu.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match=f"^results file {re.escape(str(path))} is not valid JSON: "):
        recording.write_results(path, MACHINE, run("quick", "a"), [case("f::x", 1.0)])


def test_tgfr_results_that_is_not_a_results_file_is_a_usage_error_before_the_run(tmp_path):
    """A JSON list given to --tgfr-results: pytest names the file, not an INTERNALERROR traceback."""
    results = tmp_path / "results.json"
    results.write_text('[{"format": 1}]')
    pytest_run = _pytest_one_benchmark_with_tgfr_results(tmp_path, results)
    output = pytest_run.stdout + pytest_run.stderr
    assert pytest_run.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert f"ERROR: --tgfr-results: results file {results}: must hold a JSON object, got list" in output, output
    assert "Traceback" not in output and "INTERNALERROR" not in output, output


@pytest.mark.parametrize("where, message", [
    ("folder", "--tgfr-results {results} is a folder, not a file"),
    ("file/results.json", "--tgfr-results {results}: {tmp_path}/file is a file, not a folder"),
], ids=["a folder", "under a file"])
def test_tgfr_results_that_cannot_be_written_is_a_usage_error_before_the_run(tmp_path, where, message):
    """Found before the benchmarks run, not by the write after them (the run's measurements lost)."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    results = tmp_path / where
    pytest_run = _pytest_one_benchmark_with_tgfr_results(tmp_path, results)
    output = pytest_run.stdout + pytest_run.stderr
    assert pytest_run.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert f"ERROR: {message.format(results=results, tmp_path=tmp_path)}" in output, output
    assert "Traceback" not in output and "INTERNALERROR" not in output and "passed" not in output, output


def test_tgfr_results_in_a_folder_this_process_may_not_write_is_a_usage_error(tmp_path, monkeypatch):
    """os.access stands in for a read-only folder (root, who runs these tests in CI, may write any)."""
    from benchmarks import conftest
    folder = tmp_path / "read-only"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != folder and real_access(path, mode))
    config = types.SimpleNamespace(stash={}, getoption=lambda name: str(folder / "results.json"))
    with pytest.raises(pytest.UsageError, match=f"^--tgfr-results {re.escape(str(folder / 'results.json'))}: "
                                                f"{re.escape(str(folder))} is not writable$"):
        conftest.pytest_configure(config)


def test_tgfr_results_that_cannot_be_read_is_a_usage_error(tmp_path, monkeypatch):
    """An unreadable file (permissions, an I/O error) stands in by a failing read_text: root, who runs these
    tests in CI, may read any file."""
    from benchmarks import conftest
    results = tmp_path / "results.json"
    results.write_text("{}")

    def unreadable(self, *arguments, **options):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", unreadable)
    config = types.SimpleNamespace(stash={}, getoption=lambda name: str(results))
    with pytest.raises(pytest.UsageError, match=rf"^--tgfr-results: \[Errno 13\] Permission denied: "
                                                rf"{re.escape(repr(str(results)))}$"):
        conftest.pytest_configure(config)


def test_a_results_file_that_fails_to_be_written_after_the_run_keeps_the_cases_in_a_file_it_names(tmp_path):
    """A folder made where the file was due stands in for any write failing after the benchmarks ran."""
    results = tmp_path / "results.json"
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    pytest_run = _pytest_one_benchmark_with_tgfr_results(tmp_path, results, after=f"os.mkdir({str(results)!r})",
                                                         environment={"TMPDIR": str(temporary)})
    output = pytest_run.stdout + pytest_run.stderr
    assert pytest_run.returncode == pytest.ExitCode.INTERNAL_ERROR, output
    (fallback,) = temporary.glob("tgfr-results-*/results.json")
    assert re.search(f"tgfr: could not write {re.escape(str(results))} \\(.*Is a directory.*\\); this run's 1 "
                     f"benchmark cases are in {re.escape(str(fallback))}$", output, re.MULTILINE), output
    assert "Traceback" not in output, output
    assert list(json.loads(fallback.read_text())["cases"]) == ["quick::test_cases.py::test_passes"]


def test_commit_is_unknown_without_git_on_path(monkeypatch, tmp_path):
    monkeypatch.delenv("TGFR_COMMIT", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no git
    assert recording.commit() == "unknown"
    monkeypatch.setenv("TGFR_COMMIT", "0123456789ab")
    assert recording.commit() == "0123456789ab"


def _checkout_commit(checkout: Path) -> str:
    """recording.commit() of the benchmarks package copied into `checkout`, without $TGFR_COMMIT."""
    environment = {name: value for name, value in os.environ.items() if name != "TGFR_COMMIT"}
    environment["PYTHONPATH"] = os.pathsep.join([str(checkout), str(_ROOT)])  # the checkout's copy
    return subprocess.run([sys.executable, "-c", "from benchmarks import recording; print(recording.commit())"],
                          cwd=checkout, env=environment, capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def test_commit_is_not_dirty_for_changes_to_the_harness_outputs_or_untracked_files(benchmarks_checkout):
    """A run merged into a tracked results file, RESULTS.md rendered again, and untracked scratch files
    leave the measured code as committed: the next run names the plain commit. A changed source file
    still marks it."""
    head = git(benchmarks_checkout, "rev-parse", "--short=12", "HEAD").strip()
    benchmarks = benchmarks_checkout / "benchmarks"
    recording.write_results(benchmarks / "results" / CHECKOUT_RESULTS[0], MACHINE, run("quick", "a"),
                            [case("f::x", 1.0)])
    (benchmarks / "RESULTS.md").write_text("rendered again\n")
    (benchmarks_checkout / "notes.txt").write_text("scratch\n")
    (benchmarks / "scratch.py").write_text("# not tracked\n")
    assert git(benchmarks_checkout, "status", "--porcelain").split() == [
        "M", "benchmarks/RESULTS.md", "M", f"benchmarks/results/{CHECKOUT_RESULTS[0]}",
        "??", "benchmarks/scratch.py", "??", "notes.txt"]
    assert _checkout_commit(benchmarks_checkout) == head

    with (benchmarks / "cases.py").open("a") as source:
        source.write("# an uncommitted change to measured code\n")
    assert _checkout_commit(benchmarks_checkout) == f"{head}-dirty"


def test_commit_is_unknown_in_a_tree_without_git_of_its_own_inside_another_repository(benchmarks_checkout):
    """A tree copied into another project (or a home folder under git): git, run there, climbs to the
    enclosing repository and named its commit (dirty for its own unrelated files), which never held this code."""
    shutil.rmtree(benchmarks_checkout / ".git")
    outer = benchmarks_checkout.parent
    (outer / "unrelated.txt").write_text("committed\n")
    git(outer, "init", "-q")
    git(outer, "add", "unrelated.txt")
    git(outer, "commit", "-q", "-m", "an unrelated project")
    (outer / "unrelated.txt").write_text("changed\n")
    assert git(benchmarks_checkout, "rev-parse", "--show-toplevel").strip() == str(outer)  # git does climb
    assert _checkout_commit(benchmarks_checkout) == "unknown"


def test_the_recorded_command_can_be_pasted_back(monkeypatch):
    argv = ["/usr/bin/python3", "-m", "pytest", "benchmarks/", "-k", "bfloat16 and 1024"]
    monkeypatch.setattr(sys, "orig_argv", argv)
    assert shlex.split(recording.run_description("quick")["command"]) == ["python3", *argv[1:]]


def test_pytest_benchmark_json_names_the_gpu_and_the_commit(monkeypatch):
    from benchmarks import conftest

    monkeypatch.setenv("TGFR_COMMIT", "0123456789ab")
    monkeypatch.setattr(conftest.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(conftest.torch.cuda, "get_device_name", lambda: "NVIDIA Stub GPU")
    machine_info = {"node": "gpu-host"}
    conftest.pytest_benchmark_update_machine_info(None, machine_info)
    assert machine_info == {"node": "gpu-host", "gpu": "NVIDIA Stub GPU", "tgfr_commit": "0123456789ab"}


def results_text(cases: dict, **contents) -> str:
    """A results file's text: format, machine and runs as a run writes them, then `contents`."""
    return json.dumps({"format": recording.FORMAT_VERSION, "machine": MACHINE, "runs": [], "cases": cases,
                       **contents})


SWEEP_WITHOUT_BUDGET = case("s::t", 0.0, kind="sweep", op="word_region", implementation="fused",
                            passes="forward_backward", dtype="float32", largest_fitting_n=8, stopped_by="sizes",
                            steps=[])
OP_CASE_WITHOUT_N = word_region_case("fused", "forward", "float32", 8, 0.1, 1.0)
OP_CASE_WITHOUT_N["extra_info"]["shape"] = {"M": 8}
SWEEP_STEP_WITHOUT_SECONDS = case("s::t", 0.0, **{**SWEEP_WITHOUT_BUDGET["extra_info"], "budget_mib": 64,
                                                  "steps": [{"N": 8, "fits": True, "peak_rss_rise_mib": 1.0}]})
GPU_LINE = {"implementation": "triton", "dtype": "bfloat16", "passes": "forward", "N": 8, "ms": 1.0,
            "useful_tflops": 1.0}


@pytest.mark.parametrize("name, text, message", [
    ("cpu.json", results_text({}, machine=None), "results file {path}: machine must be an object holding a string "
                                                 "kind, got None"),
    ("cpu.json", results_text({}, runs=None), "results file {path}: runs must be a JSON array, got NoneType"),
    ("cpu.json", results_text([]), "results file {path}: cases must be a JSON object, got list"),
    ("cpu.json", results_text({}, format=None), "results file {path}: format must be 1, got None"),
    # Skipped as pytest-benchmark's own output, which has no format, it was left off the page without a word.
    ("cpu.json", json.dumps({"format": recording.FORMAT_VERSION, "machine": MACHINE, "runs": []}),
     "results file {path}: cases must be a JSON object, got NoneType"),
    ("cpu.json", results_text({"full::s::t": SWEEP_WITHOUT_BUDGET}),
     "results file {path}: case 'full::s::t' lacks extra_info budget_mib"),
    ("cpu.json", results_text({"full::w": OP_CASE_WITHOUT_N}),
     "results file {path}: case 'full::w' extra_info shape must be an object holding a number N, got {{'M': 8}}"),
    ("cpu.json", results_text({"full::g": case("g::t", 1.0, useful_tflops=1.0, dtype="bfloat16", N=8)}),
     "results file {path}: case 'full::g' lacks extra_info implementation, passes"),
    ("cpu.json", results_text({"full::x": {"fullname": "x::t", "stats": {"median": 1.0}}}),
     "results file {path}: case 'full::x' lacks name"),
    ("cpu.json", results_text({"full::x": [1.0]}),
     "results file {path}: case 'full::x' must be a JSON object, got list"),
    ("cpu.json", results_text({"full::x": {**case("x::t", 1.0), "extra_info": [1.0]}}),
     "results file {path}: case 'full::x' extra_info must be a JSON object, got list"),
    ("word_region_gpu_X.jsonl", '{"implementation": "triton", "dtype": "bfloat16", "N": 8}\n',
     "{path}, line 1: a GPU case lacks passes"),
    ("word_region_gpu_X.jsonl", '\n[1, 2]\n', "{path}, line 2: a GPU case lacks implementation, dtype, passes, N"),
    # What the tables and the plot read must be of its kind: a KeyError, an AttributeError or matplotlib's
    # "Data cannot be log-scaled" named nothing.
    ("cpu.json", results_text({"full::s": SWEEP_STEP_WITHOUT_SECONDS}),
     "results file {path}: case 'full::s' extra_info steps[0] seconds must be a number, got "
     "{{'N': 8, 'fits': True, 'peak_rss_rise_mib': 1.0}}"),
    ("cpu.json", results_text({"full::w": word_region_case("fused", 1, "float32", 8, 0.1, 1.0)}),
     "results file {path}: case 'full::w' extra_info passes must be a string, got 1"),
    ("cpu.json", results_text({"full::w": {**word_region_case("fused", "forward", "float32", 8, "fast", 1.0),
                                           "stats": {"median": 0.1}}}),
     "results file {path}: case 'full::w' extra_info seconds must be a number or null, got 'fast'"),
    ("cpu.json", results_text({"full::x": {**case("x::t", 1.0), "stats": {"median": "1 s"}}}),
     "results file {path}: case 'full::x' stats must be a JSON object whose median is a number or null, "
     "got {{'median': '1 s'}}"),
    ("word_region_gpu_X.jsonl", json.dumps({**GPU_LINE, "N": "8"}) + "\n",
     "{path}, line 1: a GPU case's N must be a number, got '8'"),
    ("word_region_gpu_X.jsonl", json.dumps({**GPU_LINE, "N": True}) + "\n",  # JSON's true is no size
     "{path}, line 1: a GPU case's N must be a number, got True"),
    ("word_region_gpu_X.jsonl", json.dumps({**GPU_LINE, "ms": "3"}) + "\n",  # divided by 1e3 for the tables
     "{path}, line 1: a GPU case's ms must be a number, got '3'"),
    ("cpu.json", results_text({"full::s": {**SWEEP_STEP_WITHOUT_SECONDS, "extra_info": {
        **SWEEP_STEP_WITHOUT_SECONDS["extra_info"], "stopped_by": 5}}}),
     "results file {path}: case 'full::s' extra_info stopped_by must be a string, got 5"),
    ("cpu.json", results_text({"full::s": {**SWEEP_STEP_WITHOUT_SECONDS, "extra_info": {
        **SWEEP_STEP_WITHOUT_SECONDS["extra_info"], "largest_fitting_n": "8"}}}),
     "results file {path}: case 'full::s' extra_info largest_fitting_n must be a number or null, got '8'"),
    ("cpu.json", results_text({"full::s": {**SWEEP_STEP_WITHOUT_SECONDS, "extra_info": {
        **SWEEP_STEP_WITHOUT_SECONDS["extra_info"], "steps": [{"N": 8, "fits": "yes", "seconds": 1.0,
                                                               "peak_rss_rise_mib": 1.0}]}}}),
     "results file {path}: case 'full::s' extra_info steps[0] fits must be true or false, got "
     "{{'N': 8, 'fits': 'yes', 'seconds': 1.0, 'peak_rss_rise_mib': 1.0}}"),
])
def test_the_renderer_names_the_file_and_what_a_malformed_one_lacks(tmp_path, name, text, message):
    """A bare KeyError or AttributeError named neither; a results file is checked as a run merging into it
    checks it, and each case for what the tables and the plot read of it."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{re.escape(message.format(path=path))}$"):
        render.load_results(tmp_path)


@pytest.mark.parametrize("given, problem", [("missing", "no such folder"), ("file.json", "not a folder")])
def test_a_results_dir_that_is_no_folder_is_named_and_the_page_left_as_it_was(tmp_path, given, problem):
    """Read as an empty folder, a typo in --results-dir wrote "No results yet." over the page."""
    (tmp_path / "file.json").write_text(results_text({}))
    page = tmp_path / "RESULTS.md"
    page.write_text("earlier page\n")
    with pytest.raises(ValueError, match=f"^--results-dir {re.escape(str(tmp_path / given))}: {problem}$"):
        render.render(tmp_path / given, page)
    assert page.read_text() == "earlier page\n"


def test_the_plot_links_lead_from_the_pages_folder_to_the_plots_written(tmp_path):
    """The plots go into the results folder: a page written elsewhere linked results/<name>.png beside itself."""
    results_dir = tmp_path / "measured"
    results_dir.mkdir()
    measured = recording.merge_results(None, MACHINE, run("full", "abc"), [
        word_region_case("fused", "forward", "float32", size, 0.01 * size, float(size)) for size in (8, 16)])
    (results_dir / "cpu.json").write_text(json.dumps(measured))
    page = tmp_path / "pages" / "RESULTS.md"

    markdown = render.render(results_dir, page)

    (link,) = re.findall(r"^!\[cpu\]\((.+)\)$", markdown, re.MULTILINE)
    assert (page.parent / link).resolve() == (results_dir / "cpu.png").resolve()
    assert (page.parent / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_draws_each_ops_times_and_memory_with_its_own_sweep_only():
    """Two ops measured at two sizes, a sweep of one: each panel's lines are its op's seconds and peak MiB
    against N (forward+backward, the forward case left out), the sweep's steps on its op's panel only."""
    def op_case(op, size, seconds, peak_mib, passes="forward_backward"):
        measured = word_region_case("fused", passes, "float32", size, seconds, peak_mib)
        measured["extra_info"]["op"] = measured["name"] = op
        measured["fullname"] = f"{op}[{passes}-{size}]"
        return measured

    measured = [op_case("word_region", 8, 0.5, 3.0), op_case("word_region", 16, 2.0, 12.0),
                op_case("word_region", 32, 9.0, 40.0, passes="forward"),
                op_case("contrastive", 8, 0.01, 1.5), op_case("contrastive", 16, 0.03, 6.0)]
    steps = [{"N": 64, "fits": True, "seconds": 7.0, "peak_rss_rise_mib": 20.0},
             {"N": 128, "fits": False, "seconds": 30.0, "peak_rss_rise_mib": 90.0},
             {"N": 256, "fits": False, "out_of_memory": True}]
    sweep = case("benchmarks/test_sweep.py::t", 0.0, kind="sweep", op="word_region", implementation="fused",
                 passes="forward_backward", dtype="float32", budget_mib=64, largest_fitting_n=64, stopped_by="memory",
                 steps=steps)
    contents = recording.merge_results(None, MACHINE, run("full", "abc"), [*measured, sweep])

    passes, series = render.plot_series({**contents, "name": "cpu", "cases": list(contents["cases"].values())})

    def line(op):
        points = [c["extra_info"] for c in measured if c["name"] == op and c["extra_info"]["passes"] == passes]
        return ([p["shape"]["N"] for p in points], [p["seconds"] for p in points],
                [p["peak_rss_rise_mib"] for p in points])

    assert passes == "forward_backward" and list(series) == ["contrastive", "word_region"]
    drawn = {op: [(line["label"], line["time"], line["memory"]) for line in panel["lines"]]
             for op, panel in series.items()}
    sizes, seconds, peaks = line("contrastive")
    assert drawn["contrastive"] == [("fused float32", (sizes, seconds), (sizes, peaks))]
    sizes, seconds, peaks = line("word_region")
    measured_steps = steps[:2]
    assert drawn["word_region"] == [
        ("fused float32", (sizes, seconds), (sizes, peaks)),
        ("fused (sweep, one step)", ([s["N"] for s in measured_steps], [s["seconds"] for s in measured_steps]),
         ([s["N"] for s in measured_steps], [s["peak_rss_rise_mib"] for s in measured_steps]))]
    assert (series["word_region"]["budget_mib"], series["contrastive"]["budget_mib"]) == (64, None)


def test_a_sweep_step_that_ran_out_of_memory_needs_only_its_n(tmp_path):
    """As the committed CPU results hold them ({"N": 16384, "fits": false, "out_of_memory": true}): the checks
    of a measured step's seconds and memory would refuse the project's own results."""
    out_of_memory = {**SWEEP_STEP_WITHOUT_SECONDS, "extra_info": {
        **SWEEP_STEP_WITHOUT_SECONDS["extra_info"], "steps": [{"N": 8, "fits": False, "out_of_memory": True}]}}
    (tmp_path / "cpu.json").write_text(results_text({"full::s": out_of_memory}))
    [results] = render.load_results(tmp_path)
    assert [case["extra_info"]["steps"] for case in results["cases"]] == [[{"N": 8, "fits": False,
                                                                            "out_of_memory": True}]]


@pytest.mark.parametrize("failure", ["a malformed file", "a plot that fails"])
def test_a_render_that_fails_leaves_the_page_and_every_plot_as_they_were(tmp_path, monkeypatch, failure):
    """The plot of a file sorted before the failing one was rewritten, the page not: they disagreed."""
    good = recording.merge_results(None, MACHINE, run("full", "abc"), [
        word_region_case("fused", "forward", "float32", size, 0.01 * size, float(size)) for size in (8, 16)])
    (tmp_path / "a.json").write_text(json.dumps(good))
    if failure == "a malformed file":
        (tmp_path / "b.json").write_text(results_text({"full::s": SWEEP_STEP_WITHOUT_SECONDS}))
        raised = f"^results file {re.escape(str(tmp_path / 'b.json'))}: "
    else:
        (tmp_path / "b.json").write_text(json.dumps({**good, "machine": {**MACHINE, "kind": "b"}}))
        real_plot = render.plot

        def plot_failing_for_b(results, *arguments):
            if results["name"] == "b":
                raise ValueError("plot of b failed")
            return real_plot(results, *arguments)

        monkeypatch.setattr(render, "plot", plot_failing_for_b)
        raised = "^plot of b failed$"
    (tmp_path / "a.png").write_bytes(b"earlier plot")
    (tmp_path / "RESULTS.md").write_text("earlier page\n")
    with pytest.raises(ValueError, match=raised):
        render.render(tmp_path, tmp_path / "RESULTS.md")
    assert (tmp_path / "a.png").read_bytes() == b"earlier plot"
    assert (tmp_path / "RESULTS.md").read_text() == "earlier page\n"


def test_a_results_file_that_stops_being_results_during_the_run_keeps_the_cases_in_a_file_it_names(tmp_path):
    """Conflict markers of a `git pull` during the run made the merge fail to read the file (a ValueError): the
    run ended in a traceback and its cases were lost."""
    results = tmp_path / "results.json"
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    pytest_run = _pytest_one_benchmark_with_tgfr_results(
        tmp_path, results, after=f"open({str(results)!r}, 'w').write('<<<<<<< HEAD')",
        environment={"TMPDIR": str(temporary)})
    output = pytest_run.stdout + pytest_run.stderr
    assert pytest_run.returncode == pytest.ExitCode.INTERNAL_ERROR, output
    (fallback,) = temporary.glob("tgfr-results-*/results.json")
    assert f"this run's 1 benchmark cases are in {fallback}" in output and "Traceback" not in output, output
    assert list(json.loads(fallback.read_text())["cases"]) == ["quick::test_cases.py::test_passes"]


def test_an_empty_tgfr_results_is_a_usage_error_and_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """--tgfr-results "" (an unset shell variable) recorded nothing, without a word; the shell leaves
    --tgfr-results=~/x.json as typed, and the file went into a folder named ~."""
    from benchmarks import conftest

    config = types.SimpleNamespace(stash={}, getoption=lambda name: "")
    with pytest.raises(pytest.UsageError, match="^--tgfr-results is empty: name the file to write$"):
        conftest.pytest_configure(config)
    monkeypatch.setenv("HOME", str(tmp_path))
    config = types.SimpleNamespace(stash={}, getoption=lambda name: "~/x.json")
    conftest.pytest_configure(config)
    assert config.stash[conftest._RESULTS_FILE][0] == tmp_path / "x.json"


@pytest.mark.parametrize("option", ["--results-dir", "--output"])
def test_render_refuses_an_empty_path(tmp_path, monkeypatch, capsys, option):
    """As a Path, "" is the current folder: --results-dir "" found no results there and replaced RESULTS.md with a
    page of none; --output "" failed with IsADirectoryError after writing the plots."""
    monkeypatch.chdir(tmp_path)
    # The other option names tmp_path too: without the check, the real RESULTS.md would be the page replaced.
    other = {"--results-dir": ["--output", str(tmp_path / "RESULTS.md")], "--output": ["--results-dir", str(tmp_path)]}
    with pytest.raises(SystemExit) as exit_info:
        render.main([option, "", *other[option]])
    assert exit_info.value.code == 2 and f"argument {option}: must be a non-empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
