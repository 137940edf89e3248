"""PyTorch's determinism switch for the fused ops whose backward adds with atomics.

The CUDA kernel's backward (and the Triton backward's default, faster path) add d(regions) and
d(words) with fp32 atomics, so the summation order, and with it the last bits of the gradients,
can change from run to run. Under torch.use_deterministic_algorithms(True) the Triton backward
switches to its two-kernel path without atomics (tgfr/ops/word_region_triton.py), backend="auto"
picks Triton on CUDA, and the CUDA kernel's backward raises like PyTorch's own nondeterministic
kernels (warns with warn_only=True). The forward passes and the CPU kernels are deterministic.
"""

import warnings

import torch


def alert_nondeterministic_backward(op: str) -> None:
    """Raises (or warns, with warn_only=True) when deterministic algorithms are requested."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        f"{op}'s backward adds gradients with floating-point atomics and is not deterministic, but "
        "torch.use_deterministic_algorithms(True) is set. For deterministic gradients use "
        "backend='triton' (CUDA tensors) or backend='cpu' (CPU tensors); "
        "torch.use_deterministic_algorithms(True, warn_only=True) makes this a warning."
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
    else:
        raise RuntimeError(message)
