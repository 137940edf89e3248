"""Times candidate configs of the Triton word-region kernels one by one at the `tgfr` shape
(T=22, R=196, D=256; a third of the captions 9 words long): the measurement behind the config
lists of tgfr/ops/word_region_triton.py.

Usage, from the repository root on a CUDA machine:
    python -m benchmarks.tune_word_region_triton --out benchmarks/results/word_region_triton_configs_<gpu>.jsonl
--configs shipped (default) times the configs the autotuner chooses among; --configs grid every combination
of captions per program (1, 2, 4), BLOCK_R (32, 64), warps (4, 8), stages (forward 1 and 2, backwards 1),
TAIL_CHUNKS and REGIONS_MAJOR. Kinds: forward, backward (one kernel, atomics) and deterministic_backward
(its two kernels with the same config, timed together). All configs are compiled first in parallel worker
processes (Triton's disk cache) at N=M=CHECK_SIZE, then each is checked against the float64 reference at
that size and timed (best of 3 runs; 1 run when a run takes over 0.6 s) at N=M=--size. One JSON line per
config: ms and useful TFLOP/s (forward 4*W*M*R*D, backward 8*W*M*R*D, W = sum(lengths) the valid words: a
third of the captions have 9 of T=22, the padding is no useful work; lines written before 2026-11-29 count
N*T, a quarter more), the relative max error (max |error| / max |float64 value|), device, commit
($TGFR_COMMIT if set) and date; a config that fails to compile gets its error, one off the float64 values by
more than its dtype's tolerance (TOLERANCES), or a backward that writes into a padded word's gradient (held at 0),
is marked "wrong" and not timed. Every config is checked,
--seconds stops only the timing: a right config left untimed reads "timed": false. With --configs shipped
(the configs the op runs), a compile error or wrong values make the exit status 1 once every line is
written; --configs grid only reports them.
"""

import argparse
import datetime
import itertools
import json
import multiprocessing
import sys
import time
from pathlib import Path

import torch

from benchmarks import recording
from benchmarks.word_region_steps import DIM, NUM_REGIONS, NUM_WORDS

GAMMA1, GAMMA2 = 4.0, 5.0
KINDS = ("forward", "backward", "deterministic_backward")
# N = M of the compile and the correctness check: a multiple of 16, as the timed sizes are, so that
# Triton specializes its launch alike (sizes and strides divisible by 16) and the check runs the
# timed binary, compiled once in the worker pool rather than again, serially, inside --seconds.
CHECK_SIZE = 48
# (scores, gradients) tolerances of the check against the float64 reference: those the kernels are tested
# to in tests/test_word_region_gpu.py (TOLERANCES), by its rule (assert_close's rtol=tol, atol=tol * max|want|),
# so that a config the kernel tests pass is not marked wrong here.
TOLERANCES = {"bfloat16": (3e-2, 6e-2), "float16": (1e-2, 2e-2), "float32": (1e-4, 1e-4)}


def _as_dict(config) -> dict:
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def candidate_configs(kind: str, which: str) -> list[dict]:
    """Configs of the `kind` kernel(s) as plain dicts (kernel constexprs plus num_warps,
    num_stages): `shipped`, the autotuner's list, or `grid`, the full search space."""
    from tgfr.ops import word_region_triton as kernels

    if which == "shipped":
        shipped = {"forward": kernels._FORWARD_CONFIGS, "backward": kernels._BACKWARD_CONFIGS,
                   "deterministic_backward": kernels._DETERMINISTIC_CONFIGS}[kind]
        return [_as_dict(config) for config in shipped]
    stages = (1, 2) if kind == "forward" else (1,)
    # The deterministic kernels own whole rows or columns: no image groups.
    images = {} if kind == "deterministic_backward" else {"IMAGES": 8, "STAGGER_IMAGES": False}
    return [
        dict(CAPTIONS=captions, BLOCK_R=block_r, **images, TAIL_CHUNKS=tail, REGIONS_MAJOR=regions_major,
             num_warps=warps, num_stages=stage)
        for captions, block_r, warps, stage, tail, regions_major
        in itertools.product((1, 2, 4), (32, 64), (4, 8), stages, (False, True), (False, True))
    ]


def as_triton_config(config: dict):
    import triton

    kwargs = {key: value for key, value in config.items() if key not in ("num_warps", "num_stages")}
    return triton.Config(kwargs, num_warps=config["num_warps"], num_stages=config["num_stages"])


def tuning_inputs(size: int, dtype: torch.dtype):
    generator = torch.Generator(device="cuda").manual_seed(0)
    words = torch.randn(size, NUM_WORDS, DIM, device="cuda", generator=generator).to(dtype)
    regions = torch.randn(size, NUM_REGIONS, DIM, device="cuda", generator=generator).to(dtype)
    lengths = torch.full((size,), NUM_WORDS, device="cuda")
    lengths[::3] = 9
    return words, lengths, regions


def launch_config(kind: str, config: dict, words, lengths, regions, grad_scores):
    """One launch of the forward or a backward with this config, bypassing the autotuner."""
    from tgfr.ops import word_region_triton as kernels

    arguments = (words, lengths, regions, GAMMA1, GAMMA2, True)
    if kind == "forward":
        return (kernels.launch_forward(*arguments, config=as_triton_config(config)),)
    deterministic = kind == "deterministic_backward"
    return kernels.launch_backward(grad_scores, *arguments, deterministic, config=as_triton_config(config))


def measurement_environment(size: int, dtype: str) -> dict:
    """What a GPU measurement at N=M=size of the `tgfr` shape ran on: device, commit, date, versions, shape."""
    return {
        "device": torch.cuda.get_device_name(),
        "commit": recording.commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "triton": __import__("triton").__version__, "dtype": dtype,
        "N": size, "M": size, "T": NUM_WORDS, "R": NUM_REGIONS, "D": DIM,
    }


def _compile(job) -> str | None:
    kind, config, dtype = job
    try:
        words, lengths, regions = tuning_inputs(CHECK_SIZE, dtype)
        launch_config(kind, config, words, lengths, regions, torch.ones(CHECK_SIZE, CHECK_SIZE, device="cuda"))
        torch.cuda.synchronize()
        return None
    except Exception as error:  # a config that does not compile is reported, not fatal
        return f"{type(error).__name__}: {str(error)[-300:]}"


def _relative_error(got, want) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def _within_tolerance(got: torch.Tensor, want: torch.Tensor, tolerance: float) -> bool:
    """Whether each element of `got` is within tolerance * (|want| + max|want|) of the float64 `want` (same
    shape): tests/test_word_region_gpu.py's assert_close. A NaN is not within."""
    return bool(torch.isclose(got.double(), want, rtol=tolerance, atol=tolerance * want.abs().max().item()).all())


def _writes_padded_words(words_grad: torch.Tensor, lengths: torch.Tensor) -> bool:
    """Whether a backward wrote into the gradient of a padded word (t >= lengths[n]) of words_grad (N, T, D),
    which tests/test_word_region_gpu.py holds at exactly 0: within the tolerance, a wrong value there passed."""
    padded = torch.arange(words_grad.shape[1], device=words_grad.device) >= lengths[:, None].to(words_grad.device)
    return bool((words_grad[padded] != 0).any())


def main(argv: list[str] | None = None) -> None:
    """Writes a JSON line per config of the --kinds kernels (see the module docstring); exits 1 when a
    shipped config fails to compile or gives wrong values. `argv`: the arguments, sys.argv's by default."""
    from tgfr import reference

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="N = M of the timed problem")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--configs", default="shipped", choices=["shipped", "grid"])
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--seconds", type=float, default=300.0,
                        help="stop timing after this long (every config is still checked)")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file to append to")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    if not set(kinds) <= set(KINDS):
        parser.error(f"--kinds must be a subset of {','.join(KINDS)}, got {args.kinds!r}")
    dtype = getattr(torch, args.dtype)
    environment = measurement_environment(args.size, args.dtype)
    jobs = [(kind, config, dtype) for kind in kinds for config in candidate_configs(kind, args.configs)]
    with multiprocessing.get_context("spawn").Pool(max(1, min(14, multiprocessing.cpu_count() - 1))) as pool:
        compile_errors = pool.map(_compile, jobs)

    small_words, small_lengths, small_regions = tuning_inputs(CHECK_SIZE, dtype)
    small_grad = torch.randn(CHECK_SIZE, CHECK_SIZE, device="cuda")
    words64, regions64 = small_words.double().requires_grad_(), small_regions.double().requires_grad_()
    expected = reference.word_region_scores(words64, small_lengths, regions64, gamma1=GAMMA1, gamma2=GAMMA2)
    expected.backward(small_grad.double())
    words, lengths, regions = tuning_inputs(args.size, dtype)
    grad_scores = torch.randn(args.size, args.size, device="cuda")
    useful = {"forward": 4, "backward": 8, "deterministic_backward": 8}
    valid_words = int(lengths.sum())
    score_tolerance, grad_tolerance = TOLERANCES[args.dtype]
    failed, out_of_time = 0, False
    deadline = time.monotonic() + args.seconds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        for (kind, config, _), compile_error in zip(jobs, compile_errors):
            row = {**environment, "kernel": kind, **config}
            if compile_error:
                row["error"] = compile_error
            else:
                small = launch_config(kind, config, small_words, small_lengths, small_regions, small_grad)
                wants = (expected,) if kind == "forward" else (words64.grad, regions64.grad)
                tolerance = score_tolerance if kind == "forward" else grad_tolerance
                row["relative_error"] = max(_relative_error(got, want) for got, want in zip(small, wants))
                # A wrong result's time ranks nothing, so it is not timed.
                if (not all(_within_tolerance(got, want, tolerance) for got, want in zip(small, wants))
                        or (kind != "forward" and _writes_padded_words(small[0], small_lengths))):
                    row["wrong"] = True
                elif time.monotonic() > deadline:
                    # Only the timing stops: the check above is cheap, and a shipped config past --seconds
                    # that does not compile or is wrong must still fail the stage.
                    if not out_of_time:
                        print("time limit reached: the configs left are checked, not timed", flush=True)
                    out_of_time = True
                    row["timed"] = False
                else:
                    times = []
                    for _ in range(3):
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        launch_config(kind, config, words, lengths, regions, grad_scores)
                        end.record()
                        torch.cuda.synchronize()
                        times.append(start.elapsed_time(end))
                        if times[0] > 600:
                            break
                    flops = useful[kind] * valid_words * args.size * NUM_REGIONS * DIM
                    row.update(ms=min(times), useful_tflops=flops / min(times) / 1e9)
            failed += "error" in row or "wrong" in row
            out.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k not in environment}), flush=True)
    if failed and args.configs == "shipped":
        print(f"{failed} shipped config(s) failed to compile or gave wrong values: see {args.out}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
