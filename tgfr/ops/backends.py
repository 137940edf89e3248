"""Which implementations of the fused ops can run here, and which one `backend="auto"` picks.

Rule of backend="auto" for CUDA tensors: "cuda" when the CUDA kernels are compiled in, else
"triton" when Triton is installed, else "reference". The CUDA kernels are the ones verified on a
GPU (H100, torch 2.11 + CUDA 13: every test of tests/test_word_region_gpu.py against the float64
reference in fp32, bf16 and fp16; benchmarks/results/word_region_gpu_*.jsonl). The Triton kernels
pass under TRITON_INTERPRET on CPU, but their GPU run with the current autotuning is still to be
measured; this rule is to be revisited with that measurement (benchmarks/run_gpu.sh).
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
    if _CUDA_KERNELS_BUILT:
        return "cuda"
    if _TRITON_INSTALLED:
        return "triton"
    return "reference"
