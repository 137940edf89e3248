"""Which implementations of the fused ops can run here, and which one `backend="auto"` picks.

Rule of backend="auto" for CUDA tensors (provisional: written without a GPU, it awaits the
measurements of benchmarks/test_word_region_gpu.py, see benchmarks/run_gpu.sh):
  - "triton" when Triton is installed and D <= 256: its tiles hold a full D-wide row block in
    registers, which is where an autotuned tl.dot kernel is expected to be fastest;
  - "cuda" when the CUDA kernels are compiled in and Triton is missing or D > 256 (the CUDA kernel
    streams D through shared memory, so its register use does not grow with D);
  - otherwise the other one of the two that exists, and "reference" when neither does.
The dtype does not enter the rule yet: both kernels take fp32, bf16 and fp16.
"""

import importlib.util
import os

import torch

from tgfr.ops import _library  # noqa: F401  (registers torch.ops.tgfr.*, CUDA kernels included)

# Fixed for the life of the process (the extension is loaded above), and plain constants so that
# torch.compile can trace the backend choice.
_CUDA_KERNELS_BUILT = torch._C._dispatch_has_kernel_for_dispatch_key("tgfr::word_region_scores", "CUDA")
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_TRITON_MAX_DIM = 256


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


def auto_cuda_backend(dim: int | None = None) -> str:
    """Backend for CUDA tensors of feature size `dim` under backend="auto" (rule in the module doc)."""
    triton_fits = dim is None or dim <= _TRITON_MAX_DIM
    if _TRITON_INSTALLED and (triton_fits or not _CUDA_KERNELS_BUILT):
        return "triton"
    if _CUDA_KERNELS_BUILT:
        return "cuda"
    return "reference"
