"""Which implementations of the fused ops can run here, and which one `backend="auto"` picks."""

import importlib.util
import os

import torch

from tgfr.ops import _library  # noqa: F401


def _cuda_kernels_built() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("tgfr::word_region_scores", "CUDA")


def _triton_usable() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def available_backends() -> list[str]:
    """Subset of ["reference", "cpu", "triton", "cuda"] that can run in this process."""
    backends = ["reference", "cpu"]
    if _triton_usable():
        backends.append("triton")
    if _cuda_kernels_built() and torch.cuda.is_available():
        backends.append("cuda")
    return backends


def auto_cuda_backend() -> str:
    """Backend for CUDA tensors under backend="auto"."""
    if _cuda_kernels_built():
        return "cuda"
    if _triton_usable():
        return "triton"
    return "reference"
