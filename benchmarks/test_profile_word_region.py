"""benchmarks/profile_word_region_triton.py without a GPU: its command lines and the reading of
ncu's details CSV (the profile itself runs on a GPU machine, in benchmarks/run_gpu.sh)."""

import json
import os
import sys
from pathlib import Path

import pytest

from benchmarks import profile_word_region_triton as profile
from benchmarks.tune_word_region_triton import candidate_configs

# The header ncu's `--csv --page details` writes, and a few rows in its value formats.
_DETAILS = '''"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","101","python3","gpu","_backward_kernel","1","7","(128, 1, 1)","(1024, 128, 1)","0","9.0","GPU Speed Of Light Throughput","Duration","msecond","235.12"
"0","101","python3","gpu","_backward_kernel","1","7","(128, 1, 1)","(1024, 128, 1)","0","9.0","Memory Workload Analysis","L2 Hit Rate","%","97.5"
"0","101","python3","gpu","_backward_kernel","1","7","(128, 1, 1)","(1024, 128, 1)","0","9.0","Launch Statistics","Threads","thread","16,777,216"
"0","101","python3","gpu","_backward_kernel","1","7","(128, 1, 1)","(1024, 128, 1)","0","9.0","Occupancy","Block Limit Barriers","block","n/a"
'''


def test_details_rows_keep_each_metric_with_its_value_as_a_number():
    rows = profile.details_rows(_DETAILS)
    assert [(row["section"], row["metric"], row["unit"]) for row in rows] == [
        ("GPU Speed Of Light Throughput", "Duration", "msecond"),
        ("Memory Workload Analysis", "L2 Hit Rate", "%"),
        ("Launch Statistics", "Threads", "thread"),
        ("Occupancy", "Block Limit Barriers", "block"),
    ]
    assert [row["number"] for row in rows] == [235.12, 97.5, 128 * 1024 * 128, None]
    assert {row["kernel_name"] for row in rows} == {"_backward_kernel"} and rows[0]["grid_size"] == "(1024, 128, 1)"


def test_details_rows_name_missing_columns():
    with pytest.raises(ValueError, match="Metric Value"):
        profile.details_rows('"ID","Kernel Name","Section Name","Metric Name","Metric Unit"\n')


def test_kernels_argument_is_checked_against_the_shipped_configs():
    shipped = len(candidate_configs("backward", "shipped"))
    assert profile.parse_kernels(f"forward:0,backward:{shipped - 1}") == [("forward", 0), ("backward", shipped - 1)]
    with pytest.raises(ValueError, match="KIND:INDEX"):
        profile.parse_kernels("backwards:0")
    with pytest.raises(ValueError, match=f"{shipped} shipped configs"):
        profile.parse_kernels(f"backward:{shipped}")


def test_ncu_profiles_only_the_launch_after_compilation():
    command = profile.ncu_command(Path("build/ncu/x"), "backward", 1, 1024, "bfloat16")
    assert command[:5] == ["ncu", "--set", "full", "--profile-from-start", "off"]
    # ncu's default locks the GPU's clocks, which the lent machines' rules forbid.
    assert command[command.index("--clock-control") + 1] == "none"
    assert command[command.index("--launch") + 1] == "backward:1"
    assert command[command.index("--export") + 1] == "build/ncu/x"


@pytest.mark.parametrize("kind", ["forward", "backward", "deterministic_backward"])
def test_ncu_profiles_the_kinds_triton_kernels_and_not_the_gradient_buffers_zero_fill(kind):
    """The backward allocates its zero-filled gradients inside the profiled range; ncu names kernels
    as in its details page (benchmarks/results/word_region_ncu_*.jsonl)."""
    import re

    from benchmarks.triton_resources import KERNELS

    command = profile.ncu_command(Path("build/ncu/x"), kind, 0, 1024, "bfloat16")
    filter_ = command[command.index("--kernel-name") + 1]
    assert filter_.startswith("regex:") and command.index("--kernel-name") < command.index(sys.executable)
    pattern = re.compile(filter_.removeprefix("regex:"))
    every_triton_kernel = ["_forward_kernel", "_backward_kernel", "_word_gradient_kernel", "_region_gradient_kernel"]
    assert [name for name in every_triton_kernel if pattern.search(name)] == list(KERNELS[kind])
    assert not pattern.search("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>")


def _profile_with_fake_ncu(tmp_path: Path, monkeypatch, ncu_script: str) -> Path:
    """Sets up profile.main() (default --kernels) to run `ncu_script` (sh) as ncu; returns its --out file."""
    fake = tmp_path / "bin" / "ncu"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\n{ncu_script}")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(profile, "measurement_environment", lambda size, dtype: {"device": "test"})
    out = tmp_path / "ncu.jsonl"
    monkeypatch.setattr(sys, "argv", ["profile", "--out", str(out), "--reports", str(tmp_path / "reports")])
    return out


_NO_PERMISSION = "echo '==ERROR== ERR_NVGPUCTRPERM: no permission to the performance counters'; exit 1"


def test_a_profile_without_any_profiled_kernel_fails_and_keeps_ncus_message(tmp_path, monkeypatch):
    """Every ncu run failing used to end with status 0 and rows naming only the command line."""
    out = _profile_with_fake_ncu(tmp_path, monkeypatch, f"{_NO_PERMISSION}\n")
    with pytest.raises(SystemExit, match="none of forward:0,backward:0 could be profiled"):
        profile.main()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["kernel"] for row in rows] == ["forward", "backward"]
    assert all("ERR_NVGPUCTRPERM" in row["error"] for row in rows)


def test_a_profile_with_one_kernel_not_profiled_fails_after_writing_the_others(tmp_path, monkeypatch, capsys):
    """ncu failing for the backward only used to end with status 0 and a console line of one metric and
    no duration: run_gpu.sh's profile stage passed without the backward's profile."""
    (tmp_path / "details.csv").write_text(_DETAILS)
    out = _profile_with_fake_ncu(tmp_path, monkeypatch, f"""case "$*" in
  *"--launch backward:"*) {_NO_PERMISSION} ;;
  *--import*) cat '{tmp_path / "details.csv"}' ;;
  *) echo '==PROF== profiled' ;;
esac
""")
    with pytest.raises(SystemExit, match="^profile_word_region_triton: backward:0 of forward:0,backward:0 could not "
                                         "be profiled"):
        profile.main()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    metrics_in_details = len(_DETAILS.splitlines()) - 1  # its lines but the header
    assert [row["kernel"] for row in rows] == ["forward"] * metrics_in_details + ["backward"]
    assert "error" not in rows[0] and "ERR_NVGPUCTRPERM" in rows[-1]["error"]
    console = capsys.readouterr().err
    assert "backward:0" in console and "ERR_NVGPUCTRPERM" in console, console
