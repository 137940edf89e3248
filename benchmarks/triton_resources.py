"""What each config of the Triton word-region kernels compiles to for a GPU, without one.

Compiles every config ahead of time for --arch (default sm_90a, the H100) at the benchmark shape
(N=M=1024, T=22, R=196, D=256, bf16, word softmax on), specialized on the argument values as a
launch with those inputs is (sizes and strides divisible by 16 known as such: that decides whether
loads and atomics are vectorized), and reads ptxas's report and the PTX: registers per thread,
spill stores and loads (bytes per thread), shared memory, the count of Hopper warpgroup MMAs
(wgmma.mma_async) against Ampere-style ones (mma.sync), and the fp32 atomic adds by vector
width. These are compiler facts,
not speed: they say why a config may be slow (spills, no wgmma), and which untimed variants are
worth GPU time; only benchmarks/tune_word_region_triton.py on a GPU says which is fast.

Usage, on any machine with Triton's CUDA backend (no GPU needed):
    python -m benchmarks.triton_resources --out benchmarks/results/word_region_triton_resources_sm90a.jsonl
One JSON line per (kernel, config), with Triton's version, commit and date; "shipped" marks the
configs the autotuner chooses among. --configs grid covers the tuning script's whole search space
and the shipped configs outside it.
"""

import argparse
import contextlib
import datetime
import functools
import io
import json
import re
from pathlib import Path
from unittest import mock

import torch

from benchmarks import recording
from benchmarks.tune_word_region_triton import GAMMA1, GAMMA2, KINDS, candidate_configs
from benchmarks.word_region_steps import DIM, NUM_REGIONS, NUM_WORDS
from tgfr.output_paths import write_atomically

SIZE = 1024  # N = M of the benchmark shape, whose sizes and strides the launches specialize on


def _arguments(kind: str) -> dict[str, dict]:
    """The arguments each kernel of `kind` is launched with at the benchmark shape (N=M=1024, bf16):
    the public launcher runs on meta tensors with the launch itself replaced by a recorder, so the
    values (sizes, strides, gammas, constexprs) are the ones a GPU run passes."""
    from tgfr.ops import word_region_triton as kernels

    recorded = {}

    def record(kernel, config, pairs, grid, *arguments, **constexprs):
        recorded[kernel.fn.__name__] = {**dict(zip(kernel.fn.arg_names, arguments)), **constexprs}

    words = torch.empty(SIZE, NUM_WORDS, DIM, dtype=torch.bfloat16, device="meta")
    regions = torch.empty(SIZE, NUM_REGIONS, DIM, dtype=torch.bfloat16, device="meta")
    lengths = torch.empty(SIZE, dtype=torch.int64, device="meta")
    with mock.patch.object(kernels, "_launch", record):
        if kind == "forward":
            kernels.launch_forward(words, lengths, regions, GAMMA1, GAMMA2, True)
        else:
            grad_scores = torch.empty(SIZE, SIZE, dtype=torch.float32, device="meta")
            kernels.launch_backward(
                grad_scores, words, lengths, regions, GAMMA1, GAMMA2, True, deterministic=kind != "backward"
            )
    return recorded


def _specialized(kernel_fn, arguments: dict) -> tuple[dict, dict, dict]:
    """Signature, constexprs and attributes as Triton's launcher derives them from the values:
    pointers 16-byte aligned and integers divisible by 16 get tt.divisibility (what lets the
    compiler vectorize loads and atomics), integers equal to 1 become constants."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    signature, constexprs, attrs = {}, {}, {}
    for index, parameter in enumerate(kernel_fn.params):
        name, value = parameter.name, arguments.get(parameter.name)
        if parameter.is_constexpr:  # the config's tile constexprs are not in `arguments`
            if name in arguments:
                signature[name], constexprs[name] = "constexpr", value
            continue
        kind, key = native_specialize_impl(CUDABackend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = key
        elif key == "D":
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


# The kernels behind each kind of benchmarks/tune_word_region_triton.py.
KERNELS = {
    "forward": ("_forward_kernel",),
    "backward": ("_backward_kernel",),
    "deterministic_backward": ("_word_gradient_kernel", "_region_gradient_kernel"),
}


@functools.cache
def _launch_specialization(kernel: str) -> tuple[dict, dict, dict]:
    from tgfr.ops import word_region_triton as kernels

    kind = next(kind for kind, names in KERNELS.items() if kernel in names)
    return _specialized(getattr(kernels, kernel).fn, _arguments(kind)[kernel])


def compile_report(kernel: str, config: dict, capability: int) -> dict:
    """Compiles one config of the word-region kernel named `kernel`, specialized as a launch at the
    benchmark shape is, and returns its resource figures (or the compile error)."""
    from tgfr.ops import word_region_triton as kernels

    signature, constexprs, attrs = _launch_specialization(kernel)
    tile = {key: value for key, value in config.items() if key not in ("num_warps", "num_stages")}
    return compile_kernel(getattr(kernels, kernel).fn, {**signature, **dict.fromkeys(tile, "constexpr")},
                          {**constexprs, **tile}, attrs, config["num_warps"], config["num_stages"], capability)


def compile_kernel(kernel_fn, signature: dict, constexprs: dict, attrs: dict, num_warps: int, num_stages: int,
                   capability: int) -> dict:
    """Compiles a @triton.jit function for the CUDA `capability` (no GPU needed) with the
    specialization of _specialized and returns its resource figures, or {"error": ...}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(
        fn=kernel_fn, signature=signature, attrs=attrs,
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
                options={"num_warps": num_warps, "num_stages": num_stages},
            )
    except Exception as error:  # a config that does not compile is reported, not fatal
        return {"error": f"{type(error).__name__}: {str(error)[-300:]}"}
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved
    ptxas = log.getvalue()
    registers = re.search(r"Used (\d+) registers", ptxas)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas)
    if registers is None or spills is None:
        raise RuntimeError(f"no ptxas resource report for {kernel_fn.__name__}:\n{ptxas[-2000:]}")
    ptx = compiled.asm["ptx"]
    atomic_widths = re.findall(r"\bred\.global\S*\.add(\.v[24])?\.f32", ptx)  # one instruction adds 1, 2 or 4 floats
    return {
        "registers": int(registers.group(1)),
        "spill_store_bytes": int(spills.group(1)), "spill_load_bytes": int(spills.group(2)),
        "shared_bytes": compiled.metadata.shared,
        "wgmma": ptx.count("wgmma.mma_async"), "mma_sync": ptx.count("mma.sync"),
        "atomic_add_f32": atomic_widths.count(""), "atomic_add_v2_f32": atomic_widths.count(".v2"),
        "atomic_add_v4_f32": atomic_widths.count(".v4"),
    }


def contrastive_launches(dtype: torch.dtype, dims: int, normalize: bool, same_identity: str) -> list[tuple]:
    """(kernel function, arguments) of every Triton launch of a contrastive forward and backward
    (both directions, with labels) on (1024, dims) inputs of `dtype`: the launchers run on meta
    tensors with wrap_triton replaced by a recorder, so the arguments are the ones a GPU run passes."""
    from tgfr.ops import contrastive_triton

    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*arguments, **constexprs):
                launches.append((self.kernel, {**dict(zip(self.kernel.arg_names, arguments)), **constexprs}))
            return launch

    x = torch.empty(SIZE, dims, dtype=dtype, device="meta")
    labels = torch.empty(SIZE, dtype=torch.int64, device="meta")
    inverse_norms = contrastive_triton._inverse_norms(x, normalize)
    common = (x, x, labels, labels, inverse_norms, inverse_norms)
    # The launchers, not the registered ops: those would take their fake kernels on meta tensors.
    with mock.patch.object(contrastive_triton, "wrap_triton", Recorder):
        loss, lse = contrastive_triton._launch_forward(*common, 10.0, 0.2, same_identity, 0)
        contrastive_triton._launch_backward(*common, loss, lse, loss, lse, 10.0, 0.2, same_identity, 0, True, True)
    return launches


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
        "dtype": "bfloat16", "N": SIZE, "M": SIZE, "T": NUM_WORDS, "R": NUM_REGIONS, "D": DIM,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in KINDS:
        shipped = candidate_configs(kind, "shipped")
        configs = candidate_configs(kind, args.configs)
        configs += [config for config in shipped if config not in configs]  # shipped variants outside the grid
        for config in configs:
            for kernel in KERNELS[kind]:
                row = {**environment, "kind": kind, "kernel": kernel, **config, "shipped": config in shipped,
                       **compile_report(kernel, config, args.arch)}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in environment}), flush=True)
    # Written once every config compiled: opened at the start, the tracked file was left cut short by a config
    # that failed to compile, or a Ctrl-C.
    with write_atomically(args.out, "--out") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
