"""Nsight Compute profile of the Triton word-region kernels at the `tgfr` shape: where a kernel's
time goes (tensor-core use, the L2 reductions behind the backward's fp32 atomics, warp stalls,
local-memory spill traffic), which timings alone cannot say.

Usage, from the repository root on a CUDA machine with ncu:
    python -m benchmarks.profile_word_region_triton --out benchmarks/results/word_region_ncu_<gpu>.jsonl
--kernels lists KIND:INDEX entries (default forward:0,backward:0: the measured-best config of the
forward and of the atomics backward); KIND is forward, backward or deterministic_backward and
INDEX a position in the kind's shipped config list (benchmarks/tune_word_region_triton.py).
Each entry runs in its own process under `ncu --set full --profile-from-start off --clock-control
none` (the GPU's clocks are left as they are: the lent machines' rules forbid changing them): the launch is
made once to compile it (Triton's cache; no autotuning, the config is forced), then once more
between torch.cuda.profiler.start() and stop(), and ncu's --kernel-name keeps the kind's Triton
kernels only (both kernels of deterministic_backward), not the zero-fill of the gradient buffers
the backward allocates in that range. One JSON line per profiled kernel and metric of ncu's details page
(section, metric, unit, value as printed and as a number), with device, commit, date, shape and
config; the .ncu-rep reports stay in --reports (on the profiled machine) for the Nsight Compute GUI. The
command exits with status 1 when any entry could not be profiled, after profiling the others; a failed
entry's line carries ncu's message, which the console shows as well.
"""

import argparse
import csv
import io
import json
import subprocess
import re
import sys
from pathlib import Path

import torch

from benchmarks.triton_resources import KERNELS
from benchmarks.tune_word_region_triton import (
    KINDS, candidate_configs, launch_config, measurement_environment, tuning_inputs,
)


def parse_kernels(text: str) -> list[tuple[str, int]]:
    """'forward:0,backward:1' -> [('forward', 0), ('backward', 1)], each checked against the shipped lists."""
    kernels = []
    for entry in text.split(","):
        kind, _, index = entry.partition(":")
        if kind not in KINDS or not index.isdigit():
            raise ValueError(f"--kernels entries must be KIND:INDEX with KIND in {', '.join(KINDS)}, got {entry!r}")
        shipped = len(candidate_configs(kind, "shipped"))
        if int(index) >= shipped:
            raise ValueError(f"--kernels {entry!r}: {kind} has {shipped} shipped configs (0 .. {shipped - 1})")
        kernels.append((kind, int(index)))
    return kernels


def _number(text: str) -> float | None:
    """ncu prints values with thousands separators ('1,234.5'); 'n/a' and the like give None."""
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


_DETAILS_COLUMNS = ("ID", "Kernel Name", "Section Name", "Metric Name", "Metric Unit", "Metric Value")


def details_rows(details_csv: str) -> list[dict]:
    """The rows of `ncu --import REPORT --csv --page details`: one dict per kernel and metric."""
    reader = csv.DictReader(io.StringIO(details_csv))
    missing = [column for column in _DETAILS_COLUMNS if column not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"ncu's details CSV lacks the columns {missing}; its header is {reader.fieldnames}")
    return [
        {
            "launch_id": int(row["ID"]),
            "kernel_name": row["Kernel Name"],
            "block_size": row.get("Block Size"),
            "grid_size": row.get("Grid Size"),
            "section": row["Section Name"],
            "metric": row["Metric Name"],
            "unit": row["Metric Unit"],
            "value": row["Metric Value"],
            "number": _number(row["Metric Value"]),
        }
        for row in reader
    ]


def ncu_command(report: Path, kind: str, index: int, size: int, dtype: str) -> list[str]:
    """The ncu run of one KIND:INDEX launch, profiled between the profiler's start and stop only,
    its Triton kernels only."""
    kernel_names = "|".join(re.escape(name) for name in KERNELS[kind])
    return [
        "ncu", "--set", "full", "--profile-from-start", "off", "--clock-control", "none",
        "--kernel-name", f"regex:^({kernel_names})$",
        "--force-overwrite", "--export", str(report),
        sys.executable, "-m", "benchmarks.profile_word_region_triton",
        "--launch", f"{kind}:{index}", "--size", str(size), "--dtype", dtype,
    ]


def _ncu(command: list[str]) -> str:
    """Runs an ncu command and returns its output; a failure raises RuntimeError with the end of that
    output, where ncu says what went wrong (==ERROR== lines)."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        output = (result.stdout + result.stderr).strip()
        raise RuntimeError(f"{' '.join(command[:2])}... exited with status {result.returncode}: {output[-500:]}")
    print(result.stderr, end="", file=sys.stderr)  # ncu's progress lines, for the stage's log
    return result.stdout


def _profiled_launch(kind: str, index: int, size: int, dtype: str) -> None:
    config = candidate_configs(kind, "shipped")[index]
    words, lengths, regions = tuning_inputs(size, getattr(torch, dtype))
    grad_scores = torch.randn(size, size, device="cuda")
    launch_config(kind, config, words, lengths, regions, grad_scores)  # compiles it, outside the profiled range
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    launch_config(kind, config, words, lengths, regions, grad_scores)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", default="forward:0,backward:0", help="comma-separated KIND:INDEX entries")
    parser.add_argument("--size", type=int, default=1024, help="N = M of the profiled problem")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--out", type=Path, help="JSON-lines file to append to")
    parser.add_argument("--reports", type=Path, default=Path("build/ncu"), help="folder for the .ncu-rep files")
    parser.add_argument("--launch", help=argparse.SUPPRESS)  # the process ncu profiles: one KIND:INDEX
    args = parser.parse_args()
    try:
        kernels = parse_kernels(args.launch or args.kernels)
    except ValueError as error:
        parser.error(str(error))
    if args.launch:
        _profiled_launch(*kernels[0], args.size, args.dtype)
        return
    if args.out is None:
        parser.error("--out is required")
    environment = measurement_environment(args.size, args.dtype)
    args.reports.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failed = []
    for kind, index in kernels:
        report = args.reports / f"word_region_{kind}_{index}_{args.dtype}_{args.size}"
        config = candidate_configs(kind, "shipped")[index]
        try:
            print(_ncu(ncu_command(report, kind, index, args.size, args.dtype)), end="")  # ==PROF== progress
            rows = details_rows(_ncu(["ncu", "--import", f"{report}.ncu-rep", "--csv", "--page", "details"]))
        except (OSError, RuntimeError, ValueError) as error:  # e.g. no ncu on PATH; the next kernel may still work
            rows = [{"error": f"{type(error).__name__}: {str(error)[-600:]}"}]
            failed.append(f"{kind}:{index}")
            print(f"profile_word_region_triton: {kind}:{index}: {rows[0]['error']}", file=sys.stderr, flush=True)
        with args.out.open("a") as out:
            for row in rows:
                out.write(json.dumps({**environment, "kernel": kind, "config_index": index, **config, **row}) + "\n")
        durations = [row for row in rows if row.get("metric") == "Duration"]
        print(json.dumps({"kernel": kind, "config_index": index, "metrics": len(rows),
                          "duration": [f"{row['value']} {row['unit']}" for row in durations]}), flush=True)
    if len(failed) == len(kernels):
        raise SystemExit(f"profile_word_region_triton: none of {args.kernels} could be profiled (see {args.out})")
    if failed:
        # The others' lines are written: a stage that passed would hide the missing kernel's profile.
        raise SystemExit(f"profile_word_region_triton: {','.join(failed)} of {args.kernels} could not be profiled "
                         f"(see {args.out})")


if __name__ == "__main__":
    main()
