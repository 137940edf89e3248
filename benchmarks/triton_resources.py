"""What each config of the Triton word-region kernels compiles to for a GPU, without one.

Compiles every config ahead of time for --arch (default sm_90a, the H100) at the `tgfr` shape
(T_PAD=32, D=256, bf16, word softmax on) and reads ptxas's report and the PTX: registers per
thread, spill stores and loads (bytes per thread), shared memory, and the count of Hopper
warpgroup MMAs (wgmma.mma_async) against Ampere-style ones (mma.sync). These are compiler facts,
not speed: they say why a config may be slow (spills, no wgmma), and which untimed variants are
worth GPU time; only benchmarks/tune_word_region_triton.py on a GPU says which is fast.

Usage, on any machine with Triton's CUDA backend (no GPU needed):
    python -m benchmarks.triton_resources --out benchmarks/results/word_region_triton_resources_sm90a.jsonl
One JSON line per (kernel, config), with Triton's version, commit and date; "shipped" marks the
configs the autotuner chooses among. --configs grid covers the tuning script's whole search space.
"""

import argparse
import contextlib
import datetime
import io
import json
import re
from pathlib import Path

import torch

from benchmarks import recording
from benchmarks.tune_word_region_triton import KINDS, candidate_configs
from benchmarks.word_region_steps import DIM, NUM_WORDS


def _signature(kernel_fn, constexprs: dict) -> dict:
    """Triton types of the kernel's arguments: bf16 inputs, int64 lengths, fp32 outputs."""
    types = {"words_ptr": "*bf16", "regions_ptr": "*bf16", "lengths_ptr": "*i64"}
    signature = {}
    for name in kernel_fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = types.get(name, "*fp32")
        elif name.startswith("gamma"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    return signature


# The kernels behind each kind of benchmarks/tune_word_region_triton.py.
KERNELS = {
    "forward": ("_forward_kernel",),
    "backward": ("_backward_kernel",),
    "deterministic_backward": ("_word_gradient_kernel", "_region_gradient_kernel"),
}


def compile_report(kernel: str, config: dict, capability: int) -> dict:
    """Compiles one config of the kernel named `kernel` and returns its resource figures (or the
    compile error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tgfr.ops import word_region_triton as kernels

    kernel_fn = getattr(kernels, kernel).fn
    words = torch.empty(1, NUM_WORDS, DIM, dtype=torch.bfloat16)
    constexprs = {
        **kernels._constexprs(words, True),
        **{key: value for key, value in config.items() if key not in ("num_warps", "num_stages")},
    }
    source = ASTSource(
        fn=kernel_fn, signature=_signature(kernel_fn, constexprs),
        constexprs={(kernel_fn.arg_names.index(name),): value for name, value in constexprs.items()},
    )
    log = io.StringIO()
    knobs = triton.knobs
    saved = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    # The report is the log of the ptxas run of a real compilation: no cache hit may skip it.
    knobs.compilation.always_compile = knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                source, target=GPUTarget("cuda", capability, 32),
                options={"num_warps": config["num_warps"], "num_stages": config["num_stages"]},
            )
    except Exception as error:  # a config that does not compile is reported, not fatal
        return {"error": f"{type(error).__name__}: {str(error)[-300:]}"}
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved
    ptxas = log.getvalue()
    registers = re.search(r"Used (\d+) registers", ptxas)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas)
    if registers is None or spills is None:
        raise RuntimeError(f"no ptxas resource report for {kernel} {config}:\n{ptxas[-2000:]}")
    ptx = compiled.asm["ptx"]
    return {
        "registers": int(registers.group(1)),
        "spill_store_bytes": int(spills.group(1)), "spill_load_bytes": int(spills.group(2)),
        "shared_bytes": compiled.metadata.shared,
        "wgmma": ptx.count("wgmma.mma_async"), "mma_sync": ptx.count("mma.sync"),
    }


def main() -> None:
    import triton

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: sm_90a, H100/H200)")
    parser.add_argument("--configs", default="shipped", choices=["shipped", "grid"])
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file to write")
    args = parser.parse_args()
    environment = {
        "arch": f"sm_{args.arch}a" if args.arch >= 90 else f"sm_{args.arch}", "triton": triton.__version__,
        "commit": recording.commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "bfloat16", "T": NUM_WORDS, "D": DIM,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as out:
        for kind in KINDS:
            shipped = candidate_configs(kind, "shipped")
            for config in candidate_configs(kind, args.configs):
                for kernel in KERNELS[kind]:
                    row = {**environment, "kind": kind, "kernel": kernel, **config, "shipped": config in shipped,
                           **compile_report(kernel, config, args.arch)}
                    out.write(json.dumps(row) + "\n")
                    print(json.dumps({k: v for k, v in row.items() if k not in environment}), flush=True)


if __name__ == "__main__":
    main()
