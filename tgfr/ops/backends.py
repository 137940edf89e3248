"""Which implementations of the fused ops can run here, and which one `backend="auto"` picks.

Rule of backend="auto" for CUDA tensors: "triton" when Triton is installed, else "cuda" when the
CUDA kernels are compiled in, else "reference". Measured on an H100 (torch 2.11 + CUDA 13,
Triton 3.6), `tgfr` shape, bf16, N=M=1024 (benchmarks/results/word_region_gpu_*.jsonl):
forward 37.5 ms with Triton vs 594 ms with the CUDA kernel, forward+backward 274 ms vs 2.84 s;
Triton also ran N=M=16384 (9.2 s forward, 69.7 s forward+backward). No shape or dtype measured
so far favours the CUDA kernel, so the rule does not depend on them; the CUDA kernel stays the
choice without Triton, and the deterministic one: Triton's backward adds d(regions) with fp32
atomics, so its gradients can differ in the last bits from run to run.
"""

import importlib.util
import os

import torch

from tgfr.ops import _library  # noqa: F401  (registers torch.ops.tgfr.*, CUDA kernels included)

# Fixed for the life of the process (the extension is loaded above), and plain constants so that
# torch.compile can trace the backend choice.
_CUDA_KERNELS_BUILT = torch._C._dispatch_has_kernel_for_dispatch_key("tgfr::word_region_scores", "CUDA")
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_usable() -> bool:
    return _TRITON_INSTALLED and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


def available_backends() -> list[str]:
    """Subset of ["reference", "cpu", "triton", "cuda"] that can run in this process."""
    backends = ["reference", "cpu"]
    if _triton_usable():
        backends.append("triton")
    if _CUDA_KERNELS_BUILT and torch.cuda.is_available():
        backends.append("cuda")
    return backends


def auto_cuda_backend() -> str:
    """Backend for CUDA tensors under backend="auto" (rule in the module doc)."""
    if _TRITON_INSTALLED:
        return "triton"
    if _CUDA_KERNELS_BUILT:
        return "cuda"
    return "reference"
