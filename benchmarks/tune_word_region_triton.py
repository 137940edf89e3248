"""Times every candidate tile config of the Triton word-region kernels, one by one, at the `tgfr`
shape (T=22, R=196, D=256; a third of the captions 9 words long): the measurement behind the
config lists of tgfr/ops/word_region_triton.py.

Usage, from the repository root on a CUDA machine:
    python benchmarks/tune_word_region_triton.py --size 1024 --dtype bfloat16 \
        --out benchmarks/results/word_region_triton_configs_<device>.jsonl
All configs are compiled first in parallel worker processes (Triton's disk cache), then each is
checked against the float64 reference on a small problem and timed (best of 3 runs; 1 run when a
run takes over 0.6 s) at N=M=--size. One JSON line per config: ms and useful TFLOP/s (forward
4*N*M*T*R*D, backward 8*N*M*T*R*D), the relative max error, device, commit and date.
"""

import argparse
import datetime
import itertools
import json
import multiprocessing
import subprocess
import time
from pathlib import Path

import torch

NUM_WORDS, NUM_REGIONS, DIM = 22, 196, 256
GAMMA1, GAMMA2 = 4.0, 5.0
FORWARD_CONFIGS = [
    dict(CAPTIONS=captions, BLOCK_R=block_r, IMAGES=8, num_warps=warps, num_stages=stages)
    for captions, block_r, warps, stages in itertools.product((1, 2, 4), (32, 64), (4, 8), (1, 2))
]
BACKWARD_CONFIGS = [
    dict(CAPTIONS=captions, BLOCK_R=block_r, IMAGES=8, num_warps=warps, num_stages=1)
    for captions, block_r, warps in itertools.product((1, 2, 4), (16, 32, 64), (4, 8))
] + [dict(CAPTIONS=2, BLOCK_R=32, IMAGES=images, num_warps=8, num_stages=1) for images in (2, 4, 16, 32)] + [
    dict(CAPTIONS=captions, BLOCK_R=32, IMAGES=8, num_warps=16, num_stages=1) for captions in (2, 4)
]


def _inputs(size: int, dtype: torch.dtype):
    generator = torch.Generator(device="cuda").manual_seed(0)
    words = torch.randn(size, NUM_WORDS, DIM, device="cuda", generator=generator).to(dtype)
    regions = torch.randn(size, NUM_REGIONS, DIM, device="cuda", generator=generator).to(dtype)
    lengths = torch.full((size,), NUM_WORDS, device="cuda")
    lengths[::3] = 9
    return words, lengths, regions


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _launch(kind: str, config: dict, words, lengths, regions, grad_scores):
    """One launch of the forward or backward kernel with this config, bypassing the autotuner."""
    from tgfr.ops import word_region_triton as kernels

    num_captions, num_images = words.shape[0], regions.shape[0]
    constexprs = kernels._constexprs(words, True)
    grid = (_ceil_div(num_captions, config["CAPTIONS"]), _ceil_div(num_images, config["IMAGES"]))
    common = (num_captions, num_images, NUM_REGIONS, DIM)
    if kind == "forward":
        scores = torch.empty(num_captions, num_images, device="cuda")
        kernels._forward_kernel.fn[grid](
            words, lengths, regions, scores, *common, words.stride(0), words.stride(1), regions.stride(0),
            regions.stride(1), scores.stride(0), GAMMA1, GAMMA2, **constexprs, **config,
        )
        return (scores,)
    grad_words = torch.zeros(words.shape, device="cuda")
    grad_regions = torch.zeros(regions.shape, device="cuda")
    kernels._backward_kernel.fn[grid](
        grad_scores, words, lengths, regions, grad_words, grad_regions, *common, grad_scores.stride(0),
        words.stride(0), words.stride(1), regions.stride(0), regions.stride(1), GAMMA1, GAMMA2,
        **constexprs, **config,
    )
    return grad_words, grad_regions


def _compile(job) -> str | None:
    kind, config, dtype = job
    try:
        words, lengths, regions = _inputs(32, dtype)
        _launch(kind, config, words, lengths, regions, torch.ones(32, 32, device="cuda"))
        torch.cuda.synchronize()
        return None
    except Exception as error:  # a config that does not compile is reported, not fatal
        return f"{type(error).__name__}: {str(error)[-300:]}"


def _relative_error(got, want) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def main() -> None:
    from tgfr import reference

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="N = M of the timed problem")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--seconds", type=float, default=300.0, help="stop timing after this long")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file to append to")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    root = Path(__file__).resolve().parents[1]
    environment = {
        "device": torch.cuda.get_device_name(),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "dtype": args.dtype, "N": args.size, "M": args.size,
        "T": NUM_WORDS, "R": NUM_REGIONS, "D": DIM,
    }
    jobs = [("forward", config, dtype) for config in FORWARD_CONFIGS]
    jobs += [("backward", config, dtype) for config in BACKWARD_CONFIGS]
    with multiprocessing.get_context("spawn").Pool(max(1, min(14, multiprocessing.cpu_count() - 1))) as pool:
        compile_errors = pool.map(_compile, jobs)

    small_words, small_lengths, small_regions = _inputs(40, dtype)
    small_grad = torch.randn(40, 40, device="cuda")
    words64, regions64 = small_words.double().requires_grad_(), small_regions.double().requires_grad_()
    expected = reference.word_region_scores(words64, small_lengths, regions64, gamma1=GAMMA1, gamma2=GAMMA2)
    expected.backward(small_grad.double())
    words, lengths, regions = _inputs(args.size, dtype)
    grad_scores = torch.randn(args.size, args.size, device="cuda")
    useful = {"forward": 4, "backward": 8}
    deadline = time.time() + args.seconds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        for (kind, config, _), compile_error in zip(jobs, compile_errors):
            if time.time() > deadline:
                print("time limit reached", flush=True)
                break
            row = {**environment, "kernel": kind, **config}
            if compile_error:
                row["error"] = compile_error
            else:
                small = _launch(kind, config, small_words, small_lengths, small_regions, small_grad)
                wants = (expected,) if kind == "forward" else (words64.grad, regions64.grad)
                row["relative_error"] = max(_relative_error(got, want) for got, want in zip(small, wants))
                times = []
                for _ in range(3):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    _launch(kind, config, words, lengths, regions, grad_scores)
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end))
                    if times[0] > 600:
                        break
                flops = useful[kind] * args.size**2 * NUM_WORDS * NUM_REGIONS * DIM
                row.update(ms=min(times), useful_tflops=flops / min(times) / 1e9)
            out.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k not in environment}), flush=True)


if __name__ == "__main__":
    main()
